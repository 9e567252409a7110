"""One tensor's file bytes, computed when it is written: an array as it is, or a deferred weight
(``kerasfold.deferred``) read, folded, laid out and rounded in one tiled pass.

A deferred weight's checks (finite weights, a fold within float32, float16's range) run only when
the bytes it gives are not all finite: a finite result means every check passes. Then the same
errors are raised, in the same order, as an export that computed the values first.
"""
from __future__ import annotations

import numpy as np

from ...deferred import Deferred
from .float16 import HalfStats, half_stats
from .strips import contiguous, scaled_contiguous

_HALF_EXPONENT = 0x7C00          # float16 bits: an exponent field of zero means zero or subnormal
_HALF_MAGNITUDE = 0x7FFF


def file_array(array: np.ndarray | Deferred, dtype: str, layer: str) -> tuple[np.ndarray, HalfStats | None]:
    """(C-contiguous little-endian array of ``dtype``, what float16 did to it: None for an array
    given as it is, whose stats the entry already holds)."""
    dtype_le = np.dtype(dtype).newbyteorder("<")
    if not isinstance(array, Deferred):
        return contiguous(array, dtype_le), None
    value, factor = array.parts()
    with np.errstate(over="ignore", invalid="ignore"):   # beyond the range: the checks below say so
        if factor is None:
            out = contiguous(value, dtype_le)
            nonzero = int(np.count_nonzero(value)) if dtype_le.itemsize == 2 else 0
        else:
            out, nonzero = scaled_contiguous(value, factor, dtype_le, count=dtype_le.itemsize == 2)
    del value, factor                                   # the stored array: freed before the next layer
    if not np.isfinite(out).all():
        values = array.run_checks()                     # raises what the eager export raised
        if dtype_le.itemsize == 2:
            half_stats(layer, values)                   # raises when float16 overflows
    if dtype_le.itemsize != 2:
        return out, None
    bits = out.view(np.uint16) & _HALF_MAGNITUDE
    subnormal = int(np.count_nonzero((bits != 0) & ((bits & _HALF_EXPONENT) == 0)))
    return out, HalfStats(layer, int(out.size), nonzero - int(np.count_nonzero(bits)), subnormal)
