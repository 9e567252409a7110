"""Small test networks, each an ``architecture(km, **options)`` built with any keras module
(``keras`` or ``tf_keras``), so that :func:`build` seeds it in Keras 3 and :func:`save` writes it
in every file flavour through :mod:`models.flavours` (weights bit-identical across flavours).

    model = build(conv_bn_act, use_bias=False)
    save(model, "m.h5", "keras2-h5", conv_bn_act, use_bias=False)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import flavours

FLAVOURS = flavours.FLAVOURS
SUFFIXES = flavours.SUFFIXES
Builder = Callable[..., Any]          # (keras module, **options) -> unseeded model


def build(builder: Builder, seed: int = 0, **options: Any) -> Any:
    """``builder``'s network in Keras 3 with seeded weights and randomised (non-identity) BN stats."""
    import keras
    return flavours.seed_weights(builder(keras, **options), np.random.default_rng(seed))


def save(model: Any, path: str | Path, flavour: str, builder: Builder, **options: Any) -> Path:
    """Write a model made by :func:`build` (same ``builder`` and ``options``) in ``flavour``."""
    return flavours.save(model, path, flavour, lambda km: builder(km, **options))


def conv_bn_act(km: Any, *, use_bias: bool = True, kernel: int = 3, channels: int = 8, size: int = 12,
                conv_activation: str = "linear", branch: bool = False, conv_is_output: bool = False,
                bn_axis: int = -1, act: str = "leaky", dropout: bool = False, scale: bool = True,
                center: bool = True, epsilon: float = 1e-3) -> Any:
    """input -> Conv2D -> BN -> activation (-> Dropout) -> Conv2D 1x1 "head", with switches that break
    each fold guard: ``branch`` (the conv output also feeds a 1x1 "side" conv added to the head),
    ``conv_is_output``, ``conv_activation``, ``bn_axis``."""
    L = km.layers
    inp = km.Input((size, size, 3), name="image")
    conv = L.Conv2D(channels, kernel, padding="same", use_bias=use_bias, activation=conv_activation,
                    name="conv")(inp)
    x = L.BatchNormalization(axis=bn_axis, scale=scale, center=center, epsilon=epsilon, name="bn")(conv)
    if act == "leaky":
        x = L.LeakyReLU(0.1, name="act")(x)
    elif act == "relu6":
        x = L.ReLU(max_value=6.0, name="act")(x)
    elif act == "relu_activation":
        x = L.Activation("relu", name="act")(x)
    if dropout:
        x = L.Dropout(0.5, name="drop")(x)
    x = L.Conv2D(4, 1, name="head")(x)
    outputs = [x]
    if branch:
        outputs = [L.Add(name="sum")([x, L.Conv2D(4, 1, name="side")(conv)])]
    if conv_is_output:
        outputs.append(conv)
    return km.Model(inp, outputs if len(outputs) > 1 else outputs[0])


def shared_conv(km: Any) -> Any:
    """One Conv2D called twice (shared weights); its first call feeds a BN."""
    L = km.layers
    inp = km.Input((8, 8, 4), name="image")
    conv = L.Conv2D(4, 3, padding="same", name="conv")
    a = L.BatchNormalization(name="bn")(conv(inp))
    b = conv(L.ReLU(name="r")(inp))
    return km.Model(inp, L.Add(name="sum")([a, b]))


# name -> the explicit [top, bottom, left, right] padding TensorFlow uses in :func:`windows`.
WINDOW_PADS = {"c3_valid": [0, 0, 0, 0], "c1x3": [0, 0, 1, 1], "c3s2_odd": [1, 1, 1, 1],
               "c2s1": [0, 1, 0, 1], "avg2s1": [0, 1, 0, 1], "max3s2_odd": [1, 1, 1, 1],
               "c1s2_even": [0, 0, 0, 0], "max2s2_even": [0, 0, 0, 0]}


def windows(km: Any) -> Any:
    """A chain of convolutions and pools whose SAME padding is zero, symmetric or asymmetric:
    odd and even inputs, odd, even and 1xN kernels, strides 1 and 2 (Forge's offset formula gets
    the 2x2 stride 1 and the 1x1 stride 2 on an even input wrong). Pads in ``WINDOW_PADS``."""
    L = km.layers
    x = inp = km.Input((15, 15, 3), name="image")
    x = L.Conv2D(4, 3, padding="valid", name="c3_valid")(x)                     # 15 -> 13
    x = L.Conv2D(4, (1, 3), padding="same", name="c1x3")(x)                     # 13 -> 13
    x = L.Conv2D(4, 3, strides=2, padding="same", name="c3s2_odd")(x)           # 13 -> 7
    x = L.Conv2D(4, 2, strides=1, padding="same", name="c2s1")(x)               # 7 -> 7
    x = L.AveragePooling2D(2, strides=1, padding="same", name="avg2s1")(x)      # 7 -> 7
    x = L.MaxPooling2D(3, strides=2, padding="same", name="max3s2_odd")(x)      # 7 -> 4
    x = L.Conv2D(4, 1, strides=2, padding="same", name="c1s2_even")(x)          # 4 -> 2
    x = L.MaxPooling2D(2, strides=2, padding="same", name="max2s2_even")(x)     # 2 -> 1
    return km.Model(inp, x)


