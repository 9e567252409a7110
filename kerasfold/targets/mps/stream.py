"""One tensor's file bytes, computed as they are written: an array as it is, or a deferred weight
(``kerasfold.deferred``) read, folded, laid out and rounded in one tiled pass, block by block.

A deferred weight's checks (finite weights, a fold within float32, float16's range) run only when
a block is not all finite: a finite result means every check passes. Then the same errors are
raised, in the same order, as an export that computed the values first.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ...deferred import Deferred, Scratch
from .float16 import HalfStats, half_stats
from .strips import Memory, contiguous, slabs

_HALF_EXPONENT = 0x7C00          # float16 exponent bits: none set, zero or subnormal; all set, inf or NaN
_HALF_MAGNITUDE = 0x7FFF


def _finite(block: np.ndarray, half_bits: np.ndarray | None) -> bool:
    """No NaN or infinity in ``block``; a float16 block by its bits (its exponent field all ones
    means NaN or infinity), 10x faster than ``np.isfinite`` on halves."""
    if half_bits is None:
        return bool(np.isfinite(block).all())
    return half_bits.size == 0 or int(half_bits.max()) < _HALF_EXPONENT


class FileTensor:
    """The bytes of ``array`` in ``dtype`` (little-endian, C order) as :meth:`blocks`; for a
    deferred float16 weight, :attr:`half` holds what float16 did to it once every block is out
    (an array given as it is has its stats in its entry already). A deferred weight is read into
    ``scratch``'s memory when given (the blocks never point into it), and its blocks are computed
    into ``memory(shape, dtype)`` when given (``TensorFiles.memory``: reused, not fresh)."""

    def __init__(self, array: np.ndarray | Deferred, dtype: str, layer: str, scratch: Scratch | None = None,
                 memory: Memory | None = None):
        self.array, self.layer, self.scratch, self.memory = array, layer, scratch, memory
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.shape = tuple(array.shape)
        self.half: HalfStats | None = None

    def blocks(self) -> Iterator[np.ndarray]:
        if not isinstance(self.array, Deferred):
            yield contiguous(self.array, self.dtype)
            return
        half = self.dtype.itemsize == 2
        value, factor = self.array.parts(self.scratch)
        nonzero = kept = subnormal = 0
        checked = False
        with np.errstate(over="ignore", invalid="ignore"):   # beyond the range: the checks say so
            for block, count in slabs(value, self.dtype, factor, count=half, memory=self.memory):
                if np.may_share_memory(block, value):        # the read itself (no layout, no cast):
                    block = block.copy()                     # the next read reuses its memory
                bits = block.view(np.uint16) & _HALF_MAGNITUDE if half else None
                if not checked and not _finite(block, bits):
                    self._raise()
                    checked = True                           # nothing raised: as the eager export
                if bits is not None:
                    nonzero += count
                    kept += int(np.count_nonzero(bits))
                    subnormal += int(np.count_nonzero((bits != 0) & ((bits & _HALF_EXPONENT) == 0)))
                yield block
        if half:
            self.half = HalfStats(self.layer, int(np.prod(self.shape, dtype=np.int64)), nonzero - kept, subnormal)

    def _raise(self) -> None:
        """The deferred weight's checks on its values, then float16's range: what the eager export raised."""
        values = self.array.run_checks()
        if self.dtype.itemsize == 2:
            half_stats(self.layer, values)
