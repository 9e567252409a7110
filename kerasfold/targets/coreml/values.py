"""A value inside the program and the layout it is in.

Core ML's convolutions and pools take NCHW, Keras' tensors are NHWC: every 4-D tensor is kept
NCHW inside the program (transposed once at the inputs and once at the outputs); tensors of any
other rank keep Keras' order. A rank-3 (N, W, C) tensor that a windowed op reads (Conv1D) is a
1 x W image for that op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


@dataclass(frozen=True)
class Value:
    var: Any                       # a MIL Var
    rank: int                      # batch included

    @property
    def nchw(self) -> bool:
        return self.rank == 4


def keras_axis(axis: int, rank: int) -> int:
    """An axis of the unbatched Keras shape (``-1``: the last) as an axis of the program's tensor."""
    batched = axis + 1 if axis >= 0 else rank + axis
    if rank != 4:
        return batched
    return {0: 0, 1: 2, 2: 3, 3: 1}[batched]


def channels_shape(rank: int, channels: int) -> tuple[int, ...]:
    """The shape a per-channel constant takes to broadcast over a value of ``rank``."""
    return (1, channels, 1, 1) if rank == 4 else (1,) * (rank - 1) + (channels,)
