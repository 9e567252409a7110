"""The Xcode build phase's cost per build: up to date, model touched, model changed.

    python benchmarks/build_step.py [--runs N] [--models tiny yolov2]

Runs export/ios_build_step.sh with /bin/sh under an Xcode-like environment, as fresh processes,
and prints the median wall time of each case beside its yardsticks, measured in the same run:
the interpreter's bare start (``python -c pass``) and an unconditional export
(``python -m kerasfold.yolo2metal -q``, what the phase did on every build before).
The goal: an up-to-date build in at most 0.1 s.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "export" / "ios_build_step.sh"


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr}")
    return seconds


def median(runs: int, cmd: list[str], env: dict[str, str], before=lambda: None) -> float:
    times = []
    for _ in range(runs):
        before()
        times.append(wall(cmd, env))
    return statistics.median(times)


def build_models(root: Path, names: list[str]) -> dict[str, Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    paths = {}
    if "tiny" in names:
        from models.tiny_yolo_voc import build_and_save
        paths["tiny-yolo-voc"] = build_and_save(root / "tiny", flavours=("keras2-h5",))["keras2-h5"]
    if "yolov2" in names:
        from models.yolov2 import build_and_save as build_yolov2
        paths["YOLOv2"] = build_yolov2(root / "yolov2", flavours=("keras2-h5",))["keras2-h5"]
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--models", nargs="+", default=["tiny", "yolov2"], choices=["tiny", "yolov2"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = build_models(tmp_path / "models", args.models)
        python = [sys.executable, "-c", "pass"]
        base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KERASFOLD_PYTHON": sys.executable,
                "TF_CPP_MIN_LOG_LEVEL": "3"}
        print(f"{'model':14} {'MB':>5} {'python -c pass':>15} {'up to date':>11} {'touched':>8} "
              f"{'changed':>8} {'export every build':>19}")
        for name, source in models.items():
            src = tmp_path / name
            model = src / "Models" / "yolo.h5"
            model.parent.mkdir(parents=True)
            shutil.copyfile(source, model)
            env = {**base, "SRCROOT": str(src), "DERIVED_FILE_DIR": str(tmp_path / f"{name}-derived"),
                   "SCRIPT_INPUT_FILE_0": str(model), "SCRIPT_OUTPUT_FILE_0": str(src / "Weights" / "manifest.json"),
                   "ENABLE_USER_SCRIPT_SANDBOXING": "YES"}
            phase = ["/bin/sh", str(SCRIPT)]
            stamp = tmp_path / f"{name}-derived" / "kerasfold-Weights.stamp.json"
            wall(phase, env)                                         # the first build
            bare = median(args.runs, python, env)
            current = median(args.runs, phase, env)
            touched = median(args.runs, phase, env, before=lambda: os.utime(model))
            changed = median(max(3, args.runs // 3), phase, env, before=lambda: stamp.unlink())
            every = median(max(3, args.runs // 3), [sys.executable, "-m", "kerasfold.yolo2metal", str(model),
                                                    str(tmp_path / f"{name}-cli"), "-q"], {**env, "PYTHONPATH": str(ROOT)})
            print(f"{name:14} {model.stat().st_size / 1e6:5.0f} {bare:14.3f}s {current:10.3f}s {touched:7.3f}s "
                  f"{changed:7.2f}s {every:18.2f}s")
        print(f"medians of {args.runs} runs (changed, export every build: {max(3, args.runs // 3)}); "
              "up to date: nothing written; touched: same bytes, new mtime (hashed once, stamp updated)")


if __name__ == "__main__":
    main()
