"""Float16 export checks: what half precision does to each layer's folded weights.

IEEE half: largest finite 65504, smallest normal 2^-14 ≈ 6.1e-5, smallest subnormal 2^-24 ≈ 6e-8.
A folded weight beyond the range fails the export (a tiny σ² makes s = γ/√(σ²+ε) huge; no other
converter checks this); weights that flush to zero or land in the subnormal range (lost precision,
and slow or flushed on some GPUs) are counted per layer and reported.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ExportError

HALF_MAX = float(np.finfo(np.float16).max)          # 65504
HALF_TINY = float(np.finfo(np.float16).tiny)        # 2^-14, smallest normal


@dataclass(frozen=True)
class HalfStats:
    layer: str
    count: int           # weights in the layer
    flushed: int         # non-zero in float32, zero in float16
    subnormal: int       # non-zero and below the smallest normal in float16

    def line(self) -> str:
        return (f"layer '{self.layer}': in float16, {self.flushed} of {self.count} weights flush to "
                f"zero and {self.subnormal} are subnormal")


def half_stats(layer: str, w: np.ndarray) -> HalfStats:
    """One layer's weights (float64 or float32) rounded to float16 once: raise where that
    overflows, count what underflows."""
    largest = float(np.max(np.abs(w))) if w.size else 0.0
    with np.errstate(over="ignore"):
        half = w.astype(np.float16)
    if np.isinf(half).any():
        raise ExportError(f"expected folded weights within float16's range (|w| <= {HALF_MAX:g}), "
                          f"received largest |w| = {largest:.6g}; export as float32 or check the "
                          "BatchNormalization variance", layer=layer)
    flushed = int(np.count_nonzero((w != 0) & (half == 0)))
    subnormal = int(np.count_nonzero((half != 0) & (np.abs(half) < HALF_TINY)))
    return HalfStats(layer, int(w.size), flushed, subnormal)
