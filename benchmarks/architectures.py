"""Parity of real architectures: export each keras.applications model (randomised BN statistics)
and print the parity figures, next to Keras' own float32-vs-float64 disagreement as a yardstick.

    python benchmarks/architectures.py [NAME ...]      (default: every proven architecture)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    from kerasfold.pipeline import export
    from kerasfold.verify.keras_env import with_dtype
    from kerasfold.verify import verify_export
    from models.applications import ILL_CONDITIONED, PROVEN, build

    names = sys.argv[1:] or list(PROVEN) + list(ILL_CONDITIONED)
    print(f"{'model':16} {'input':>5} {'layers':>6} {'folded':>6} {'export s':>8} {'max abs':>9} "
          f"{'max rel':>9} {'keras f32/f64':>13}  verdict")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model = build(name)
            size = model.inputs[0].shape[1]
            path = Path(tmp) / f"{name}.keras"
            model.save(path)
            start = time.perf_counter()
            result = export(path, Path(tmp) / name)
            seconds = time.perf_counter() - start
            report = verify_export(path, Path(tmp) / name)
            xs = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
            y32 = np.asarray(model(xs))
            y64 = np.asarray(with_dtype(model, "float64")(xs.astype(np.float64)))
            noise = np.abs(y32 - y64).max() / np.abs(y64).max()
            layers = result.manifest["layers"]
            print(f"{name:16} {size:>5} {len(layers):>6} {sum(len(e['folded']) for e in layers):>6} "
                  f"{seconds:>8.2f} {report.max_abs:>9.2e} {report.max_rel:>9.2e} {noise:>13.2e}  "
                  f"{'PASS' if report.passed else 'FAIL'}", flush=True)


if __name__ == "__main__":
    main()
