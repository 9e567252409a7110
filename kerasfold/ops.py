"""Typed, target-neutral operations: what every kind lowers to and every target consumes.

Weights are numpy arrays in Keras' layout (each field's comment gives it); geometry (explicit
``pad`` [top, bottom, left, right], ``crop``) is computed once, by the kind that lowers a layer.
Every op carries ``activation``: the activation applied to its output (``{"type": "linear"}``
when none), the manifest's vocabulary (``kerasfold.kinds.activation``).

A rank-2 tensor (W, C) is a 1 x W image for the windowed ops (Conv1D lowers to ``Conv2D``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Pair = tuple[int, int]
Sides = tuple[int, int, int, int]           # [top, bottom, left, right]


def linear() -> dict[str, Any]:
    return {"type": "linear"}


@dataclass(eq=False)
class Op:
    activation: dict[str, Any] = field(default_factory=linear, kw_only=True)


@dataclass(eq=False)
class Conv2D(Op):
    kernel: np.ndarray                      # (kh, kw, in/groups, out)  HWIO
    bias: np.ndarray | None                 # (out,)
    strides: Pair
    dilation: Pair
    groups: int
    padding: str                            # "same" | "valid" (as in Keras)
    pad: Sides


@dataclass(eq=False)
class DepthwiseConv2D(Op):
    kernel: np.ndarray                      # (kh, kw, C, M); output channel c*M + m
    bias: np.ndarray | None                 # (C*M,)
    strides: Pair
    dilation: Pair
    padding: str
    pad: Sides

    @property
    def multiplier(self) -> int:
        return int(self.kernel.shape[3])


@dataclass(eq=False)
class SeparableConv2D(Op):
    """Split by a pass into DepthwiseConv2D -> Conv2D 1x1 (the device has no separable layer)."""
    depthwise: np.ndarray                   # (kh, kw, C, M)
    pointwise: np.ndarray                   # (1, 1, C*M, out)
    bias: np.ndarray | None
    strides: Pair
    dilation: Pair
    padding: str
    pad: Sides


@dataclass(eq=False)
class Conv2DTranspose(Op):
    kernel: np.ndarray                      # (kh, kw, out, in)
    bias: np.ndarray | None                 # (out,)
    strides: Pair
    padding: str
    crop: Sides                             # cut from the full ("valid") transposed output


@dataclass(eq=False)
class Dense(Op):
    kernel: np.ndarray                      # (in, out); ``in`` in Keras' flatten order (H, W, C)
    bias: np.ndarray | None


@dataclass(eq=False)
class BatchNorm(Op):
    """y = gamma (x - mean) / sqrt(var + eps) + beta over the last axis; folded or made a
    per-channel scale/bias by passes. ``gamma``/``beta`` None when absent (scale/center False)."""
    mean: np.ndarray
    var: np.ndarray
    eps: float
    gamma: np.ndarray | None
    beta: np.ndarray | None
    axis: int                               # as in the config (batch included)
    channels_last: bool                     # ``axis`` is the channel (last) axis


@dataclass(eq=False)
class Normalization(Op):
    """Keras' Normalization: (x - mean) / max(sqrt(var), 1e-7), per channel."""
    mean: np.ndarray                        # (C,)
    var: np.ndarray                         # (C,)


@dataclass(eq=False)
class Pool2D(Op):
    mode: str                               # "max" | "avg"; padded positions take no part
    size: Pair
    strides: Pair
    padding: str
    pad: Sides


@dataclass(eq=False)
class GlobalPool2D(Op):
    mode: str                               # "max" | "avg"
    keepdims: bool


@dataclass(eq=False)
class Elementwise(Op):
    mode: str                               # "add" | "subtract" | "multiply" | "divide"
    constants: tuple[tuple[int, float], ...] = ()    # scalar operands: (argument position, value)


@dataclass(eq=False)
class Concat(Op):
    axis: int                               # into the unbatched shape, or -1


@dataclass(eq=False)
class Resize(Op):
    size: Pair
    interpolation: str                      # "nearest" | "bilinear"


@dataclass(eq=False)
class Pad(Op):
    pad: Sides                              # zeros


@dataclass(eq=False)
class Crop(Op):
    crop: Sides


@dataclass(eq=False)
class Reshape(Op):
    target: tuple                           # unbatched


@dataclass(eq=False)
class Flatten(Op):
    pass


@dataclass(eq=False)
class Softmax(Op):
    axis: int                               # into the unbatched shape, or -1


@dataclass(eq=False)
class Activation(Op):
    """An activation layer: the body is the identity, ``activation`` does the work."""


@dataclass(eq=False)
class Rescaling(Op):
    scale: Any                              # float or per-channel list, as Keras takes it
    offset: Any


@dataclass(eq=False)
class PReLU(Op):
    alpha: np.ndarray                       # (H, W, C) with shared axes of size 1
    shared_axes: list[int] | None


@dataclass(eq=False)
class SpaceToDepth(Op):
    block: int                              # TensorFlow's depth order


@dataclass(eq=False)
class Identity(Op):
    """Dropout and the other inference-time identities; removed by a pass."""


@dataclass(eq=False)
class Opaque(Op):
    """A weightless layer kerasfold has no rule for (an unrecognised Lambda, say): kept by class
    name and config, never executed."""
    class_name: str
    config: dict[str, Any]


WEIGHTED = (Conv2D, DepthwiseConv2D, Conv2DTranspose, Dense)     # take a fused activation on the device
REWRITTEN = (SeparableConv2D, Identity, Normalization)           # passes always rewrite them: no target sees them


def all_ops() -> list[type]:
    """Every operation class (for the registry checks)."""
    return [cls for cls in globals().values() if isinstance(cls, type) and issubclass(cls, Op) and cls is not Op]
