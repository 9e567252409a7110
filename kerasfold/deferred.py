"""Weights not read yet: a plain export leaves a legacy ``.h5``'s kernels in the file until the
target writes them, one layer at a time, so its peak memory is a layer, not the model.

A :class:`Deferred` knows its shape and dtype now and its values on demand. It records what the
kinds, the passes and the layout do to it: view steps (reshape, transpose) and a per-channel
scale in float64 (a BatchNormalization fold, :func:`multiply64`). The MPS target then reads,
folds, lays out and rounds in one tiled pass (:meth:`Deferred.parts`, ``targets/mps/strips``);
``np.asarray(d)`` is what the same steps give on the read array, bit for bit, its checks run.

Checks on the values (finite weights, a fold that stays within float32) are recorded with the
step they apply after, and run on demand (:meth:`Deferred.run_checks`): the target runs them when
the values it wrote are not all finite, so a good export never computes the values twice.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import numpy as np

Check = Callable[[np.ndarray], None]


@dataclass(frozen=True, eq=False)
class Deferred:
    read: Callable[[], np.ndarray]            # the stored array, as the file holds it
    shape: tuple[int, ...]
    dtype: np.dtype
    steps: tuple[tuple[str, Any], ...] = ()   # ("reshape", shape) | ("transpose", axes) | ("scale", factor)
    checks: tuple[tuple[int, Check], ...] = ()  # (steps done before it, check on the values then)
    read_into: Callable[[np.ndarray], None] | None = None   # the stored array into a given one
    stored: tuple[tuple[int, ...], np.dtype] | None = None  # its shape and dtype (set at creation)
    through_library: bool = False              # read through h5py, not as the file's bytes: a forked
                                               # process may read it only after the file's walk
    mapped: Callable[[], np.ndarray | None] | None = None   # the stored array without a copy, where
                                                            # this process may map the file (else None)

    def __post_init__(self) -> None:
        if self.stored is None:
            object.__setattr__(self, "stored", (tuple(self.shape), np.dtype(self.dtype)))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def reshape(self, *shape: Any) -> Deferred:
        new = tuple(int(d) for d in (shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape))
        if -1 in new:
            known = int(np.prod([d for d in new if d != -1], dtype=np.int64))
            new = tuple(self.size // known if d == -1 else d for d in new)
        if int(np.prod(new, dtype=np.int64)) != self.size:
            raise ValueError(f"cannot reshape {self.shape} into {new}")
        return replace(self, shape=new, steps=(*self.steps, ("reshape", new)))

    def transpose(self, *axes: Any) -> Deferred:
        order = tuple(axes[0]) if len(axes) == 1 and not isinstance(axes[0], int) else tuple(axes)
        order = order or tuple(reversed(range(self.ndim)))
        return replace(self, shape=tuple(self.shape[a] for a in order), steps=(*self.steps, ("transpose", order)))

    @property
    def T(self) -> Deferred:                                              # noqa: N802 (numpy's name)
        return self.transpose()

    def __getitem__(self, key: Any) -> Deferred:
        if key is None:                                                   # x[None]: a leading axis
            return self.reshape((1, *self.shape))
        raise TypeError(f"a deferred weight takes only [None], received [{key!r}]")

    def scaled(self, factor: np.ndarray) -> Deferred:
        """Times ``factor`` (broadcastable to the shape), in float64: ``np.multiply(x, factor, dtype=float64)``."""
        if np.broadcast_shapes(np.shape(factor), self.shape) != self.shape:
            raise ValueError(f"expected a factor broadcastable to {self.shape}, received shape {np.shape(factor)}")
        return replace(self, dtype=np.dtype(np.float64), steps=(*self.steps, ("scale", np.asarray(factor))))

    def with_check(self, check: Check) -> Deferred:
        """The same weight, with ``check`` to run on its values as they are now."""
        return replace(self, checks=(*self.checks, (len(self.steps), check)))

    def _apply(self, value: np.ndarray, factor: np.ndarray | None, step: tuple[str, Any]
               ) -> tuple[np.ndarray, np.ndarray | None]:
        kind, arg = step
        if kind == "reshape":
            return value.reshape(arg), None if factor is None else factor.reshape(arg)
        if kind == "transpose":
            return value.transpose(arg), None if factor is None else factor.transpose(arg)
        if factor is None:                                                # the first scale stays apart
            return value, np.broadcast_to(arg, value.shape)
        return np.multiply(value, factor, dtype=np.float64), np.broadcast_to(arg, value.shape)

    def parts(self, scratch: Scratch | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(values, factor): views whose float64 product is the weight (factor None: the values
        are the weight). The stored array is a view of the mapped file where ``mapped`` gives one;
        else reading it is the only full-size allocation (into ``scratch``'s memory when given),
        unless the steps hold two scales (then the first product is computed)."""
        value = self.mapped() if self.mapped is not None else None
        if value is None and scratch is not None and self.read_into is not None:
            value = scratch.array(*self.stored)
            self.read_into(value)
        elif value is None:
            value = self.read()
        factor = None
        for step in self.steps:
            value, factor = self._apply(value, factor, step)
        return value, factor

    def run_checks(self) -> np.ndarray:
        """Compute the values step by step, running each check where it was recorded; the values."""
        value = self.read()
        for done in range(len(self.steps) + 1):
            for at, check in self.checks:
                if at == done:
                    check(value)
            if done < len(self.steps):
                kind, arg = self.steps[done]
                with np.errstate(over="ignore", invalid="ignore"):    # what is wrong, a check says
                    value = (np.multiply(value, arg, dtype=np.float64) if kind == "scale"
                             else self._apply(value, None, self.steps[done])[0])
        return value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The values, every recorded check run on the way (what the eager export checked)."""
        return np.asarray(self.run_checks(), dtype=dtype)

    def astype(self, dtype: Any) -> np.ndarray:
        return np.asarray(self).astype(dtype)


class Scratch:
    """One block of memory reused for every stored array read in turn (no fresh pages to fault
    in for each layer): :meth:`array` is valid until the next call. Sized at once for the
    largest of ``weights`` (:func:`stored_nbytes`), it is allocated once: growing it layer by
    layer faulted in fresh pages each time (62.5 MB instead of 37.7 on tiny-yolo-voc)."""

    def __init__(self, weights: Iterable[Any] = ()) -> None:
        self._memory = np.empty(max(map(stored_nbytes, weights), default=0), np.uint8)

    def array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self._memory.size < nbytes:
            self._memory = np.empty(nbytes, np.uint8)
        return self._memory[:nbytes].view(dtype).reshape(shape)


def stored_nbytes(weight: Any) -> int:
    """How many bytes a deferred weight reads into a :class:`Scratch` (0 for anything else)."""
    if not isinstance(weight, Deferred) or weight.read_into is None:
        return 0
    shape, dtype = weight.stored
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def multiply64(array: np.ndarray | Deferred, factor: np.ndarray) -> np.ndarray | Deferred:
    """``array * factor`` in float64 (one pass, no float64 copy of ``array`` first); deferred
    for a deferred ``array``."""
    if isinstance(array, Deferred):
        return array.scaled(factor)
    return np.multiply(array, factor, dtype=np.float64)


def checked(array: Any, check: Check) -> Any:
    """Run ``check`` on ``array`` now, or record it on a deferred weight; the (possibly new) array."""
    if isinstance(array, Deferred):
        return array.with_check(check)
    check(array)
    return array
