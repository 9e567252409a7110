"""Convolutions and Dense: Conv2D, Conv1D (a Conv2D over a 1 x W image), DepthwiseConv2D,
SeparableConv2D, Conv2DTranspose, Dense."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import ops
from ..errors import ExportError
from .activation import from_name
from .base import Fields, Kind, Shape, Weights, image, spatial, window

PADDINGS = ("same", "valid")


def _channels_last(f: Fields) -> None:
    f.choice("data_format", ("channels_last",), "channels_last")


@dataclass(frozen=True)
class ConvParams:
    filters: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding: str
    use_bias: bool
    activation: dict[str, Any]
    rank1: bool = False                          # Conv1D: kernel (k, in, out) over a (W, C) input


def _conv_params(f: Fields) -> ConvParams:
    _channels_last(f)
    return ConvParams(f.int("filters"), f.pair("kernel_size"), f.pair("strides", 1),
                      f.pair("dilation_rate", 1), f.int("groups", 1), f.choice("padding", PADDINGS, "valid"),
                      f.bool("use_bias", True), from_name(f.raw.get("activation")))


def _conv_variables(p: ConvParams, cin: int | None) -> dict[str, tuple | None]:
    if cin is not None and cin % p.groups:
        raise ExportError(f"expected input channels divisible by groups {p.groups}, received {cin}")
    per_group = None if cin is None else cin // p.groups
    kernel = (p.kernel[1], per_group, p.filters) if p.rank1 else (*p.kernel, per_group, p.filters)
    return {"kernel": kernel, **({"bias": (p.filters,)} if p.use_bias else {})}


def _conv_shape(p: ConvParams, shapes: list[Shape]) -> Shape:
    _, (h, w) = window(shapes[0], p.kernel, p.strides, p.dilation, p.padding, "convolution")
    return spatial(shapes[0], h, w, p.filters)


def _conv_lower(p: ConvParams, w: Weights, shapes: list[Shape]) -> ops.Op:
    pad, _ = window(shapes[0], p.kernel, p.strides, p.dilation, p.padding, "convolution")
    kernel = w["kernel"][None] if p.rank1 else w["kernel"]          # (k, in, out) -> (1, k, in, out)
    return ops.Conv2D(kernel=kernel, bias=w.get("bias"), strides=p.strides, dilation=p.dilation,
                      groups=p.groups, padding=p.padding, pad=pad, activation=dict(p.activation))


CONV2D = Kind(("Conv2D", "Convolution2D"), _conv_params, _conv_shape, _conv_lower, _conv_variables)


def _conv1d_parse(f: Fields) -> ConvParams:
    _channels_last(f)
    return ConvParams(f.int("filters"), (1, f.int("kernel_size")), (1, f.int("strides", 1)),
                      (1, f.int("dilation_rate", 1)), f.int("groups", 1),
                      f.choice("padding", (*PADDINGS, "causal"), "valid"), f.bool("use_bias", True),
                      from_name(f.raw.get("activation")), rank1=True)


def _conv1d_shape(p: ConvParams, shapes: list[Shape]) -> Shape:
    if shapes[0] is not None and len(shapes[0]) != 2:
        raise ExportError(f"expected a (steps, channels) input for Conv1D, received shape {tuple(shapes[0])}")
    return _conv_shape(p, shapes)


CONV1D = Kind(("Conv1D", "Convolution1D"), _conv1d_parse, _conv1d_shape, _conv_lower, _conv_variables)


@dataclass(frozen=True)
class DepthwiseParams:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    multiplier: int
    padding: str
    use_bias: bool
    activation: dict[str, Any]


def _depthwise_params(f: Fields) -> DepthwiseParams:
    _channels_last(f)
    return DepthwiseParams(f.pair("kernel_size"), f.pair("strides", 1), f.pair("dilation_rate", 1),
                           f.int("depth_multiplier", 1), f.choice("padding", PADDINGS, "valid"),
                           f.bool("use_bias", True), from_name(f.raw.get("activation")))


def _depthwise_variables(p: DepthwiseParams, cin: int | None) -> dict[str, tuple | None]:
    out = None if cin is None else cin * p.multiplier
    return {"depthwise_kernel": (*p.kernel, cin, p.multiplier), **({"bias": (out,)} if p.use_bias else {})}


def _depthwise_shape(p: DepthwiseParams, shapes: list[Shape]) -> Shape:
    _, (h, w) = window(shapes[0], p.kernel, p.strides, p.dilation, p.padding, "depthwise convolution")
    c = shapes[0][-1]
    return spatial(shapes[0], h, w, None if c is None else c * p.multiplier)


def _depthwise_lower(p: DepthwiseParams, w: Weights, shapes: list[Shape]) -> ops.Op:
    pad, _ = window(shapes[0], p.kernel, p.strides, p.dilation, p.padding, "depthwise convolution")
    return ops.DepthwiseConv2D(kernel=w["depthwise_kernel"], bias=w.get("bias"), strides=p.strides,
                               dilation=p.dilation, padding=p.padding, pad=pad, activation=dict(p.activation))


DEPTHWISE = Kind(("DepthwiseConv2D",), _depthwise_params, _depthwise_shape, _depthwise_lower,
                 _depthwise_variables)


@dataclass(frozen=True)
class SeparableParams:
    depthwise: DepthwiseParams
    filters: int


def _separable_params(f: Fields) -> SeparableParams:
    return SeparableParams(_depthwise_params(f), f.int("filters"))


def _separable_variables(p: SeparableParams, cin: int | None) -> dict[str, tuple | None]:
    d = p.depthwise
    mid = None if cin is None else cin * d.multiplier
    return {"depthwise_kernel": (*d.kernel, cin, d.multiplier), "pointwise_kernel": (1, 1, mid, p.filters),
            **({"bias": (p.filters,)} if d.use_bias else {})}


def _separable_shape(p: SeparableParams, shapes: list[Shape]) -> Shape:
    d = p.depthwise
    _, (h, w) = window(shapes[0], d.kernel, d.strides, d.dilation, d.padding, "separable convolution")
    return spatial(shapes[0], h, w, p.filters)


def _separable_lower(p: SeparableParams, w: Weights, shapes: list[Shape]) -> ops.Op:
    d = p.depthwise
    pad, _ = window(shapes[0], d.kernel, d.strides, d.dilation, d.padding, "separable convolution")
    return ops.SeparableConv2D(depthwise=w["depthwise_kernel"], pointwise=w["pointwise_kernel"],
                               bias=w.get("bias"), strides=d.strides, dilation=d.dilation,
                               padding=d.padding, pad=pad, activation=dict(d.activation))


SEPARABLE = Kind(("SeparableConv2D", "SeparableConvolution2D"), _separable_params, _separable_shape,
                 _separable_lower, _separable_variables)


@dataclass(frozen=True)
class TransposeParams:
    filters: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: str
    use_bias: bool
    activation: dict[str, Any]


def _transpose_params(f: Fields) -> TransposeParams:
    _channels_last(f)
    dilation, out_pad = f.pair("dilation_rate", 1), f.raw.get("output_padding")
    if dilation != (1, 1) or out_pad not in (None, [None, None]):
        raise ExportError("expected Conv2DTranspose without dilation or output_padding, received "
                          f"dilation {list(dilation)}, output_padding {out_pad}")
    return TransposeParams(f.int("filters"), f.pair("kernel_size"), f.pair("strides", 1),
                           f.choice("padding", PADDINGS, "valid"), f.bool("use_bias", True),
                           from_name(f.raw.get("activation")))


def transpose_geometry(p: TransposeParams, in_shape: Shape) -> tuple[tuple, tuple]:
    """([crop top, bottom, left, right] of the full output, (H_out, W_out)). The full ("valid")
    output is ``in*s + max(k - s, 0)``; SAME keeps ``in*s``, cropping ``max(k - s, 0)`` with the
    odd pixel at the bottom/right (the mirror of SAME padding)."""
    crops, out = [], []
    for size, k, s in zip(image(in_shape, "transposed convolution")[:2], p.kernel, p.strides):
        total = max(k - s, 0) if p.padding == "same" else 0
        crops += [total // 2, total - total // 2]
        out.append(None if size is None else size * s + max(k - s, 0) - total)
    return tuple(crops), (out[0], out[1])


def _transpose_shape(p: TransposeParams, shapes: list[Shape]) -> Shape:
    _, (h, w) = transpose_geometry(p, shapes[0])
    return (h, w, p.filters)


def _transpose_lower(p: TransposeParams, w: Weights, shapes: list[Shape]) -> ops.Op:
    crop, _ = transpose_geometry(p, shapes[0])
    return ops.Conv2DTranspose(kernel=w["kernel"], bias=w.get("bias"), strides=p.strides, padding=p.padding,
                               crop=crop, activation=dict(p.activation))


TRANSPOSE = Kind(("Conv2DTranspose", "Deconvolution2D"), _transpose_params, _transpose_shape, _transpose_lower,
                 lambda p, cin: {"kernel": (*p.kernel, p.filters, cin),
                                 **({"bias": (p.filters,)} if p.use_bias else {})})


@dataclass(frozen=True)
class DenseParams:
    units: int
    use_bias: bool
    activation: dict[str, Any]


def _dense_shape(p: DenseParams, shapes: list[Shape]) -> Shape:
    if shapes[0] is None:
        raise ExportError("expected a known input shape for the Dense layer, received an unknown one")
    return (*shapes[0][:-1], p.units)


DENSE = Kind(("Dense",), lambda f: DenseParams(f.int("units"), f.bool("use_bias", True),
                                               from_name(f.raw.get("activation"))),
             _dense_shape,
             lambda p, w, shapes: ops.Dense(kernel=w["kernel"], bias=w.get("bias"), activation=dict(p.activation)),
             lambda p, cin: {"kernel": (cin, p.units), **({"bias": (p.units,)} if p.use_bias else {})})

KINDS = (CONV2D, CONV1D, DEPTHWISE, SEPARABLE, TRANSPOSE, DENSE)
