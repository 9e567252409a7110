"""Layers that move pixels: ZeroPadding2D, Cropping2D, UpSampling2D (nearest, bilinear),
Reshape, Flatten, and SpaceToDepth (YAD2K's passthrough, see ``kinds.lambdas``)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import ops
from ..errors import ExportError
from .base import Fields, Kind, Shape, Weights, image


@dataclass(frozen=True)
class SidesParams:
    sides: tuple[int, int, int, int]


def _padded(sign: int):
    def shape(p: SidesParams, shapes: list[Shape]) -> Shape:
        h, w, c = image(shapes[0], "padding" if sign > 0 else "cropping")
        top, bottom, left, right = p.sides
        out = (None if h is None else h + sign * (top + bottom), None if w is None else w + sign * (left + right), c)
        if any(d is not None and d < 1 for d in out[:2]):
            raise ExportError(f"expected a crop smaller than the {h}x{w} input, received {list(p.sides)}")
        return out
    return shape


ZERO_PADDING = Kind(("ZeroPadding2D",), lambda f: SidesParams(f.sides("padding", 1)), _padded(1),
                    lambda p, w, shapes: ops.Pad(pad=p.sides))
CROPPING = Kind(("Cropping2D",), lambda f: SidesParams(f.sides("cropping", 0)), _padded(-1),
                lambda p, w, shapes: ops.Crop(crop=p.sides))


@dataclass(frozen=True)
class ResizeParams:
    size: tuple[int, int]
    interpolation: str


def _resize_shape(p: ResizeParams, shapes: list[Shape]) -> Shape:
    h, w, c = image(shapes[0], "upsampling")
    return (None if h is None else h * p.size[0], None if w is None else w * p.size[1], c)


UPSAMPLING = Kind(("UpSampling2D",),
                  lambda f: ResizeParams(f.pair("size", 2), f.choice("interpolation", ("nearest", "bilinear"),
                                                                     "nearest")),
                  _resize_shape, lambda p, w, shapes: ops.Resize(size=p.size, interpolation=p.interpolation))


def _count(shape: Shape) -> int | None:
    return None if any(d is None for d in shape) else math.prod(shape)


@dataclass(frozen=True)
class ReshapeParams:
    target: tuple[int, ...]


def _reshape_parse(f: Fields) -> ReshapeParams:
    target = f.ints("target_shape", lo=-1)
    if target.count(-1) > 1 or 0 in target:
        raise ExportError(f"expected target_shape with positive sizes and at most one -1, received {list(target)}")
    return ReshapeParams(target)


def _reshape_shape(p: ReshapeParams, shapes: list[Shape]) -> Shape:
    target = list(p.target)
    known = _count(shapes[0]) if shapes[0] is not None else None
    if -1 in target and known is not None:
        rest = -1 * math.prod(target)
        if known % rest:
            raise ExportError(f"expected a target shape dividing {known} elements, received {target}")
        target[target.index(-1)] = known // rest
    if known is not None and math.prod(target) != known:
        raise ExportError(f"expected a target shape of {known} elements, received {target}")
    return tuple(target)


RESHAPE = Kind(("Reshape",), _reshape_parse, _reshape_shape,
               lambda p, w, shapes: ops.Reshape(target=_reshape_shape(p, shapes)))


def _flatten_shape(p: object, shapes: list[Shape]) -> Shape:
    if shapes[0] is None:
        return (None,)
    return (_count(shapes[0]),)


def _flatten_parse(f: Fields) -> None:
    f.choice("data_format", ("channels_last",), "channels_last")


FLATTEN = Kind(("Flatten",), _flatten_parse, _flatten_shape, lambda p, w, shapes: ops.Flatten())


@dataclass(frozen=True)
class SpaceToDepthParams:
    block: int


def _s2d_shape(p: SpaceToDepthParams, shapes: list[Shape]) -> Shape:
    h, w, c = image(shapes[0], "space_to_depth")
    b = p.block
    if (h is not None and h % b) or (w is not None and w % b):
        raise ExportError(f"expected an even height and width for space_to_depth (block {b}), received {h}x{w}")
    return (None if h is None else h // b, None if w is None else w // b, None if c is None else c * b * b)


SPACE_TO_DEPTH = Kind(("SpaceToDepth",), lambda f: SpaceToDepthParams(f.int("block_size", 2, lo=2)), _s2d_shape,
                      lambda p, w, shapes: ops.SpaceToDepth(block=p.block))

KINDS = (ZERO_PADDING, CROPPING, UPSAMPLING, RESHAPE, FLATTEN, SPACE_TO_DEPTH)
