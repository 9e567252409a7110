"""Kill exports at random moments: OUT must stay whole (the old export or the complete new one)
and no staging folder may outlive the next run.

    python benchmarks/kill.py [N] [--seed S]

Builds tiny-yolo-voc once (Keras 3 .h5) and exports it once as float32 and once as float16 (the
two reference exports, different bytes). Measures how long one export process takes, then N times:
starts ``python -m kerasfold.yolo2metal MODEL OUT -q`` for the dtype OUT does not hold, kills it
at a seeded random moment within that duration (every fourth with SIGTERM, the others SIGKILL),
and classifies OUT as old, new or broken (anything else, or a sha256 that disagrees with its
manifest). It counts the staging folders left beside OUT, runs one export to completion, and
counts them again.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")          # the model build here, quietly
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def start(model: Path, out: Path, dtype: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kerasfold.yolo2metal", str(model), str(out), "-q", "--dtype", dtype]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(model: Path, out: Path, dtype: str) -> float:
    began = time.perf_counter()
    proc = start(model, out, dtype)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"export failed ({proc.returncode}): {err.decode()}")
    return time.perf_counter() - began


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())} if out.is_dir() else {}


def whole(out: Path) -> bool:
    """OUT read through kerasfold's reader: every listed tensor present with its sha256, nothing else."""
    from kerasfold.errors import ExportError
    from kerasfold.targets.mps.read import load_export
    try:
        export = load_export(out)
        listed = {"manifest.json"}
        for layer in export.layers:
            for key in ("weights", "bias"):
                if key in layer:
                    export.tensor(layer, key)
                    listed.add(layer[key]["file"])
    except (ExportError, KeyError, OSError):
        return False
    return not export.hash_mismatches and listed == {p.name for p in out.iterdir()}


def leftovers(out: Path) -> int:
    marks = (f".{out.name}.kerasfold-", f".{out.name}.old-")
    return sum(p.name.startswith(marks) for p in out.parent.iterdir())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", type=int, nargs="?", default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    from models.tiny_yolo_voc import build_and_save
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_and_save(tmp, flavours=("keras3-h5",))["keras3-h5"]
        refs = {d: tmp / "ref" / d for d in ("float32", "float16")}
        durations = [finish(model, refs[d], d) for d in ("float32", "float16", "float32")]
        duration = statistics.median(durations)
        ref_bytes = {d: files(r) for d, r in refs.items()}
        out = tmp / "work" / "out"
        finish(model, out, "float32")
        holds = "float32"
        counts = {"old": 0, "new": 0, "broken": 0}
        kills = {"SIGKILL": 0, "SIGTERM": 0}
        left_kill = left_term = left_after = finished_first = next_bad = 0
        term_codes: dict[int, int] = {}
        began = time.perf_counter()
        for i in range(args.n):
            target = "float16" if holds == "float32" else "float32"
            sig = signal.SIGTERM if i % 4 == 3 else signal.SIGKILL
            proc = start(model, out, target)
            time.sleep(rng.uniform(0, duration))
            if proc.poll() is None:
                proc.send_signal(sig)
            else:
                finished_first += 1
            proc.communicate()
            kills[sig.name] += 1
            if sig == signal.SIGTERM:
                term_codes[proc.returncode] = term_codes.get(proc.returncode, 0) + 1
            now = files(out)
            state = ("old" if now == ref_bytes[holds] else "new" if now == ref_bytes[target] else "broken")
            if not whole(out):
                state = "broken"
            counts[state] += 1
            holds = target if state == "new" else holds
            n_left = leftovers(out)
            left_kill += bool(n_left) and sig == signal.SIGKILL
            left_term += bool(n_left) and sig == signal.SIGTERM
            holds = "float16" if holds == "float32" else "float32"
            finish(model, out, holds)                   # the next run, to completion
            next_bad += files(out) != ref_bytes[holds]
            left_after += leftovers(out)
        print(f"model: tiny-yolo-voc, {sum(len(b) for b in ref_bytes['float32'].values()) / 1e6:.1f} MB "
              f"float32; one export process: {duration:.2f} s (median of 3); seed {args.seed}")
        print(f"kills: {args.n} ({kills['SIGKILL']} SIGKILL, {kills['SIGTERM']} SIGTERM) at random "
              f"moments in 0..{duration:.2f} s; {finished_first} finished before their signal")
        print(f"kills that left a staging folder: {left_kill} of SIGKILL, {left_term} of SIGTERM")
        print(f"staging folders left after the next runs (summed over the {args.n}): {left_after}; "
              f"next runs not matching their reference: {next_bad}")
        print(f"OUT after a kill: old {counts['old']}, new {counts['new']}, broken {counts['broken']}")
        print("SIGTERM exit statuses: " + ", ".join(f"{c}: {k}" for c, k in sorted(term_codes.items())))
        print(f"{time.perf_counter() - began:.1f} s for the kills and the runs after them")


if __name__ == "__main__":
    main()
