"""What every kind module builds on: :class:`Kind`, validated config fields, geometry.

A kind parses a layer's config once into a typed params dataclass (:class:`Fields` validates
type, range and allowed values; a bad value is a :class:`ConfigError` naming the field), states
its variables with their expected shapes, its shape rule, and its lowering into a typed
operation (``kerasfold.ops``), where explicit padding is computed once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, ExportError
from ..ops import Op

Shape = tuple                                   # unbatched, channels last; None where unknown
Weights = dict[str, np.ndarray]
_MISSING = object()
# The largest values manifest.schema.json admits: a window (kernel, stride, dilation, pool, pad) of
# 65535 pixels, a size (channels, units, a tensor dimension) below 2^31. Far beyond any real network;
# a config asking for more is bad input, refused here rather than written into an invalid manifest.
MAX_WINDOW = 65535
MAX_SIZE = 2 ** 31 - 1


def no_variables(params: Any, cin: int | None) -> dict[str, tuple | None]:
    return {}


@dataclass(frozen=True)
class Kind:
    """One Keras layer family. ``variables(params)`` gives the expected shape of each variable
    in creation order (a ``.keras`` file stores them by index), with ``cin`` the input channels
    (None where unknown); ``shape`` and ``lower`` see the input shapes."""
    classes: tuple[str, ...]
    parse: Callable[["Fields"], Any]
    shape: Callable[[Any, list[Shape]], Shape]
    lower: Callable[[Any, Weights, list[Shape]], Op]
    variables: Callable[[Any, int | None], dict[str, tuple | None]] = no_variables


class Fields:
    """Typed access to one layer's raw config; every getter validates and names the field."""

    def __init__(self, raw: Any, class_name: str = "", *, layer: str = "",
                 constants: tuple[tuple[int, float], ...] = ()):
        self.layer = layer                          # the layer's path (nested models: "outer/inner")
        self.constants = constants                  # scalar operands of the call (Keras 3 op nodes)
        if not isinstance(raw, dict):
            raise ConfigError(f"expected the {class_name or 'layer'} config as an object, received "
                              f"{type(raw).__name__}")
        self.raw = raw
        self.class_name = class_name

    def _bad(self, key: str, expected: str, value: Any) -> ConfigError:
        shown = repr(value)
        return ConfigError(f"expected {key} {expected}, received {shown[:60]}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.raw and self.raw[key] is not None:
            return self.raw[key]
        if default is _MISSING:
            raise ConfigError(f"expected {key} in the {self.class_name} config, received none")
        return default

    def int(self, key: str, default: Any = _MISSING, lo: int | None = 1) -> int:
        value = self.get(key, default)
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        if not (_is_int(value) or (isinstance(value, float) and value.is_integer())) \
                or (lo is not None and value < lo) or abs(value) > MAX_SIZE:
            raise self._bad(key, "as an integer" + (f" >= {lo}" if lo is not None else "")
                            + f" and <= {MAX_SIZE}", value)
        return int(value)

    def pair(self, key: str, default: Any = _MISSING, lo: int = 1) -> tuple[int, int]:
        """Keras' ``int or (int, int)``."""
        value = self.get(key, default)
        items = list(value) if isinstance(value, (list, tuple)) else [value, value]
        if len(items) == 1:
            items = items * 2
        if len(items) != 2 or not all(_is_int(v) and lo <= v <= MAX_WINDOW for v in items):
            raise self._bad(key, f"as an integer in {lo}..{MAX_WINDOW} or a pair of them", value)
        return (int(items[0]), int(items[1]))

    def ints(self, key: str, default: Any = _MISSING, lo: int | None = None) -> tuple[int, ...]:
        value = self.get(key, default)
        if not isinstance(value, (list, tuple)) or not all(_is_int(v) and (lo is None or v >= lo)
                                                           for v in value):
            raise self._bad(key, "as a list of integers", value)
        return tuple(int(v) for v in value)

    def choice(self, key: str, allowed: Sequence[str], default: Any = _MISSING) -> str:
        value = self.get(key, default)
        text = value.lower() if isinstance(value, str) else value
        if text not in allowed:
            raise self._bad(key, f"in {tuple(allowed)}", value)
        return text

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool) and value not in (0, 1):
            raise self._bad(key, "as true or false", value)
        return bool(value)

    def float(self, key: str, default: Any = _MISSING, lo: float | None = None) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (lo is not None and value < lo):
            raise self._bad(key, "as a finite number" + (f" >= {lo:g}" if lo is not None else ""), value)
        return float(value)

    def sides(self, key: str, default: Any) -> tuple[int, int, int, int]:
        """Keras' ``int | (sym_h, sym_w) | ((top, bottom), (left, right))`` -> (top, bottom, left, right)."""
        value = self.get(key, default)
        if _is_int(value):
            out = [value] * 4
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            out = []
            for v in value:
                if _is_int(v):
                    out += [v, v]
                elif isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) for x in v):
                    out += list(v)
                else:
                    raise self._bad(key, "as an int, a pair, or a pair of pairs", value)
        else:
            raise self._bad(key, "as an int, a pair, or a pair of pairs", value)
        if any(v < 0 or v > MAX_WINDOW for v in out):
            raise self._bad(key, f"as sizes in 0..{MAX_WINDOW}", value)
        return tuple(int(v) for v in out)

    def axis(self, key: str = "axis", default: Any = -1) -> int:
        value = self.get(key, default)
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        if not _is_int(value):
            raise self._bad(key, "as one integer axis", value)
        return int(value)


