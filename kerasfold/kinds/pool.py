"""Pooling: MaxPooling2D, AveragePooling2D (explicit pad; padded positions take no part),
GlobalAveragePooling2D, GlobalMaxPooling2D."""
from __future__ import annotations

from dataclasses import dataclass

from .. import ops
from .base import Fields, Kind, Shape, Weights, image, spatial, window


@dataclass(frozen=True)
class PoolParams:
    mode: str
    size: tuple[int, int]
    strides: tuple[int, int]
    padding: str


def _parse(mode: str):
    def parse(f: Fields) -> PoolParams:
        f.choice("data_format", ("channels_last",), "channels_last")
        size = f.pair("pool_size", 2)
        return PoolParams(mode, size, f.pair("strides", size), f.choice("padding", ("same", "valid"), "valid"))
    return parse


def _shape(p: PoolParams, shapes: list[Shape]) -> Shape:
    _, (h, w) = window(shapes[0], p.size, p.strides, (1, 1), p.padding, "pooling")
    return spatial(shapes[0], h, w, shapes[0][-1])


def _lower(p: PoolParams, w: Weights, shapes: list[Shape]) -> ops.Op:
    pad, _ = window(shapes[0], p.size, p.strides, (1, 1), p.padding, "pooling")
    return ops.Pool2D(mode=p.mode, size=p.size, strides=p.strides, padding=p.padding, pad=pad)


MAX_POOL = Kind(("MaxPooling2D", "MaxPool2D"), _parse("max"), _shape, _lower)
AVG_POOL = Kind(("AveragePooling2D", "AvgPool2D"), _parse("avg"), _shape, _lower)


@dataclass(frozen=True)
class GlobalParams:
    mode: str
    keepdims: bool


def _global_shape(p: GlobalParams, shapes: list[Shape]) -> Shape:
    c = image(shapes[0], "global pooling")[2]
    return (1, 1, c) if p.keepdims else (c,)


def _global(mode: str, *classes: str) -> Kind:
    return Kind(classes, lambda f: GlobalParams(mode, f.bool("keepdims", False)), _global_shape,
                lambda p, w, shapes: ops.GlobalPool2D(mode=p.mode, keepdims=p.keepdims))


GLOBAL_AVG = _global("avg", "GlobalAveragePooling2D", "GlobalAvgPool2D")
GLOBAL_MAX = _global("max", "GlobalMaxPooling2D", "GlobalMaxPool2D")

KINDS = (MAX_POOL, AVG_POOL, GLOBAL_AVG, GLOBAL_MAX)
