"""Export speed and memory, each figure beside its yardstick, measured in the same run.

    python benchmarks/export_speed.py [--runs N] [--models tiny yolov2]      (``make bench``)

For each model (Keras 2 ``.h5``), as fresh processes, alternated run by run (paired runs):

- **floor**: start Python, import numpy and h5py, read the model file, write as many bytes with
  fsync: no export can be faster;
- **kerasfold**: ``python -m kerasfold.yolo2metal MODEL OUT -q`` (replacing a previous OUT);
- **Keras script** (tiny-yolo-voc only): ``benchmarks/keras_baseline.py``, what a hand-written
  Keras-load script does; its files are checked byte-identical to kerasfold's.

It prints medians and peak RSS, kerasfold / floor, Keras script / kerasfold, and, for memory,
kerasfold's peak RSS against the interpreter with numpy and h5py imported plus 3x the largest layer.
kerasfold's bytecode is compiled first, as an installed package has it: with PYTHONDONTWRITEBYTECODE
set, every run would otherwise compile the 43 modules an export imports again (0.1-0.2 s a run).
Issue 11's goals: tiny-yolo-voc <= 1.5x the floor and >= 8x faster than the Keras script; YOLOv2
<= 2x the floor; YOLOv2 peak RSS <= interpreter + 3x largest layer.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR = """
import os, sys, numpy, h5py
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
"""


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


def build(name: str, folder: Path) -> Path:
    module = {"tiny": "models.tiny_yolo_voc", "yolov2": "models.yolov2"}[name]
    subprocess.run([sys.executable, "-m", module, str(folder), "--flavour", "keras2-h5"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return next(folder.glob("*.h5"))


def largest_layer_mb(out: Path) -> float:
    manifest = json.loads((out / "manifest.json").read_text())
    return max((out / e["weights"]["file"]).stat().st_size for e in manifest["layers"] if "weights" in e) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--models", nargs="+", default=["tiny", "yolov2"], choices=["tiny", "yolov2"])
    args = p.parse_args()
    compileall.compile_dir(ROOT / "kerasfold", quiet=1)
    print(f"{args.runs} paired runs, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = [timed([sys.executable, "-c", "import numpy, h5py"])[1] for _ in range(3)]
        interpreter = statistics.median(base)
        for name in args.models:
            folder = tmp / name
            folder.mkdir()
            model = build(name, folder)
            tools = {
                "floor (read + write + fsync)": [sys.executable, "-c", FLOOR, str(model), str(folder / "floor.bin")],
                "kerasfold": [sys.executable, "-m", "kerasfold.yolo2metal", str(model), str(folder / "kf"), "-q"],
            }
            if name == "tiny":
                tools["Keras script"] = [sys.executable, str(ROOT / "benchmarks" / "keras_baseline.py"), str(model),
                                         str(folder / "keras")]
            runs: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
            for _ in range(args.runs):
                for tool, cmd in tools.items():
                    runs[tool].append(timed(cmd))
            wall = {t: statistics.median(w for w, _ in r) for t, r in runs.items()}
            rss = {t: max(m for _, m in r) for t, r in runs.items()}
            print(f"\n{name}: {model.stat().st_size / 1e6:.1f} MB .h5")
            print(f"  {'':30} {'median s':>9} {'min s':>7} {'peak RSS MB':>12}")
            for tool, r in runs.items():
                print(f"  {tool:30} {wall[tool]:9.3f} {min(w for w, _ in r):7.3f} {rss[tool]:12.0f}")
            print(f"  kerasfold / floor: {wall['kerasfold'] / wall['floor (read + write + fsync)']:.2f}x")
            if "Keras script" in wall:
                print(f"  Keras script / kerasfold: {wall['Keras script'] / wall['kerasfold']:.2f}x")
                same = all((folder / "kf" / f.name).read_bytes() == f.read_bytes() for f in (folder / "keras").glob("*.bin"))
                print(f"  weight files identical to the Keras script's: {same}")
            layer = largest_layer_mb(folder / "kf")
            print(f"  memory: kerasfold {rss['kerasfold']:.0f} MB; interpreter with numpy and h5py {interpreter:.0f} MB "
                  f"+ 3 x largest layer ({layer:.1f} MB) = {interpreter + 3 * layer:.0f} MB")


if __name__ == "__main__":
    main()
