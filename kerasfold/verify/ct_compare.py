"""Two ML Programs of the same Keras model side by side: kerasfold's and ``coremltools.convert``'s.

Both are read back from their ``.mlpackage`` (:func:`.mlprogram.load_program`), after coremltools'
pass pipeline, so what is compared is what Core ML would run.

- :func:`op_counts`: op types of the main function, ``const`` excluded;
- :func:`layers`: the op sequence without layout plumbing (``const``, ``identity``, ``cast``,
  ``transpose``), the part that can be read as the network's layers;
- :func:`conv_like`: the convolution-like ops (``conv``, ``conv_transpose``, ``linear``, and a
  ``matmul`` by a constant, which coremltools writes for a Dense whose bias is all zeros) in
  program order with their weight tensors; "the same graph up to fusion" means first of all that
  both programs have the same sequence of these, with the same weight shapes (:func:`signature`);
- :func:`ulps` / :func:`weight_distances`: how far apart two float32 weight tensors are, in units in
  the last place, per tensor.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

CONV_LIKE = ("conv", "conv_transpose", "linear")
PLUMBING = ("const", "identity", "cast", "transpose")


def op_counts(program: Any) -> Counter:
    return Counter(op.op_type for op in program.main.operations if op.op_type != "const")


def _constant_matmul(op: Any) -> np.ndarray | None:
    """A ``matmul`` x·W by a constant W, as a linear layer's weight (out, in); else None."""
    if op.op_type != "matmul" or op.inputs["y"].val is None or op.inputs["y"].val.ndim != 2:
        return None
    transposed = lambda name: op.inputs.get(name) is not None and bool(op.inputs[name].val)  # noqa: E731
    if transposed("transpose_x"):
        return None
    w = np.asarray(op.inputs["y"].val)
    return w if transposed("transpose_y") else w.T


def _kind(op: Any) -> str:
    return "linear" if _constant_matmul(op) is not None else op.op_type


def layers(program: Any) -> list[str]:
    """Op types without layout plumbing, a ``matmul`` by a constant named ``linear``."""
    return [_kind(op) for op in program.main.operations if op.op_type not in PLUMBING]


def conv_like(program: Any) -> list[tuple[str, str, np.ndarray]]:
    """(op type, op name, weight) of every convolution-like op, in program order; weights as MIL
    lays them out (conv: (Cout, Cin/groups, kh, kw); linear: (out, in))."""
    out = []
    for op in program.main.operations:
        if op.op_type in CONV_LIKE:
            out.append((op.op_type, op.name, np.asarray(op.inputs["weight"].val)))
        elif _kind(op) == "linear":
            out.append(("linear", op.name, _constant_matmul(op)))
    return out


def signature(program: Any) -> list[tuple[str, tuple[int, ...]]]:
    """(op type, weight shape) of every convolution-like op, in program order."""
    return [(kind, w.shape) for kind, _, w in conv_like(program)]


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise distance in float32 ulps: how many float32 steps lead from a to b (0: same value).

    Through the ordered-integer mapping: a float32's bits as an integer order the non-negative
    floats; a negative float maps to minus its magnitude's bits, so the mapping is monotonic over
    all finite floats, +0 and -0 both map to 0, and the distance across zero counts both sides.
    """
    def ordered(x: np.ndarray) -> np.ndarray:
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.int64)
        magnitude = bits & 0x7FFFFFFF
        return np.where(bits >> 31, -magnitude, magnitude)
    if np.shape(a) != np.shape(b):
        raise ValueError(f"expected tensors of the same shape, received {np.shape(a)} and {np.shape(b)}")
    return np.abs(ordered(a) - ordered(b))


@dataclass(frozen=True)
class Distance:
    """One weight tensor of program A against its counterpart in program B."""
    kind: str
    name: str                    # the op's name in program A
    shape: tuple[int, ...]
    max_ulps: int
    differ: int                  # how many values are not bit-identical
    size: int

    @property
    def fraction(self) -> float:
        return self.differ / self.size


def weight_distances(a: Any, b: Any) -> list[Distance]:
    """Per convolution-like op (matched by order; the signatures must be equal), the ulp distance
    between A's weights and B's."""
    if signature(a) != signature(b):
        raise ValueError(f"expected the same convolution-like ops with the same weight shapes, received "
                         f"{signature(a)} and {signature(b)}")
    out = []
    for (kind, name, wa), (_, _, wb) in zip(conv_like(a), conv_like(b)):
        d = ulps(wa, wb)
        out.append(Distance(kind, name, wa.shape, int(d.max(initial=0)), int(np.count_nonzero(d)), d.size))
    return out
