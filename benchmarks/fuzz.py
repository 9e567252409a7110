"""Fuzz campaigns against both command lines: mutated model files into the exporter, mutated
export folders into the verifier (its numpy part), one forked process per case.

    python benchmarks/fuzz.py N [--seed S] [--jobs J] [--seeds DIR] [--families F ...] [--json]

Each case is a mutant of a real-world-style model (``models.small.mixed``, in all three file
flavours; see :mod:`models.mutants`), exported over OUT holding the clean model's export. A case is
bad when it exits 3 (a crash), hangs (over ``--timeout`` s) or dies of a signal, or when its exit
breaks the contract: exit 2 whose stderr is not exactly one ``error:`` line or holds a traceback,
OUT changed by a failed run, a staging folder left behind, or exit 0 having written a non-finite
value. The outcome counts are printed; ``--json`` prints them as one JSON object (the tests).
Case ``k`` of seed ``S`` is reproduced with ``--only k``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")      # forked children must not inherit BLAS threads
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import hashlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np                                        # noqa: E402

from models.mutants import FAMILIES, manifest_mutant, mutant   # noqa: E402

ALL_FAMILIES = FAMILIES + ("manifest",)
SEED_STEM = "mixed"


def build_seeds(folder: Path) -> dict[str, Path]:
    """The seed model in every flavour (needs TensorFlow; cached in ``folder``)."""
    from models.flavours import SUFFIXES
    paths = {f: folder / (SEED_STEM + s) for f, s in SUFFIXES.items()}
    if not all(p.exists() for p in paths.values()):
        from models.small import build, mixed, save
        folder.mkdir(parents=True, exist_ok=True)
        model = build(mixed, seed=0)
        for flavour, path in paths.items():
            save(model, path, flavour, mixed)
    return paths


def digest(folder: Path) -> str:
    """One sha256 over every file name and byte under ``folder`` (absent: "absent")."""
    if not folder.exists():
        return "absent"
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite {name} in manifest.json")


def non_finite(out: Path) -> str | None:
    """Where an export holds a NaN or an infinity (a tensor or a manifest number), or None."""
    from kerasfold.targets.mps.read import load_export
    try:
        json.loads((out / "manifest.json").read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except ValueError as err:
        return str(err)
    export = load_export(out)
    for entry in export.layers:
        for key in ("weights", "bias"):
            if key in entry and not np.all(np.isfinite(export.tensor(entry, key))):
                return f"{entry['name']} {key}"
    return None


def crash_site(stderr: str) -> str:
    """``file:line exception`` of the innermost frame of a traceback."""
    frames = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("File ")]
    lines = [ln for ln in stderr.splitlines() if ln and not ln.startswith(" ")]
    error = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln), "?")
    where = frames[-1].replace("File ", "") if frames else "?"
    return f"{where} {error.split(':')[0]}"


def judge(code: int, stderr: str, before: str, out: Path, prog: str) -> list[str]:
    """The contract breaks of one finished case (empty: the case is fine)."""
    problems = []
    if code == 3 or "Traceback" in stderr:
        problems.append("crash " + crash_site(stderr))
    if code == 2:
        errors = [ln for ln in stderr.splitlines() if ln.startswith(f"{prog}: error: ")]
        if len(errors) != 1 or len(stderr.splitlines()) != 1:
            problems.append("stderr not one error line")
    if code != 0 and digest(out) != before:
        problems.append("OUT changed by a failed run")
    if code == 0 and prog == "kerasfold":
        from kerasfold.errors import ExportError
        try:
            where = non_finite(out)
        except ExportError as err:                         # the exporter wrote what it cannot read
            problems.append(f"invalid export written ({err})")
        else:
            if where:
                problems.append(f"non-finite value written ({where})")
    if any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir()):
        problems.append("staging left behind")
    return problems


def run_case(index: int, seed: int, family: str, flavour: str, model: Path, clean: Path,
             work: Path, timeout: float) -> dict:
    """In a forked child: make the mutant, run the command line with stderr captured, judge."""
    signal.alarm(int(timeout))
    rng = np.random.default_rng([seed, index])
    case = work / f"case-{index}"
    case.mkdir()
    out = case / "out"
    shutil.copytree(clean, out)
    if family == "manifest":
        what, prog = manifest_mutant(out, rng), "kerasfold.verify"
        from kerasfold.verify.check import main as command
        argv = [str(model), str(out), "--reference-only"]
    else:
        target = case / ("model" + "".join(model.suffixes))
        what, prog = mutant(model, target, family, rng), "kerasfold"
        from kerasfold.yolo2metal import main as command
        argv = [str(target), str(out), "-q"]
    before = digest(out)
    log = case / "stderr"
    with log.open("w") as sink:
        os.dup2(sink.fileno(), 2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        code = command(argv)
        sys.stderr.flush()
        sys.stdout.flush()
    stderr = log.read_text(errors="replace")
    return {"case": index, "family": family, "flavour": flavour, "what": what, "code": code,
            "problems": judge(code, stderr, before, out, prog), "stderr": stderr[-2000:]}


def case_kind(i: int, families: tuple[str, ...], flavours: list[str]) -> tuple[str, str]:
    """Case ``i``'s family and seed flavour: families in turn, then flavours in turn."""
    return families[i % len(families)], flavours[(i // len(families)) % len(flavours)]


def campaign(seeds: dict[str, Path], n: int, *, seed: int = 0, jobs: int = 2, timeout: float = 30.0,
             families: tuple[str, ...] = ALL_FAMILIES, only: list[int] | None = None) -> list[dict]:
    """Run cases ``0..n-1`` (or ``only``), ``jobs`` at a time; one result per case."""
    from kerasfold.yolo2metal import main as export_main     # imported before forking: cheap children
    import kerasfold.verify.check                             # noqa: F401
    work = Path(tempfile.mkdtemp(prefix="kerasfold-fuzz-"))
    cleans = {}
    for flavour, model in seeds.items():
        cleans[flavour] = work / f"clean-{flavour}"
        if export_main([str(model), str(cleans[flavour]), "-q"]) != 0:
            raise SystemExit(f"the seed model {model} does not export")
    flavours = list(seeds)
    queue = list(only if only is not None else range(n))
    running: dict[int, tuple[int, float]] = {}
    results = []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                i = queue.pop(0)
                family, flavour = case_kind(i, families, flavours)
                pid = os.fork()
                if pid == 0:                                  # the child
                    code = 0
                    try:
                        result = run_case(i, seed, family, flavour, seeds[flavour], cleans[flavour],
                                          work, timeout)
                        (work / f"case-{i}" / "result.json").write_text(json.dumps(result))
                    except BaseException:                     # the harness itself failed
                        code = 99
                    os._exit(code)
                running[pid] = (i, time.perf_counter())
            pid, status = os.wait()
            i, started = running.pop(pid)
            results.append(_collect(work, i, seed, families, flavours, status, time.perf_counter() - started))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sorted(results, key=lambda r: r["case"])


def _collect(work: Path, i: int, seed: int, families: tuple[str, ...], flavours: list[str],
             status: int, seconds: float) -> dict:
    path = work / f"case-{i}" / "result.json"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and path.exists():
        result = json.loads(path.read_text())
    else:
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        problem = ("hang" if signum == signal.SIGALRM else f"signal {signum}" if signum
                   else f"harness error {os.WEXITSTATUS(status)}")
        family, flavour = case_kind(i, families, flavours)
        result = {"case": i, "family": family, "flavour": flavour, "what": "?", "code": None,
                  "problems": [problem], "stderr": ""}
    result["seconds"] = round(seconds, 3)
    shutil.rmtree(work / f"case-{i}", ignore_errors=True)
    return result


def tally(results: list[dict]) -> dict:
    """Outcome counts: exit codes, problems by kind, distinct crash sites, the slowest case."""
    problems = Counter(p.split(" (")[0] if not p.startswith("crash") else "crash"
                       for r in results for p in r["problems"])
    return {"cases": len(results),
            "exit": dict(sorted(Counter(str(r["code"]) for r in results).items())),
            "by_family": {f: dict(Counter(str(r["code"]) for r in results if r["family"] == f))
                          for f in sorted({r["family"] for r in results})},
            "problems": dict(problems),
            "crash_sites": sorted({p[6:] for r in results for p in r["problems"] if p.startswith("crash")}),
            "bad_cases": {r["case"]: r["problems"] for r in results if r["problems"]},
            "slowest_s": max((r["seconds"] for r in results), default=0.0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, help="number of cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a case counts as a hang")
    p.add_argument("--seeds", type=Path, default=ROOT / "build" / "fuzz-seeds",
                   help="folder of the seed model files (built there when absent; needs TensorFlow)")
    p.add_argument("--families", nargs="+", choices=ALL_FAMILIES, default=list(ALL_FAMILIES))
    p.add_argument("--only", type=int, nargs="+", help="run these case numbers only (reproduce)")
    p.add_argument("--show", type=int, default=5, help="bad cases to print in full")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    args = p.parse_args(argv)
    seeds = build_seeds(args.seeds)
    start = time.perf_counter()
    results = campaign(seeds, args.n, seed=args.seed, jobs=args.jobs, timeout=args.timeout,
                       families=tuple(args.families), only=args.only)
    counts = tally(results)
    counts["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(counts))
        return 0
    print(f"{counts['cases']} cases (seed {args.seed}, {args.jobs} jobs) in {counts['seconds']} s; "
          f"slowest {counts['slowest_s']} s")
    print("exit codes:", ", ".join(f"{k}: {v}" for k, v in counts["exit"].items()))
    for family, by_code in counts["by_family"].items():
        print(f"  {family}: " + ", ".join(f"exit {k}: {v}" for k, v in sorted(by_code.items())))
    print("contract breaks:", ", ".join(f"{k}: {v}" for k, v in counts["problems"].items()) or "none")
    for site in counts["crash_sites"]:
        print("  crash at", site)
    for r in [r for r in results if r["problems"]][:args.show]:
        print(f"case {r['case']} ({r['family']}, {r['flavour']}: {r['what']}): exit {r['code']}, "
              f"{'; '.join(r['problems'])}")
        print("   ", r["stderr"].strip().replace("\n", "\n    ")[-600:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