def pair(value: Any) -> tuple[int, int]:
    """Keras' ``int or (int, int)`` as a pair (unvalidated: for values already parsed)."""
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def index_axis(axis: int, rank: int) -> int:
    """A Keras axis (batch included, may be negative) as an index into the unbatched shape."""
    k = axis + rank + 1 if axis < 0 else axis
    if not 1 <= k <= rank:
        raise ExportError(f"expected an axis within a rank-{rank} tensor, received {axis}")
    return k - 1


def axis_pad(size: int | None, k: int, stride: int, dilation: int,
             padding: str) -> tuple[int | None, int | None, int | None]:
    """(before, after, out) along one spatial axis (TensorFlow's SAME rule: the odd pixel at the
    bottom/right); None where the input size is unknown and the result depends on it."""
    effective = (k - 1) * dilation + 1
    if effective > MAX_WINDOW:
        raise ExportError(f"expected a window of at most {MAX_WINDOW} pixels, received a kernel of {k} "
                          f"dilated by {dilation} ({effective} pixels)")
    if padding == "valid":
        return 0, 0, None if size is None else (size - effective) // stride + 1
    if padding == "causal":                     # Conv1D: everything before
        return effective - 1, 0, None if size is None else (size - 1) // stride + 1
    if size is None:
        if stride != 1:
            return None, None, None
        total = effective - 1
        return total // 2, total - total // 2, None
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2, out


def image(shape: Shape | None, what: str) -> tuple:
    """(H, W, C) of a windowed op's input; a rank-2 (W, C) tensor is a 1 x W image."""
    if shape is None:
        raise ExportError(f"expected a known input shape for the {what}, received an unknown one "
                          "(the layer before it has no shape rule)")
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) != 3:
        raise ExportError(f"expected a (H, W, C) input for the {what}, received shape {tuple(shape)}")
    return tuple(shape)


def window(in_shape: Shape | None, kernel: tuple[int, int], strides: tuple[int, int],
           dilation: tuple[int, int], padding: str, what: str) -> tuple[tuple, tuple]:
    """(pad [top, bottom, left, right], output (H, W)) of a sliding window."""
    h_in, w_in, _ = image(in_shape, what)
    top, bottom, h = axis_pad(h_in, kernel[0], strides[0], dilation[0], padding)
    left, right, w = axis_pad(w_in, kernel[1], strides[1], dilation[1], padding)
    if (h is not None and h < 1) or (w is not None and w < 1):
        raise ExportError(f"expected the {kernel[0]}x{kernel[1]} window to fit the {h_in}x{w_in} "
                          "input, received an empty output")
    return (top, bottom, left, right), (h, w)


def spatial(in_shape: Shape, h: int | None, w: int | None, channels: int | None) -> Shape:
    """An output shape of the input's rank: (H, W, C), or (W, C) for a rank-2 input."""
    return (w, channels) if len(in_shape) == 2 else (h, w, channels)


def same(params: Any, shapes: list[Shape]) -> Shape:
    return shapes[0]
