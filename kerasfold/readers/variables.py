"""Canonical variable names: legacy ``.h5`` files name every weight (``conv2d_1/kernel:0``),
``.keras`` files store them by index in creation order (``kerasfold.kinds.variable_names``).
Both map to the same names, so kinds and passes read weights by name, never by position."""
from __future__ import annotations

# Keras 3 renamed some variables; map them to one canonical name per layer class.
_ALIASES: dict[str, dict[str, str]] = {
    "DepthwiseConv2D": {"kernel": "depthwise_kernel"},
}


def canonical_name(kind: str, stored_name: str) -> str:
    """``'model/conv2d_1/kernel:0'`` -> ``'kernel'`` (with the class's aliases applied)."""
    short = stored_name.rsplit("/", 1)[-1].split(":", 1)[0]
    return _ALIASES.get(kind, {}).get(short, short)
