"""Baseline for the benchmark: what a hand-written script does today (Forge's yolo2metal.py style).

Loads the model with Keras, folds each Conv2D -> BatchNormalization pair it finds by walking the
layers, and writes the same ``<layer>_W.bin`` (OHWI) / ``<layer>_b.bin`` files. Not part of the
product: it exists so the benchmark compares like with like.

    python benchmarks/keras_baseline.py MODEL OUT
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def main(model_path: str, out: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        weights = layer.get_weights()
        kernel = weights[0].astype(np.float64)
        bias = weights[1].astype(np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
        users = [n.operation for n in layer._outbound_nodes]
        if len(users) == 1 and isinstance(users[0], keras.layers.BatchNormalization):
            bn = users[0]
            gamma, beta, mean, var = (np.asarray(v, np.float64) for v in
                                      (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
            s = gamma / np.sqrt(var + bn.epsilon)
            kernel, bias = kernel * s, (bias - mean) * s + beta
        kernel.astype(np.float32).transpose(3, 0, 1, 2).tofile(Path(out) / f"{layer.name}_W.bin")
        bias.astype(np.float32).tofile(Path(out) / f"{layer.name}_b.bin")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
