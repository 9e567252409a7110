"""Activation layers (LeakyReLU, ReLU, ELU, Activation), Softmax and PReLU, and the manifest's
activation vocabulary: Keras names, parameters rounded to float32 as the device sees them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import ops
from ..errors import ConfigError
from .base import Fields, Kind, index_axis, same

# Keras activation names accepted as-is (aliases map to the Keras name).
NAMES = {"linear", "relu", "sigmoid", "tanh", "elu", "selu", "swish", "hard_sigmoid", "softplus",
         "softsign", "softmax", "gelu", "exponential", "relu6", "leaky_relu", "silu", "mish",
         "hard_swish", "hard_silu", "log_softmax"}
ALIASES = {"silu": "swish", "hard_silu": "hard_swish", "relu6": "relu"}


def _f32(value: Any) -> float:
    """A parameter as the device sees it: rounded to float32, printed short (0.1, not 0.1000000015)."""
    return float(str(np.float32(value)))


def from_name(name: Any) -> dict[str, Any]:
    """``"relu"`` -> ``{"type": "relu"}``; ReLU6 is ``relu`` with ``max_value`` 6."""
    if isinstance(name, dict):              # Keras 3 may serialise a registered function
        name = name.get("config", name.get("class_name"))
    if name is None:
        return ops.linear()
    if not isinstance(name, str) or name not in NAMES:
        raise ConfigError(f"expected a Keras activation name, received {name!r}"[:120])
    kind = ALIASES.get(name, name)
    out: dict[str, Any] = {"type": kind}
    if name == "relu6":
        out["max_value"] = 6.0
    if name == "leaky_relu":
        out["alpha"] = 0.2                  # keras.activations.leaky_relu's default slope
    return out


def is_linear(activation: dict[str, Any]) -> bool:
    return activation.get("type") == "linear"


@dataclass(frozen=True)
class ActivationParams:
    spec: dict[str, Any]


def _leaky(f: Fields) -> ActivationParams:
    key = "negative_slope" if f.raw.get("negative_slope") is not None else "alpha"
    return ActivationParams({"type": "leaky_relu", "alpha": _f32(f.float(key, 0.3))})


def _elu(f: Fields) -> ActivationParams:
    return ActivationParams({"type": "elu", "alpha": _f32(f.float("alpha", 1.0))})


def _relu(f: Fields) -> ActivationParams:
    out: dict[str, Any] = {"type": "relu"}        # Keras' relu(x, alpha, max_value, threshold)
    if f.float("negative_slope", 0.0):
        out["alpha"] = _f32(f.float("negative_slope"))
    if f.raw.get("max_value") is not None:
        out["max_value"] = _f32(f.float("max_value", lo=0.0))
    if f.float("threshold", 0.0):
        out["threshold"] = _f32(f.float("threshold"))
    return ActivationParams(out)


def _activation(f: Fields) -> ActivationParams:
    return ActivationParams(from_name(f.raw.get("activation")))


def _lower(p: ActivationParams, w: Any, shapes: list) -> ops.Op:
    return ops.Activation(activation=dict(p.spec))


ACTIVATION_CLASSES = ("LeakyReLU", "ReLU", "Activation", "ELU")
LEAKY_RELU = Kind(("LeakyReLU",), _leaky, same, _lower)
RELU = Kind(("ReLU",), _relu, same, _lower)
ELU = Kind(("ELU",), _elu, same, _lower)
ACTIVATION = Kind(("Activation",), _activation, same, _lower)


@dataclass(frozen=True)
class SoftmaxParams:
    axis: int


SOFTMAX = Kind(("Softmax",), lambda f: SoftmaxParams(f.axis()), same,
               lambda p, w, shapes: ops.Softmax(axis=index_axis(p.axis, len(shapes[0]))))


@dataclass(frozen=True)
class PReLUParams:
    shared_axes: list[int] | None


def _prelu(f: Fields) -> PReLUParams:
    axes = f.raw.get("shared_axes")
    return PReLUParams(None if axes is None else list(f.ints("shared_axes", lo=1)))


PRELU = Kind(("PReLU",), _prelu, same,
             lambda p, w, shapes: ops.PReLU(alpha=w["alpha"], shared_axes=p.shared_axes),
             variables=lambda p, cin: {"alpha": (None, None, None)})

KINDS = (LEAKY_RELU, RELU, ELU, ACTIVATION, SOFTMAX, PRELU)
