"""Core ML packages of real networks, proven on Linux: the numpy evaluator against the reference
executor (verify_package) and against Keras' own prediction.

    python benchmarks/coreml_parity.py [--models tiny yolov2 MobileNetV2 ...] [--dtype float32]

For each model: export (MPS), build the .mlpackage from the export directory, check its weights
against the files bit for bit, run it, and print the largest relative errors.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras_model(name: str, folder: Path):
    """(path of the saved model, the Keras model or None, input size)."""
    if name == "tiny":
        from models.tiny_yolo_voc import build_and_save
        paths = build_and_save(folder, flavours=("keras",))
        import keras
        return paths["keras"], keras.models.load_model(paths["keras"], compile=False), 416
    if name == "yolov2":
        from models.yolov2 import build_and_save
        return build_and_save(folder, flavours=("keras2-h5",))["keras2-h5"], None, 416
    from models.applications import build
    model = build(name)
    path = folder / f"{name}.keras"
    model.save(path)
    return path, model, model.input_shape[1]


def main() -> None:
    from models.applications import PROVEN
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "yolov2", *PROVEN])
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    args = p.parse_args()
    from kerasfold.pipeline import export
    from kerasfold.targets.coreml.build import build_package
    from kerasfold.targets.coreml.package import CoreMLOptions
    from kerasfold.verify.coreml import verify_package
    from kerasfold.verify.mlprogram import load_program, run
    print(f"{'model':14} {'size':>5} {'ops':>5} {'build s':>8} {'vs reference':>13} {'vs Keras':>9}  weights")
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            path, model, size = keras_model(name, folder)
            export(path, folder / "out")
            start = time.perf_counter()
            result = build_package(folder / "out", folder / "m.mlpackage", CoreMLOptions(dtype=args.dtype))
            seconds = time.perf_counter() - start
            report = verify_package(folder / "out", folder / "m.mlpackage")
            exact = "identical" if any("exactly" in n for n in report.notes) else "-"
            vs_keras = "-"
            if model is not None:
                x = np.random.default_rng(3).random((1, size, size, 3), dtype=np.float32)
                program = load_program(folder / "m.mlpackage")
                (got,) = run(program, {program.inputs[0].name: x}, dtype="float64").values()
                want = model.predict(x, verbose=0)
                vs_keras = f"{float(np.max(np.abs(got - want))) / float(np.max(np.abs(want))):.2e}"
            ops = sum(1 for op in result.converted.model._mil_program.functions["main"].operations if op.op_type != "const")
            print(f"{name:14} {size:5} {ops:5} {seconds:8.2f} {report.checks[0].max_rel:13.2e} {vs_keras:>9}  {exact}"
                  + ("" if report.passed else "  FAIL"), flush=True)


if __name__ == "__main__":
    main()
