"""Seeded tiny-yolo-voc laid out exactly as YAD2K writes it, in three file flavours.

Keras 3 builds the model and owns the weights; the ``keras2-h5`` flavour rebuilds
the same graph in ``tf_keras`` (Keras 2 API) with bit-identical weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import flavours as formats

FLAVOURS = formats.FLAVOURS
FILE_NAMES = {
    "keras2-h5": "tiny-yolo-voc.h5",
    "keras3-h5": "tiny-yolo-voc.k3.h5",
    "keras": "tiny-yolo-voc.keras",
}
_BLOCK_FILTERS = (16, 32, 64, 128, 256, 512)


def _architecture(km: Any, input_size: int) -> Any:
    """Untrained tiny-yolo-voc graph built with keras module ``km``."""
    L = km.layers
    conv_i = 0

    def conv_bn_leaky(x: Any, filters: int) -> Any:
        nonlocal conv_i
        conv_i += 1
        x = L.Conv2D(filters, (3, 3), padding="same", use_bias=False,
                     name=f"conv2d_{conv_i}")(x)
        x = L.BatchNormalization(name=f"batch_normalization_{conv_i}")(x)
        return L.LeakyReLU(0.1, name=f"leaky_re_lu_{conv_i}")(x)

    inputs = km.Input(shape=(input_size, input_size, 3), name="input_1")
    x = inputs
    for i, filters in enumerate(_BLOCK_FILTERS, start=1):
        x = conv_bn_leaky(x, filters)
        x = L.MaxPooling2D((2, 2), strides=(1, 1) if i == 6 else (2, 2),
                           padding="same", name=f"max_pooling2d_{i}")(x)
    x = conv_bn_leaky(x, 1024)
    x = conv_bn_leaky(x, 1024)
    outputs = L.Conv2D(125, (1, 1), padding="same", name="conv2d_9")(x)
    return km.Model(inputs, outputs)


def weights_by_layer(model: Any) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weights as numpy arrays (layers without weights omitted)."""
    return {l.name: [np.asarray(w) for w in l.get_weights()]
            for l in model.layers if l.weights}


def build(keras_module: Any = None, seed: int = 0, input_size: int = 416) -> Any:
    """Seeded tiny-yolo-voc with realistic BN statistics.

    ``keras_module`` is ``keras`` (default, Keras 3) or ``tf_keras``; weights are
    always generated in Keras 3 and copied, so both are bit-identical per seed.
    """
    import keras

    from models.bn_stats import randomize_bn

    rng = np.random.default_rng(seed)
    model = _architecture(keras, input_size)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            std = np.sqrt(2.0 / (kh * kw * cin))
            layer.kernel.assign(rng.normal(0.0, std, (kh, kw, cin, cout)).astype("float32"))
            if layer.use_bias:
                layer.bias.assign(rng.normal(0.0, 0.5, cout).astype("float32"))
    randomize_bn(model, rng)
    if keras_module is None or keras_module is keras:
        return model
    other = _architecture(keras_module, input_size)
    formats.copy_weights(model, other)
    return other


def save(model: Any, path: str | Path, flavour: str) -> Path:
    """Write a Keras 3 tiny-yolo-voc ``model`` as ``keras3-h5``, ``keras`` or ``keras2-h5``."""
    size = int(model.inputs[0].shape[1])
    return formats.save(model, path, flavour, lambda km: _architecture(km, size))


def build_and_save(out_dir: str | Path, flavours: Sequence[str] = FLAVOURS,
                   seed: int = 0, input_size: int = 416) -> dict[str, Path]:
    """Build once and write each flavour into ``out_dir``; flavour -> path."""
    model = build(seed=seed, input_size=input_size)
    return {f: save(model, Path(out_dir) / FILE_NAMES[f], f) for f in flavours}


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: write the requested flavours and print their paths."""
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--flavour", action="append", choices=FLAVOURS,
                        help="repeatable; default: all three")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=int, default=416)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    paths = build_and_save(args.out_dir, args.flavour or FLAVOURS,
                           args.seed, args.input_size)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    main()