def with_layer(km: Any, *, layer: str, options: dict | None = None, input_shape: tuple = (8, 8, 3)) -> Any:
    """input -> ``km.layers.<layer>(**options)``: a model holding one layer of the caller's choice
    (Conv1D, Conv3D, Embedding, ... for the unsupported-layer errors)."""
    inp = km.Input(input_shape, name="image")
    return km.Model(inp, getattr(km.layers, layer)(**(options or {}), name="odd")(inp))


def named(km: Any, *, names: tuple[str, ...]) -> Any:
    """A chain of 1x1 Conv2D layers with the given names (unicode, dots, case-only differences)."""
    x = inp = km.Input((4, 4, 3), name="image")
    for name in names:
        x = km.layers.Conv2D(3, 1, name=name)(x)
    return km.Model(inp, x)


def sequential(km: Any) -> Any:
    """A Sequential model: Conv2D (no bias) -> BN -> ReLU -> MaxPooling2D -> Conv2D 1x1."""
    L = km.layers
    return km.Sequential([km.Input((10, 10, 3)), L.Conv2D(6, 3, use_bias=False, name="c1"),
                          L.BatchNormalization(name="b1"), L.ReLU(name="r1"),
                          L.MaxPooling2D(2, name="p1"), L.Conv2D(2, 1, name="c2")], name="seq")


def conv1d_bn(km: Any, *, steps: int = 96, channels: int = 6) -> Any:
    """A 1-D sensor network: (steps, channels) -> Conv1D 5 -> BN -> LeakyReLU -> Conv1D 3 stride 2
    -> BN -> ReLU -> Conv1D 1x1 "head"."""
    L = km.layers
    x = inp = km.Input((steps, channels), name="signal")
    x = L.Conv1D(16, 5, padding="same", use_bias=False, name="c1")(x)
    x = L.LeakyReLU(0.1, name="a1")(L.BatchNormalization(name="b1")(x))
    x = L.Conv1D(8, 3, strides=2, padding="same", name="c2")(x)
    x = L.ReLU(name="a2")(L.BatchNormalization(name="b2")(x))
    return km.Model(inp, L.Conv1D(4, 1, name="head")(x))


def dropouts(km: Any) -> Any:
    """AlphaDropout and SpatialDropout2D (identities at inference) before stride-2 'same'
    convolutions on odd and even sizes, whose pads depend on the shapes the dropouts pass on."""
    L = km.layers
    x = inp = km.Input((13, 13, 3), name="image")
    x = L.AlphaDropout(0.1, name="alpha_drop")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", name="c1")(x)
    x = L.ReLU(name="a1")(L.BatchNormalization(name="b1")(x))
    x = L.SpatialDropout2D(0.2, name="spatial_drop")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", name="c2")(x)
    x = L.BatchNormalization(name="b2")(x)
    x = L.GaussianDropout(0.1, name="gauss_drop")(x)
    return km.Model(inp, L.Conv2D(4, 3, strides=2, padding="same", name="head")(x))


def bilinear(km: Any) -> Any:
    """Conv -> UpSampling2D bilinear (2x3) -> conv: Keras' resize with half-pixel centres."""
    L = km.layers
    x = inp = km.Input((5, 6, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", name="c1")(x)
    x = L.UpSampling2D((2, 3), interpolation="bilinear", name="up")(x)
    return km.Model(inp, L.Conv2D(2, 1, name="head")(x))


def mixed(km: Any) -> Any:
    """A real-world-style network in miniature, the fuzz harness's seed: YOLO's conv -> BN -> leaky
    and max pools, MobileNet's depthwise -> BN -> ReLU6, a residual Add, a route Concatenate after an
    upsampling, zero padding, and a classifier head (global pool -> Dense -> softmax)."""
    L = km.layers
    x = inp = km.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv_1")(x)
    x = L.LeakyReLU(0.1, name="leaky_1")(L.BatchNormalization(name="bn_1")(x))
    route = x
    x = L.MaxPooling2D(2, name="pool_1")(x)
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw_2")(x)
    y = L.ReLU(6.0, name="relu6_2")(L.BatchNormalization(name="bn_2")(y))
    y = L.Conv2D(8, 1, use_bias=False, name="pw_2")(y)
    x = L.Add(name="residual")([x, L.BatchNormalization(name="bn_3")(y)])
    x = L.UpSampling2D(2, name="up")(x)
    x = L.Concatenate(name="route")([x, route])
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.Conv2D(12, 3, strides=2, name="conv_4")(x)
    x = L.Activation("relu", name="relu_4")(L.BatchNormalization(name="bn_4")(x))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return km.Model(inp, L.Dense(5, activation="softmax", name="classes")(x))


def hard_swish(km: Any) -> Any:
    """MobileNetV3's hard-swish as keras.applications writes it, with Keras 3 ops on tensors:
    ``x * ReLU6(x + 3.0) * (1 / 6)``; scalar operands that Keras 3 cannot load back from a legacy
    ``.h5``. Keras 3 only (tf_keras would record TFOpLambda layers)."""
    L = km.layers
    x = inp = km.Input((8, 8, 3), name="image")
    x = L.BatchNormalization(name="bn")(L.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(x))
    gate = L.ReLU(6.0, name="relu6")(x + 3.0) * (1.0 / 6.0)
    x = L.Multiply(name="hard_swish")([x, gate])
    return km.Model(inp, L.Conv2D(2, 1, name="head")(x))
