"""Keras activations -> the manifest's ``activation`` dicts (Keras names, float32-exact params)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ExportError

ACTIVATION_LAYERS = ("LeakyReLU", "ReLU", "Activation", "ELU")

# Keras activation names accepted as-is (aliases map to the Keras name).
_NAMES = {"linear", "relu", "sigmoid", "tanh", "elu", "selu", "swish", "hard_sigmoid", "softplus",
          "softsign", "softmax", "gelu", "exponential", "relu6", "leaky_relu", "silu", "mish",
          "hard_swish", "hard_silu", "log_softmax"}
_ALIASES = {"silu": "swish", "hard_silu": "hard_swish", "relu6": "relu"}


def _f32(value: Any) -> float:
    """A parameter as the device sees it: rounded to float32, printed short (0.1, not 0.1000000015)."""
    return float(str(np.float32(value)))


def from_name(name: Any, layer: str | None = None) -> dict[str, Any]:
    """``"relu"`` -> ``{"type": "relu"}``; ReLU6 is ``relu`` with ``max_value`` 6."""
    if isinstance(name, dict):              # Keras 3 may serialise a registered function
        name = name.get("config", name.get("class_name"))
    if name is None:
        return {"type": "linear"}
    if not isinstance(name, str) or name not in _NAMES:
        raise ExportError(f"expected a Keras activation name, received {name!r}", layer=layer)
    kind = _ALIASES.get(name, name)
    out: dict[str, Any] = {"type": kind}
    if name == "relu6":
        out["max_value"] = 6.0
    if name == "leaky_relu":
        out["alpha"] = 0.2                  # keras.activations.leaky_relu's default slope
    return out


def from_layer(kind: str, config: dict[str, Any], layer: str | None = None) -> dict[str, Any]:
    """The activation computed by an activation layer (LeakyReLU, ReLU, Activation, ELU)."""
    if kind == "LeakyReLU":
        slope = config.get("negative_slope", config.get("alpha", 0.3))
        return {"type": "leaky_relu", "alpha": _f32(slope)}
    if kind == "ELU":
        return {"type": "elu", "alpha": _f32(config.get("alpha", 1.0))}
    if kind == "Activation":
        return from_name(config.get("activation"), layer)
    if kind == "ReLU":
        out: dict[str, Any] = {"type": "relu"}    # Keras' relu(x, alpha, max_value, threshold)
        if config.get("negative_slope"):
            out["alpha"] = _f32(config["negative_slope"])
        if config.get("max_value") is not None:
            out["max_value"] = _f32(config["max_value"])
        if config.get("threshold"):
            out["threshold"] = _f32(config["threshold"])
        return out
    raise ExportError(f"expected one of {ACTIVATION_LAYERS}, received {kind}", layer=layer)


def is_linear(activation: dict[str, Any]) -> bool:
    return activation.get("type") == "linear"
