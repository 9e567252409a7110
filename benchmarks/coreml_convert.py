"""kerasfold.coreml against coremltools.convert: wall time, op graphs and weights, in one run.

    python benchmarks/coreml_convert.py [--runs N] [--models tiny-yolo-voc,yolov2,MobileNetV2]

For each model (tiny-yolo-voc and YOLOv2 as Keras 2 ``.h5``, MobileNetV2 from keras.applications
with randomised BN statistics as ``.keras``), side by side, N times each, as fresh processes:

- ``python -m kerasfold.coreml MODEL OUT.mlpackage -q``;
- ``python benchmarks/coreml_apple.py MODEL OUT.mlpackage``: Keras loads the model and
  ``coremltools.convert`` writes a float32 iOS 15 ML Program, as an iOS developer would. When Keras
  cannot load the model (YOLOv2's ``space_to_depth_x2`` Lambda) the row says ``cannot`` and why.

Then both saved packages are read back (``kerasfold.verify.mlprogram.load_program``) and compared
(``kerasfold.verify.ct_compare``): op counts, the sequence of convolution-like ops with their weight
shapes (must be equal), each weight tensor's distance in float32 ulps (Apple's against kerasfold's,
whose weights are the exact float64 fold rounded once), and both programs run by kerasfold's numpy
evaluator on one seeded input.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODELS = ("tiny-yolo-voc", "yolov2", "MobileNetV2")


@dataclass
class Timing:
    walls: list[float] = field(default_factory=list)
    failure: str = ""            # the last stderr line of a failed run ("cannot: ...")
    stderr: str = ""             # the first run's stderr

    def cell(self) -> str:
        if self.failure:
            return "cannot"
        return f"{statistics.median(self.walls):.2f} / {min(self.walls):.2f}"


def timed(cmd: list[str], timing: Timing) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if not timing.walls and not timing.failure:
        timing.stderr = proc.stderr
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
        timing.failure = lines[-1]
        return
    timing.walls.append(wall)


def build(name: str, folder: Path) -> Path:
    if name == "tiny-yolo-voc":
        from models.tiny_yolo_voc import build_and_save
        return build_and_save(folder, flavours=("keras2-h5",))["keras2-h5"]
    if name == "yolov2":
        from models.yolov2 import build_and_save
        return build_and_save(folder)["keras2-h5"]
    from models.applications import build as application
    path = folder / f"{name}.keras"
    application(name).save(path)
    return path


def warnings_of(stderr: str) -> list[str]:
    """coremltools' and Keras' messages, once each, without progress bars."""
    seen: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        if line and "passes/s" not in line and "ops/s" not in line and line not in seen and line != "warnings.warn(":
            seen.append(line)
    return seen


def outputs_agree(a, b) -> float:
    """Largest relative difference between the two programs' first outputs on one seeded input."""
    from kerasfold.verify.mlprogram import run
    x = np.random.default_rng(0).random(a.inputs[0].shape, dtype=np.float32)
    ya = next(iter(run(a, {a.inputs[0].name: x}).values()))
    yb = next(iter(run(b, {b.inputs[0].name: x}).values()))
    return float(np.max(np.abs(ya - yb)) / np.max(np.abs(yb)))


def compare(name: str, apple: Path, kf: Path) -> list[str]:
    from kerasfold.verify import ct_compare
    from kerasfold.verify.mlprogram import load_program
    a, k = load_program(apple), load_program(kf)
    ca, ck = ct_compare.op_counts(a), ct_compare.op_counts(k)
    lines = [f"{name}: op counts (const excluded)   coremltools.convert | kerasfold.coreml"]
    for op in sorted(set(ca) | set(ck), key=lambda t: (-max(ca[t], ck[t]), t)):
        lines.append(f"    {op:28} {ca[op]:5} | {ck[op]:5}")
    same_layers = ct_compare.layers(a) == ct_compare.layers(k)
    lines.append(f"  op sequence without const/identity/cast/transpose: {'identical' if same_layers else 'differs'}")
    sa, sk = ct_compare.signature(a), ct_compare.signature(k)
    if sa != sk:
        i = next((i for i, (x, y) in enumerate(zip(sa, sk)) if x != y), min(len(sa), len(sk)))
        lines.append(f"  convolution-like ops DIFFER ({len(sa)} vs {len(sk)}), first at #{i}: "
                     f"{sa[i] if i < len(sa) else 'none'} vs {sk[i] if i < len(sk) else 'none'}")
        return lines
    distances = ct_compare.weight_distances(a, k)
    values = sum(d.size for d in distances)
    lines.append(f"  convolution-like ops: the same {len(distances)}, same weight shapes")
    folded = [d for d in distances if d.max_ulps <= 8]
    far = [d for d in distances if d.max_ulps > 8]
    lines.append(f"  weights, coremltools.convert vs kerasfold (exact fold rounded once): "
                 f"max {max((d.max_ulps for d in folded), default=0)} ulps, {sum(d.differ for d in folded) / values:.1%} of "
                 f"{values} values differ; tensors identical: {sum(d.differ == 0 for d in distances)}/{len(distances)}")
    for d in far:
        lines.append(f"    {d.name} {d.shape}: {d.max_ulps} ulps max, {d.fraction:.1%} differ "
                     "(not folded by coremltools: BatchNormalization left as mul + add)")
    lines.append(f"  outputs, both run by the numpy evaluator (float32), max rel difference: {outputs_agree(a, k):.2e}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    args = p.parse_args()
    names = [n for n in args.models.split(",") if n]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows, details, messages = [], [], {}
        for name in names:
            folder = tmp / name
            folder.mkdir()
            model = build(name, folder)
            kf, apple = folder / "kf.mlpackage", folder / "apple.mlpackage"
            ours, theirs = Timing(), Timing()
            for _ in range(args.runs):           # alternate, so that both see the same machine load
                timed([sys.executable, "-m", "kerasfold.coreml", str(model), str(kf), "-q"], ours)
                timed([sys.executable, str(ROOT / "benchmarks" / "coreml_apple.py"), str(model), str(apple)], theirs)
            rows.append((name, model.stat().st_size / 1e6, ours, theirs))
            messages[name] = warnings_of(theirs.stderr)
            if ours.failure:
                details.append([f"{name}: kerasfold.coreml failed: {ours.failure}"])
            elif theirs.failure:
                details.append([f"{name}: coremltools.convert route: {theirs.failure}"])
            else:
                details.append(compare(name, apple, kf))
        print(f"{args.runs} runs each, fresh processes, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
              "wall time median / min in s")
        print(f"{'model':14} {'file MB':>8} {'kerasfold.coreml':>18} {'coremltools.convert':>20}")
        for name, size, ours, theirs in rows:
            print(f"{name:14} {size:8.1f} {ours.cell():>18} {theirs.cell():>20}")
        for lines in details:
            print()
            print("\n".join(lines))
        for name, lines in messages.items():
            print(f"\n{name}: what the coremltools.convert route printed on stderr (first run, once each):")
            print("\n".join(f"    {line[:200]}" for line in lines) or "    nothing")


if __name__ == "__main__":
    main()
