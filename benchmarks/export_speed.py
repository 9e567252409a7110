"""Export speed and memory: kerasfold against a Keras-based script writing the same files.

    python benchmarks/export_speed.py [--runs N]        (``make bench``)

Both run as fresh processes on the same tiny-yolo-voc file (Keras 2 flavour), one after the
other, N times; the table gives the median wall time and the peak resident memory. It also
checks that both wrote byte-identical weight files.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one run of ``cmd``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}")
    scale = 1 if sys.platform == "darwin" else 1024          # ru_maxrss: bytes on macOS, KiB on Linux
    return wall, usage.ru_maxrss * scale / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "models.tiny_yolo_voc", str(tmp), "--flavour", "keras2-h5"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        model = tmp / "tiny-yolo-voc.h5"
        tools = {
            "kerasfold (python -m kerasfold.yolo2metal)":
                [sys.executable, "-m", "kerasfold.yolo2metal", str(model), str(tmp / "kf"), "-q"],
            "Keras script (benchmarks/keras_baseline.py)":
                [sys.executable, str(ROOT / "benchmarks" / "keras_baseline.py"), str(model), str(tmp / "keras")],
        }
        print(f"tiny-yolo-voc, {model.stat().st_size / 1e6:.1f} MB .h5, {args.runs} runs each, "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        print(f"{'tool':46} {'median s':>9} {'min s':>7} {'peak RSS MB':>12}")
        for name, cmd in tools.items():
            runs = [timed(cmd) for _ in range(args.runs)]
            walls = [w for w, _ in runs]
            print(f"{name:46} {statistics.median(walls):9.2f} {min(walls):7.2f} {max(m for _, m in runs):12.0f}")
        same = all((tmp / "kf" / f.name).read_bytes() == f.read_bytes() for f in (tmp / "keras").glob("*.bin"))
        print(f"weight files identical: {same} ({len(list((tmp / 'keras').glob('*.bin')))} files compared)")


if __name__ == "__main__":
    main()
