"""The manifest's activations (FORMAT.md, Keras' names and parameters) as MIL ops.

Each builder takes the MIL builder ``mb``, the value, the activation's spec and an output name,
and follows the reference executor's definition (``kerasfold.verify.reference``): ``relu`` with
Keras 3's ``negative_slope``/``max_value``/``threshold`` rule, ``hard_sigmoid`` as Keras 3's
relu6(x + 3) / 6 (what Keras 3 computes for Keras 2 files too), ``swish`` as ``silu``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...errors import UnsupportedLayer
from .values import Value, keras_axis

SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _f(value: float) -> np.float32:
    return np.float32(value)


def _relu(mb: Any, v: Value, spec: dict[str, Any], name: str) -> Any:
    x = v.var
    slope = float(spec.get("alpha", spec.get("negative_slope", 0.0)) or 0.0)
    max_value = spec.get("max_value")
    threshold = float(spec.get("threshold", 0.0) or 0.0)
    if threshold == 0.0 and slope == 0.0:
        if max_value is None:
            return mb.relu(x=x, name=name)
        if float(max_value) == 6.0:
            return mb.relu6(x=x, name=name)
        return mb.clip(x=x, alpha=_f(0.0), beta=_f(max_value), name=name)
    if threshold == 0.0 and max_value is None:
        return mb.leaky_relu(x=x, alpha=_f(slope), name=name)
    # Keras 3's ReLU.static_call, step by step.
    if threshold != 0.0:
        y = mb.select(cond=mb.greater(x=x, y=_f(threshold)), a=x, b=mb.mul(x=x, y=_f(0.0)))
    else:
        y = mb.relu(x=x)
    if max_value is not None:
        y = mb.clip(x=y, alpha=_f(0.0), beta=_f(max_value))
    if slope == 0.0:
        return mb.identity(x=y, name=name)
    negative = mb.relu(x=mb.sub(x=_f(threshold), y=x)) if threshold != 0.0 else mb.relu(x=mb.mul(x=x, y=_f(-1.0)))
    return mb.sub(x=y, y=mb.mul(x=negative, y=_f(slope)), name=name)


def _log_softmax(mb: Any, v: Value, spec: dict[str, Any], name: str) -> Any:
    axis = keras_axis(-1, v.rank)
    return mb.sub(x=v.var, y=mb.reduce_log_sum_exp(x=v.var, axes=[axis], keep_dims=True), name=name)


Builder = Callable[[Any, Value, dict[str, Any], str], Any]

ACTIVATIONS: dict[str, Builder] = {
    "linear": lambda mb, v, s, n: mb.identity(x=v.var, name=n),
    "relu": _relu,
    "leaky_relu": lambda mb, v, s, n: mb.leaky_relu(x=v.var, alpha=_f(s.get("alpha", 0.2)), name=n),
    "sigmoid": lambda mb, v, s, n: mb.sigmoid(x=v.var, name=n),
    "tanh": lambda mb, v, s, n: mb.tanh(x=v.var, name=n),
    "elu": lambda mb, v, s, n: mb.elu(x=v.var, alpha=_f(s.get("alpha", 1.0)), name=n),
    "selu": lambda mb, v, s, n: mb.mul(x=mb.elu(x=v.var, alpha=_f(SELU_ALPHA)), y=_f(SELU_SCALE), name=n),
    "swish": lambda mb, v, s, n: mb.silu(x=v.var, name=n),
    "hard_sigmoid": lambda mb, v, s, n: mb.sigmoid_hard(x=v.var, alpha=_f(1 / 6), beta=_f(0.5), name=n),
    "hard_swish": lambda mb, v, s, n: mb.mul(x=v.var, y=mb.sigmoid_hard(x=v.var, alpha=_f(1 / 6), beta=_f(0.5)), name=n),
    "softplus": lambda mb, v, s, n: mb.softplus(x=v.var, name=n),
    "softsign": lambda mb, v, s, n: mb.softsign(x=v.var, name=n),
    "softmax": lambda mb, v, s, n: mb.softmax(x=v.var, axis=keras_axis(-1, v.rank), name=n),
    "log_softmax": _log_softmax,
    "gelu": lambda mb, v, s, n: mb.gelu(x=v.var, mode="EXACT", name=n),
    "exponential": lambda mb, v, s, n: mb.exp(x=v.var, name=n),
    "mish": lambda mb, v, s, n: mb.mul(x=v.var, y=mb.tanh(x=mb.softplus(x=v.var)), name=n),
}


def activate(mb: Any, v: Value, spec: dict[str, Any], name: str, layer: str) -> Value:
    """``v`` through ``spec``; a linear activation adds no op unless ``name`` must be given."""
    kind = spec.get("type", "linear")
    builder = ACTIVATIONS.get(kind)
    if builder is None:
        raise UnsupportedLayer(f"expected an activation Core ML can express ({', '.join(ACTIVATIONS)}), "
                               f"received {kind!r}", layer=layer)
    return Value(builder(mb, v, spec, name), v.rank)
