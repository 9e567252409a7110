"""Output shapes (batch axis dropped, channels last) and explicit padding, per layer kind.

TensorFlow's SAME rule: ``out = ceil(in / stride)``, total padding
``max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0)``, the odd pixel at the bottom/right.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from .errors import ExportError
from .graph import Graph, Node, Shape


def pair(value: Any) -> tuple[int, int]:
    """Keras' ``int or (int, int)`` arguments as a pair."""
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def axis_pad(size: int | None, k: int, stride: int, dilation: int,
             padding: str) -> tuple[int | None, int | None, int | None]:
    """(before, after, out) along one spatial axis; None where the input size is unknown and
    the result depends on it."""
    effective = (k - 1) * dilation + 1
    if padding == "valid":
        return 0, 0, None if size is None else (size - effective) // stride + 1
    if padding != "same":
        raise ExportError(f"expected padding 'same' or 'valid', received '{padding}'")
    if size is None:
        if stride != 1:
            return None, None, None
        total = effective - 1
        return total // 2, total - total // 2, None
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2, out


Geometry = tuple[list, tuple]   # ([top, bottom, left, right], (H_out, W_out)); None where unknown


def window(node: Node, in_shape: Shape, kernel: tuple[int, int], strides: tuple[int, int],
           dilation: tuple[int, int] = (1, 1)) -> Geometry:
    """[top, bottom, left, right] padding and (H_out, W_out) of a sliding-window layer."""
    padding = str(node.config.get("padding", "valid")).lower()
    top, bottom, h = axis_pad(in_shape[0], kernel[0], strides[0], dilation[0], padding)
    left, right, w = axis_pad(in_shape[1], kernel[1], strides[1], dilation[1], padding)
    if (h is not None and h < 1) or (w is not None and w < 1):
        raise ExportError(f"expected the {kernel[0]}x{kernel[1]} window to fit the "
                          f"{in_shape[0]}x{in_shape[1]} input, received an empty output", layer=node.name)
    return [top, bottom, left, right], (h, w)


def conv_geometry(node: Node, in_shape: Shape) -> Geometry:
    c = node.config
    return window(node, in_shape, pair(c["kernel_size"]), pair(c.get("strides", 1)),
                  pair(c.get("dilation_rate", 1)))


def pool_geometry(node: Node, in_shape: Shape) -> Geometry:
    c = node.config
    size = pair(c.get("pool_size", 2))
    strides = pair(c["strides"]) if c.get("strides") is not None else size
    return window(node, in_shape, size, strides)


def _same(node: Node, shapes: list[Shape]) -> Shape:
    return shapes[0]


def _conv(node: Node, shapes: list[Shape]) -> Shape:
    _, (h, w) = conv_geometry(node, shapes[0])
    return (h, w, int(node.config["filters"]))


def _pool(node: Node, shapes: list[Shape]) -> Shape:
    _, (h, w) = pool_geometry(node, shapes[0])
    return (h, w, shapes[0][-1])


def _depthwise(node: Node, shapes: list[Shape]) -> Shape:
    _, (h, w) = conv_geometry(node, shapes[0])
    channels = shapes[0][-1]
    return (h, w, None if channels is None else channels * int(node.config.get("depth_multiplier", 1)))


SHAPES: dict[str, Callable[[Node, list[Shape]], Shape]] = {
    "Conv2D": _conv,
    "DepthwiseConv2D": _depthwise,
    "MaxPooling2D": _pool,
    "AveragePooling2D": _pool,
    **{k: _same for k in ("BatchNormalization", "LeakyReLU", "ReLU", "Activation", "ELU", "Softmax",
                          "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                          "ActivityRegularization", "Identity")},
}


def infer_shapes(graph: Graph) -> None:
    """Fill ``output_shape`` of every node; None for kinds without a shape rule."""
    for node in graph:
        if node.is_input:
            continue
        shapes = [graph[i].output_shape for i in node.inputs]
        rule = SHAPES.get(node.kind)
        if rule is None or any(s is None for s in shapes):
            node.output_shape = None
            continue
        try:
            node.output_shape = tuple(rule(node, shapes))
        except ExportError as err:
            raise err.at(layer=node.name)
