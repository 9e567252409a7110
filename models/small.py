"""Small seeded test networks (Keras 3), with randomised BatchNormalization statistics."""
from __future__ import annotations

from typing import Any

import numpy as np

from .bn_stats import randomize_bn


def _seeded(model: Any, seed: int) -> Any:
    """Random non-zero weights everywhere (biases included), then realistic BN statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights and layer.__class__.__name__ != "BatchNormalization":
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    randomize_bn(model, rng)
    return model


def conv_bn_act(*, use_bias: bool = True, kernel: int = 3, channels: int = 8, size: int = 12,
                conv_activation: str = "linear", branch: bool = False, conv_is_output: bool = False,
                bn_axis: int = -1, act: str = "leaky", dropout: bool = False, seed: int = 0) -> Any:
    """input -> Conv2D -> BN -> activation (-> Conv2D 1x1), with switches that break each fold guard:
    ``branch`` (the conv output also feeds a second layer), ``conv_is_output``, ``conv_activation``."""
    import keras
    L = keras.layers
    inp = keras.Input((size, size, 3), name="image")
    conv = L.Conv2D(channels, kernel, padding="same", use_bias=use_bias, activation=conv_activation,
                    name="conv")(inp)
    x = L.BatchNormalization(axis=bn_axis, name="bn")(conv)
    x = {"leaky": L.LeakyReLU(0.1, name="act"), "relu6": L.ReLU(max_value=6.0, name="act"),
         "none": L.Identity(name="act")}[act](x)
    if dropout:
        x = L.Dropout(0.5, name="drop")(x)
    x = L.Conv2D(4, 1, name="head")(x)
    outputs = [x]
    if branch:
        outputs = [L.Add(name="sum")([x, L.Conv2D(4, 1, name="side")(conv)])]
    if conv_is_output:
        outputs.append(conv)
    return _seeded(keras.Model(inp, outputs), seed)


def with_layer(layer_factory: Any, size: int = 8, seed: int = 0) -> Any:
    """input -> Conv2D -> <layer> : a model holding one layer of the caller's choice."""
    import keras
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    return _seeded(keras.Model(inp, layer_factory()(x)), seed)


def sequential(seed: int = 0) -> Any:
    import keras
    L = keras.layers
    model = keras.Sequential([keras.Input((10, 10, 3)), L.Conv2D(6, 3, use_bias=False, name="c1"),
                              L.BatchNormalization(name="b1"), L.ReLU(name="r1"),
                              L.MaxPooling2D(2, name="p1"), L.Conv2D(2, 1, name="c2")], name="seq")
    return _seeded(model, seed)
