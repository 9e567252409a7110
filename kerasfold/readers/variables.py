"""Canonical variable names of the layers that carry weights.

Legacy ``.h5`` files name every weight (``conv2d_1/kernel:0``); ``.keras`` files store them by
index (``vars/0``, ``vars/1``) in the order the layer created them. Both are mapped to the
same canonical names, so passes read weights by name and never by position.
"""
from __future__ import annotations

from typing import Any

from ..errors import ExportError

# Keras 3 renamed some variables; map them to one canonical name per layer class.
_ALIASES: dict[str, dict[str, str]] = {
    "DepthwiseConv2D": {"kernel": "depthwise_kernel"},
}


def _bn(config: dict[str, Any]) -> list[str]:
    names = ["gamma"] if config.get("scale", True) else []
    names += ["beta"] if config.get("center", True) else []
    return names + ["moving_mean", "moving_variance"]


def _kernel_bias(kernel: str):
    def names(config: dict[str, Any]) -> list[str]:
        return [kernel] + (["bias"] if config.get("use_bias", True) else [])
    return names


# Variable creation order per class, as Keras builds the layer.
_ORDER = {
    "Conv2D": _kernel_bias("kernel"),
    "Conv2DTranspose": _kernel_bias("kernel"),
    "Dense": _kernel_bias("kernel"),
    "DepthwiseConv2D": _kernel_bias("depthwise_kernel"),
    "SeparableConv2D": lambda c: ["depthwise_kernel", "pointwise_kernel"]
    + (["bias"] if c.get("use_bias", True) else []),
    "BatchNormalization": _bn,
    "PReLU": lambda c: ["alpha"],
    "Normalization": lambda c: [] if c.get("mean") is not None else ["mean", "variance", "count"],
}


def canonical_name(kind: str, stored_name: str) -> str:
    """``'model/conv2d_1/kernel:0'`` -> ``'kernel'`` (with the class's aliases applied)."""
    short = stored_name.rsplit("/", 1)[-1].split(":", 1)[0]
    return _ALIASES.get(kind, {}).get(short, short)


def ordered_names(kind: str, config: dict[str, Any], count: int) -> list[str]:
    """Names for ``count`` unnamed variables of a ``kind`` layer, in creation order.

    Unknown classes get ``var0``, ``var1``, ...: the exporter rejects them later with a
    message listing what it supports."""
    order = _ORDER.get(kind)
    if order is None:
        return [f"var{i}" for i in range(count)]
    names = order(config)
    if len(names) != count:
        raise ExportError(f"expected {len(names)} weights {names} for a {kind}, received {count}")
    return names
