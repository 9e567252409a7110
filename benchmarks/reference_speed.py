"""The numpy reference executor against Keras' own CPU inference on tiny-yolo-voc 416×416.

    python benchmarks/reference_speed.py [--runs N] [--rounds R]

Same process, same input (batch 1). R rounds; in each round every row runs N + 1 times in a row and
the first call is not timed (it absorbs the previous row's idle BLAS or TensorFlow threads, which
spin for a while); each row's median is over its R x N timed calls, so a machine that gets busier
or quieter during the benchmark weighs on every row alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def timings(rows: dict, runs: int, rounds: int) -> dict[str, list[list[float]]]:
    """Each row's wall times, per round: ``rounds`` rounds of one untimed and ``runs`` timed calls."""
    times: dict[str, list[list[float]]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            fn()
            times[name].append([])
            for _ in range(runs):
                start = time.perf_counter()
                fn()
                times[name][-1].append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="timed calls per row and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import keras

    from kerasfold.pipeline import export
    from kerasfold.targets.mps.read import load_export
    from kerasfold.verify.reference import run
    from models.tiny_yolo_voc import build_and_save
    with tempfile.TemporaryDirectory() as tmp:
        path = build_and_save(tmp, flavours=("keras3-h5",))["keras3-h5"]
        export(path, Path(tmp) / "out")
        exported = load_export(Path(tmp) / "out")
        model = keras.models.load_model(path, compile=False)
        x = np.random.default_rng(0).random((1, 416, 416, 3), dtype=np.float32)
        rows = {
            "reference executor, float32 (numpy)": lambda: run(exported, [x]),
            "reference executor, float64 (numpy)": lambda: run(exported, [x], dtype="float64"),
            "reference executor, MPS offsets": lambda: run(exported, [x], padding="offset"),
            "Keras model(x), float32 (TensorFlow CPU)": lambda: model(x, training=False),
            "Keras predict_on_batch, float32 (TF CPU)": lambda: model.predict_on_batch(x),
        }
        print(f"tiny-yolo-voc 416x416, batch 1, {os.cpu_count()} CPUs: median seconds of all "
              f"{args.rounds} x {args.runs} runs, then of each round's {args.runs}")
        for name, per_round in timings(rows, args.runs, args.rounds).items():
            every = statistics.median(t for r in per_round for t in r)
            print(f"{name:42} {every:7.3f}   " + " ".join(f"{statistics.median(r):6.3f}" for r in per_round))


if __name__ == "__main__":
    main()
