"""Layers with several inputs: Add, Subtract, Multiply, Divide (with broadcasting and the scalar
operands of Keras 3 ops recorded as nodes, ``x + 3.0``), Concatenate."""
from __future__ import annotations

from dataclasses import dataclass

from .. import ops
from ..errors import ExportError
from .base import Fields, Kind, Shape, Weights, index_axis


@dataclass(frozen=True)
class ElementwiseParams:
    mode: str
    constants: tuple[tuple[int, float], ...]


def _broadcast(p: ElementwiseParams, shapes: list[Shape]) -> Shape:
    """numpy broadcasting (a squeeze-excite (1, 1, C) scale, say)."""
    if any(s is None for s in shapes):
        raise ExportError("expected known input shapes, received an unknown one")
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise ExportError(f"expected inputs that broadcast to one shape, received {shapes}")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _elementwise(mode: str, *classes: str) -> Kind:
    return Kind(classes, lambda f: ElementwiseParams(mode, f.constants), _broadcast,
                lambda p, w, shapes: ops.Elementwise(mode=p.mode, constants=p.constants))


ADD = _elementwise("add", "Add")
SUBTRACT = _elementwise("subtract", "Subtract")
MULTIPLY = _elementwise("multiply", "Multiply")
DIVIDE = _elementwise("divide", "Divide", "TrueDivide")


@dataclass(frozen=True)
class ConcatParams:
    axis: int


def _concat_shape(p: ConcatParams, shapes: list[Shape]) -> Shape:
    if any(s is None for s in shapes):
        raise ExportError("expected known input shapes, received an unknown one")
    axis = index_axis(p.axis, len(shapes[0]))
    rest = [tuple(d for i, d in enumerate(s) if i != axis) for s in shapes]
    if any(len(s) != len(shapes[0]) for s in shapes) or any(r != rest[0] for r in rest):
        raise ExportError(f"expected inputs that agree off axis {axis}, received {shapes}")
    sizes = [s[axis] for s in shapes]
    out = list(shapes[0])
    out[axis] = None if None in sizes else sum(sizes)
    return tuple(out)


CONCAT = Kind(("Concatenate",), lambda f: ConcatParams(f.axis()), _concat_shape,
              lambda p, w, shapes: ops.Concat(axis=index_axis(p.axis, len(shapes[0]))))

KINDS = (ADD, SUBTRACT, MULTIPLY, DIVIDE, CONCAT)
