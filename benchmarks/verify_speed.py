"""``--verify`` wall time on tiny-yolo-voc against TensorFlow's own import, and where it goes.

    python benchmarks/verify_speed.py [--runs N] [--model tiny-yolo-voc.h5]

Fresh processes, alternated, N times each (median and min):

- the yardstick: ``python -c "import tensorflow"``;
- ``python -m kerasfold.yolo2metal MODEL OUT --verify -q`` (export, then both checks);
- the same run in one process with a timer around each step of the export and of
  ``verify_export``, TensorFlow's and Keras' import included where the run makes it (exclusive
  times: a step called inside another is not counted twice; "other" is what no timer covers in
  the main thread; steps marked "thread beside" ran in another thread, overlapping the others:
  the numpy check runs beside TensorFlow's import).

The model is tiny-yolo-voc built in its Keras 2 ``.h5`` flavour (``models/tiny_yolo_voc.py``)
unless ``--model`` names one.
"""
from __future__ import annotations

import argparse
import compileall
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
TF, AFTER = "TensorFlow + Keras import", "everything but TensorFlow's import"
BESIDE = " [thread beside]"                  # a step run in another thread, overlapping the rest

# (module, function, step): the functions timed in the breakdown; one missing is skipped.
STEPS = [
    ("kerasfold.verify.keras_env", "import_keras", TF),
    ("kerasfold.verify.rebuild", "import_keras", TF),
    ("kerasfold.pipeline", "export", "export (read, fold, write)"),
    ("kerasfold.verify.check", "load_export", "load the export (manifest)"),
    ("kerasfold.targets.mps.read", "Export.graph", "decode the export (read, hash, layouts)"),
    ("kerasfold.verify.check", "unfolded_graph", "unfolded graph of the original"),
    ("kerasfold.verify.check", "prepare", "unfolded graph of the original"),
    ("kerasfold.verify.check", "run_reference", "reference runs (numpy)"),
    ("kerasfold.verify.rebuild", "from_export", "rebuild from files (Keras)"),
    ("kerasfold.verify.check", "load_original", "Keras load of the original"),
    ("kerasfold.verify.keras_env", "with_dtype", "original to float64"),
    ("kerasfold.verify.check", "_outputs", "Keras model calls"),
]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=ENV, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def child(model: str, out: str) -> None:
    """One ``--verify`` run with timers; prints {step: seconds} as JSON."""
    sys.path.insert(0, str(ROOT))
    times: dict[str, float] = {}
    local = threading.local()                 # per thread: time spent in timed callees, per open call

    def timed(fn, step):
        def wrapper(*args, **kwargs):
            stack = local.__dict__.setdefault("stack", [])
            stack.append(0.0)
            begin = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.perf_counter() - begin
                inner = stack.pop()
                key = step if threading.current_thread() is threading.main_thread() else step + BESIDE
                times[key] = times.get(key, 0.0) + total - inner
                if stack:
                    stack[-1] += total
        return wrapper

    import kerasfold.verify.rebuild  # noqa: F401  (imported before patching, as check imports it later)
    for module, name, step in STEPS:
        owner = importlib.import_module(module)
        *path, name = name.split(".")
        for part in path:                     # a method: Class.method
            owner = getattr(owner, part)
        if hasattr(owner, name):
            setattr(owner, name, timed(getattr(owner, name), step))
    from kerasfold.yolo2metal import main
    start = time.perf_counter()
    code = main([model, out, "--verify", "-q"])
    times[AFTER] = time.perf_counter() - start - times.get(TF, 0.0)
    if code != 0:
        raise SystemExit(f"--verify exited {code}")
    print(json.dumps(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model", help="a model file (default: tiny-yolo-voc, Keras 2 .h5, built here)")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    compileall.compile_dir(ROOT / "kerasfold", quiet=1)      # as installed (see export_speed.py)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            subprocess.run([sys.executable, "-m", "models.tiny_yolo_voc", tmp, "--flavour", "keras2-h5"],
                           check=True, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL)
            model = str(Path(tmp) / "tiny-yolo-voc.h5")
        out = str(Path(tmp) / "out")
        yardstick = [sys.executable, "-c", "import tensorflow"]
        verify = [sys.executable, "-m", "kerasfold.yolo2metal", model, out, "--verify", "-q"]
        breakdown = [sys.executable, str(Path(__file__).resolve()), "--child", model, out]
        walls: dict[str, list[float]] = {"tf": [], "verify": []}
        steps: list[dict[str, float]] = []
        wall(verify)                                          # warm the page cache
        for _ in range(args.runs):
            walls["tf"].append(wall(yardstick))
            walls["verify"].append(wall(verify))
            line = subprocess.run(breakdown, env=ENV, cwd=ROOT, check=True, capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1]
            steps.append(json.loads(line))
    tf, total = statistics.median(walls["tf"]), statistics.median(walls["verify"])
    print(f"{Path(model).name}, {args.runs} runs each, alternated, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}")
    print(f"{'':44} {'median s':>9} {'min s':>7}")
    label = 'python -c "import tensorflow" (yardstick)'
    print(f"{label:44} {tf:9.2f} {min(walls['tf']):7.2f}")
    print(f"{'yolo2metal --verify':44} {total:9.2f} {min(walls['verify']):7.2f}")
    over = [v - t for v, t in zip(walls["verify"], walls["tf"])]
    print(f"{'--verify minus the yardstick (same round)':44} {statistics.median(over):9.2f} {min(over):7.2f}")
    print("\nin one process, exclusive seconds per step (median over runs):")
    names = [k for k in dict.fromkeys(k for s in steps for k in s) if k != AFTER]
    for name in names:
        print(f"  {name:42} {statistics.median(s.get(name, 0.0) for s in steps):7.3f}")
    other = [s[AFTER] - sum(v for k, v in s.items() if k not in (TF, AFTER) and not k.endswith(BESIDE))
             for s in steps]
    print(f"  {'other (no timer)':42} {statistics.median(other):7.3f}")
    print(f"  {AFTER:42} {statistics.median(s[AFTER] for s in steps):7.3f}")

if __name__ == "__main__":
    main()
