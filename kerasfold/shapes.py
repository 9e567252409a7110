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


def transpose_geometry(node: Node, in_shape: Shape) -> Geometry:
    """Conv2DTranspose: ([crop top, bottom, left, right] of the full output, (H_out, W_out)).
    The full ("valid") output is ``in·s + max(k − s, 0)``; SAME keeps ``in·s``, cropping
    ``max(k − s, 0)`` with the odd pixel at the bottom/right (the mirror of SAME padding)."""
    c = node.config
    if pair(c.get("dilation_rate", 1)) != (1, 1) or c.get("output_padding") not in (None, [None, None]):
        raise ExportError("expected Conv2DTranspose without dilation or output_padding, received "
                          f"dilation {c.get('dilation_rate')}, output_padding {c.get('output_padding')}")
    crops, out = [], []
    for size, k, s in zip(in_shape[:2], pair(c["kernel_size"]), pair(c.get("strides", 1))):
        total = max(k - s, 0) if str(c.get("padding", "valid")).lower() == "same" else 0
        crops += [total // 2, total - total // 2]
        out.append(None if size is None else size * s + max(k - s, 0) - total)
    return crops, (out[0], out[1])


def _transpose(node: Node, shapes: list[Shape]) -> Shape:
    _, (h, w) = transpose_geometry(node, shapes[0])
    return (h, w, int(node.config["filters"]))


def _dense(node: Node, shapes: list[Shape]) -> Shape:
    return (*shapes[0][:-1], int(node.config["units"]))


def _zero_padding(node: Node, shapes: list[Shape]) -> Shape:
    top, bottom, left, right = four_sides(node.config.get("padding", 1))
    h, w, c = shapes[0]
    return (None if h is None else h + top + bottom, None if w is None else w + left + right, c)


def _cropping(node: Node, shapes: list[Shape]) -> Shape:
    top, bottom, left, right = four_sides(node.config.get("cropping", 0))
    h, w, c = shapes[0]
    return (None if h is None else h - top - bottom, None if w is None else w - left - right, c)


def four_sides(value: Any) -> list[int]:
    """Keras' ``int | (sym_h, sym_w) | ((top, bottom), (left, right))`` -> [top, bottom, left, right]."""
    if isinstance(value, int):
        return [value] * 4
    h, w = value
    h = (h, h) if isinstance(h, int) else tuple(h)
    w = (w, w) if isinstance(w, int) else tuple(w)
    return [int(h[0]), int(h[1]), int(w[0]), int(w[1])]


def _upsampling(node: Node, shapes: list[Shape]) -> Shape:
    sh, sw = pair(node.config.get("size", 2))
    h, w, c = shapes[0]
    return (None if h is None else h * sh, None if w is None else w * sw, c)


def _elementwise(node: Node, shapes: list[Shape]) -> Shape:
    """Add/Subtract/Multiply with numpy broadcasting (a squeeze-excite (1, 1, C) scale, say)."""
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise ExportError(f"expected inputs that broadcast to one shape, received {shapes}")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def channel_axis(node: Node, rank: int) -> int:
    """A Keras axis (batch included, may be negative) as an index into the unbatched shape."""
    axis = int(node.config.get("axis", -1))
    axis = axis + rank + 1 if axis < 0 else axis
    if not 1 <= axis <= rank:
        raise ExportError(f"expected an axis within a rank-{rank} tensor, received {node.config.get('axis')}")
    return axis - 1


def _concatenate(node: Node, shapes: list[Shape]) -> Shape:
    axis = channel_axis(node, len(shapes[0]))
    rest = [tuple(d for i, d in enumerate(s) if i != axis) for s in shapes]
    if any(r != rest[0] for r in rest):
        raise ExportError(f"expected inputs that agree off axis {axis}, received {shapes}")
    sizes = [s[axis] for s in shapes]
    out = list(shapes[0])
    out[axis] = None if None in sizes else sum(sizes)
    return tuple(out)


def _global_pool(node: Node, shapes: list[Shape]) -> Shape:
    c = shapes[0][-1]
    return (1, 1, c) if node.config.get("keepdims") else (c,)


def _flatten(node: Node, shapes: list[Shape]) -> Shape:
    size = 1
    for d in shapes[0]:
        if d is None:
            return (None,)
        size *= d
    return (size,)


def _reshape(node: Node, shapes: list[Shape]) -> Shape:
    target = [int(d) for d in node.config["target_shape"]]
    known = _flatten(node, shapes)[0]
    if -1 in target and known is not None:
        rest = -1 * math.prod(target)
        target[target.index(-1)] = known // rest
    if known is not None and math.prod(target) != known:
        raise ExportError(f"expected a target shape of {known} elements, received {target}")
    return tuple(target)


def _space_to_depth(node: Node, shapes: list[Shape]) -> Shape:
    h, w, c = shapes[0]
    if (h is not None and h % 2) or (w is not None and w % 2):
        raise ExportError(f"expected an even height and width for space_to_depth (block 2), received {h}x{w}")
    return (None if h is None else h // 2, None if w is None else w // 2, c * 4)


SHAPES: dict[str, Callable[[Node, list[Shape]], Shape]] = {
    "Conv2D": _conv,
    "DepthwiseConv2D": _depthwise,
    "SeparableConv2D": _conv,
    "Conv2DTranspose": _transpose,
    "Dense": _dense,
    "MaxPooling2D": _pool,
    "AveragePooling2D": _pool,
    "ZeroPadding2D": _zero_padding,
    "Cropping2D": _cropping,
    "UpSampling2D": _upsampling,
    "Add": _elementwise,
    "Subtract": _elementwise,
    "Multiply": _elementwise,
    "Divide": _elementwise,
    "TrueDivide": _elementwise,
    "Concatenate": _concatenate,
    "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling2D": _global_pool,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "SpaceToDepth": _space_to_depth,
    **{k: _same for k in ("BatchNormalization", "LeakyReLU", "ReLU", "Activation", "ELU", "Softmax",
                          "PReLU", "Rescaling", "Normalization", "Dropout", "SpatialDropout2D",
                          "GaussianNoise", "GaussianDropout", "ActivityRegularization", "Identity")},
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
