"""One builder per operation class: typed operation (Keras-layout weights) -> MIL ops.

Each builder gets the MIL builder ``mb``, the operation, its input values, the output shape
(unbatched, Keras order) and the name its result takes; it returns the value before the
operation's activation. Weights are float32 (``weights``: the exact fold rounded once).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ... import ops
from ...errors import UnsupportedLayer
from .values import TO_NCHW, TO_NHWC, Value, channels_shape, keras_axis

Weights = Callable[[np.ndarray], np.ndarray]


class Emitter:
    """The builder's context: ``mb``, and how weights are turned into constants (float32, or
    float16-representable float32 for a float16 model, rounded once from the exact fold)."""

    def __init__(self, mb: Any, weights: Weights):
        self.mb, self.weights = mb, weights

    def const(self, a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else self.weights(np.asarray(a))


# -- layout helpers ---------------------------------------------------------------------------

def as_image(e: Emitter, v: Value) -> Any:
    """A value a windowed op reads, as NCHW: 4-D already is; (N, W, C) becomes a 1 x W image."""
    if v.rank == 4:
        return v.var
    if v.rank == 3:
        return e.mb.expand_dims(x=e.mb.transpose(x=v.var, perm=[0, 2, 1]), axes=[2])
    raise UnsupportedLayer(f"expected an image (rank 4) or a sequence (rank 3) for a windowed "
                           f"operation, received a rank-{v.rank} tensor")


def from_image(e: Emitter, var: Any, rank: int, name: str) -> Value:
    if rank == 4:
        return Value(e.mb.identity(x=var, name=name) if not _named(var, name) else var, 4)
    squeezed = e.mb.squeeze(x=var, axes=[2])                          # (N, C, W)
    return Value(e.mb.transpose(x=squeezed, perm=[0, 2, 1], name=name), 3)


def _name(name: str | None) -> dict[str, str]:
    """The ``name`` argument of a MIL op, or none (the builder refuses ``name=None``)."""
    return {} if name is None else {"name": name}


def _named(var: Any, name: str) -> bool:
    return getattr(var, "name", None) == name


def to_keras(e: Emitter, v: Value) -> Any:
    """The value in Keras' (channels-last) order."""
    return e.mb.transpose(x=v.var, perm=TO_NHWC) if v.nchw else v.var


def from_keras(e: Emitter, var: Any, rank: int, name: str) -> Value:
    if rank == 4:
        return Value(e.mb.transpose(x=var, perm=TO_NCHW, name=name), 4)
    return Value(e.mb.identity(x=var, name=name), rank)


def _rank_of(shape: tuple | None) -> int:
    if shape is None:
        raise UnsupportedLayer("expected a known output shape for the Core ML program, received none")
    return len(shape) + 1


# -- windowed operations ----------------------------------------------------------------------

def _conv2d(e: Emitter, op: ops.Conv2D, xs: list[Value], shape: tuple, name: str) -> Value:
    weight = e.const(op.kernel).transpose(3, 2, 0, 1)                  # HWIO -> OIHW
    y = e.mb.conv(x=as_image(e, xs[0]), weight=np.ascontiguousarray(weight), bias=e.const(op.bias),
                  strides=list(op.strides), pad_type="custom", pad=list(op.pad),
                  dilations=list(op.dilation), groups=int(op.groups),
                  **_name(name if xs[0].rank == 4 else None))
    return from_image(e, y, xs[0].rank, name)


def _depthwise(e: Emitter, op: ops.DepthwiseConv2D, xs: list[Value], shape: tuple, name: str) -> Value:
    kh, kw, c, m = op.kernel.shape
    weight = e.const(op.kernel).reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]  # o = c*M + m
    y = e.mb.conv(x=as_image(e, xs[0]), weight=np.ascontiguousarray(weight), bias=e.const(op.bias),
                  strides=list(op.strides), pad_type="custom", pad=list(op.pad),
                  dilations=list(op.dilation), groups=int(c),
                  **_name(name if xs[0].rank == 4 else None))
    return from_image(e, y, xs[0].rank, name)


def _conv_transpose(e: Emitter, op: ops.Conv2DTranspose, xs: list[Value], shape: tuple, name: str) -> Value:
    """The full ("valid") transposed convolution, then the op's ``crop``."""
    kh, kw, out, _ = op.kernel.shape
    weight = e.const(op.kernel).transpose(3, 2, 0, 1)                  # (kh, kw, out, in) -> (in, out, kh, kw)
    x = as_image(e, xs[0])
    h, w = x.shape[2], x.shape[3]
    full = ((h - 1) * op.strides[0] + kh, (w - 1) * op.strides[1] + kw)
    y = e.mb.conv_transpose(x=x, weight=np.ascontiguousarray(weight), bias=e.const(op.bias),
                            strides=list(op.strides), pad_type="valid",
                            output_shape=[1, out, full[0], full[1]])
    top, bottom, left, right = op.crop
    y = e.mb.slice_by_index(x=y, begin=[0, 0, top, left], end=[1, out, full[0] - bottom, full[1] - right],
                            **_name(name if xs[0].rank == 4 else None))
    return from_image(e, y, xs[0].rank, name)


def _pool(e: Emitter, op: ops.Pool2D, xs: list[Value], shape: tuple, name: str) -> Value:
    """Padded cells take no part: max pooling over real pixels only, average over the real count."""
    common = dict(x=as_image(e, xs[0]), kernel_sizes=list(op.size), strides=list(op.strides),
                  pad_type="custom", pad=list(op.pad), **_name(name if xs[0].rank == 4 else None))
    if op.mode == "max":
        y = e.mb.max_pool(**common)
    else:
        y = e.mb.avg_pool(**common, exclude_padding_from_average=True)
    return from_image(e, y, xs[0].rank, name)


def _global_pool(e: Emitter, op: ops.GlobalPool2D, xs: list[Value], shape: tuple, name: str) -> Value:
    x = as_image(e, xs[0])
    reduce = e.mb.reduce_max if op.mode == "max" else e.mb.reduce_mean
    if not op.keepdims:
        return Value(reduce(x=x, axes=[2, 3], keep_dims=False, name=name), 2)
    y = reduce(x=x, axes=[2, 3], keep_dims=True, **_name(name if xs[0].rank == 4 else None))
    return from_image(e, y, xs[0].rank, name)


# -- dense, element-wise, shapes --------------------------------------------------------------

def _dense(e: Emitter, op: ops.Dense, xs: list[Value], shape: tuple, name: str) -> Value:
    """Kernel (in, out) -> weight [out][in], applied to the last (Keras) axis."""
    weight = np.ascontiguousarray(e.const(op.kernel).T)
    bias = e.const(op.bias) if op.bias is not None else np.zeros(weight.shape[0], np.float32)
    v = xs[0]
    if not v.nchw:
        return Value(e.mb.linear(x=v.var, weight=weight, bias=bias, name=name), v.rank)
    y = e.mb.linear(x=to_keras(e, v), weight=weight, bias=bias)
    return from_keras(e, y, 4, name)


_ELEMENTWISE = {"add": "add", "subtract": "sub", "multiply": "mul", "divide": "real_div"}


def _elementwise(e: Emitter, op: ops.Elementwise, xs: list[Value], shape: tuple, name: str) -> Value:
    """Keras' broadcasting aligns trailing axes of channels-last shapes: operands of mixed ranks
    meet in Keras' order; 4-D operands alone stay NCHW (the same broadcast, axes permuted)."""
    fn = getattr(e.mb, _ELEMENTWISE[op.mode])
    rank = _rank_of(shape)
    same = all(v.rank == 4 for v in xs) and rank == 4
    args: list[Any] = [v.var if same else to_keras(e, v) for v in xs]
    for position, value in op.constants:
        args.insert(position, np.float32(value))
    out = args[0]
    for i, a in enumerate(args[1:], start=1):
        out = fn(x=out, y=a, **_name(name if same and i == len(args) - 1 else None))
    if same:
        return Value(out, 4)
    return from_keras(e, out, rank, name)


def _concat(e: Emitter, op: ops.Concat, xs: list[Value], shape: tuple, name: str) -> Value:
    rank = xs[0].rank
    return Value(e.mb.concat(values=[v.var for v in xs], axis=keras_axis(op.axis, rank), interleave=False,
                             name=name), rank)


def _resize(e: Emitter, op: ops.Resize, xs: list[Value], shape: tuple, name: str) -> Value:
    """Nearest: each pixel repeated. Bilinear: half-pixel centres, edges clamped (TensorFlow's
    resize, Keras' UpSampling2D), which is MIL's ``upsample_bilinear`` without corner alignment."""
    x = as_image(e, xs[0])
    sh, sw = op.size
    named = _name(name if xs[0].rank == 4 else None)
    if op.interpolation == "nearest":
        y = e.mb.upsample_nearest_neighbor(x=x, scale_factor_height=int(sh), scale_factor_width=int(sw), **named)
    else:
        y = e.mb.upsample_bilinear(x=x, scale_factor_height=float(sh), scale_factor_width=float(sw),
                                   align_corners=False, **named)
    return from_image(e, y, xs[0].rank, name)


def _pad(e: Emitter, op: ops.Pad, xs: list[Value], shape: tuple, name: str) -> Value:
    top, bottom, left, right = op.pad
    y = e.mb.pad(x=as_image(e, xs[0]), pad=[0, 0, 0, 0, top, bottom, left, right], mode="constant",
                 constant_val=np.float32(0.0), **_name(name if xs[0].rank == 4 else None))
    return from_image(e, y, xs[0].rank, name)


def _crop(e: Emitter, op: ops.Crop, xs: list[Value], shape: tuple, name: str) -> Value:
    top, bottom, left, right = op.crop
    x = as_image(e, xs[0])
    n, c, h, w = x.shape
    y = e.mb.slice_by_index(x=x, begin=[0, 0, top, left], end=[n, c, h - bottom, w - right],
                            **_name(name if xs[0].rank == 4 else None))
    return from_image(e, y, xs[0].rank, name)


def _reshape(e: Emitter, op: ops.Op, xs: list[Value], shape: tuple, name: str) -> Value:
    """Reshape and Flatten in Keras' (H, W, C) order: through NHWC, whatever the program's layout."""
    rank = _rank_of(shape)
    y = e.mb.reshape(x=to_keras(e, xs[0]), shape=[1, *[int(d) for d in shape]],
                     **_name(name if rank != 4 else None))
    return Value(y, rank) if rank != 4 else from_keras(e, y, 4, name)


def _softmax(e: Emitter, op: ops.Softmax, xs: list[Value], shape: tuple, name: str) -> Value:
    return Value(e.mb.softmax(x=xs[0].var, axis=keras_axis(op.axis, xs[0].rank), name=name), xs[0].rank)


def _passthrough(e: Emitter, op: ops.Op, xs: list[Value], shape: tuple, name: str) -> Value:
    """Activation and Identity: the value itself (the activation is applied after)."""
    return Value(e.mb.identity(x=xs[0].var, name=name), xs[0].rank)


def _rescaling(e: Emitter, op: ops.Rescaling, xs: list[Value], shape: tuple, name: str) -> Value:
    v = xs[0]

    def per_channel(value: Any) -> Any:
        a = np.asarray(value, np.float32)
        return np.float32(a) if a.ndim == 0 else a.reshape(channels_shape(v.rank, a.size))

    scaled = e.mb.mul(x=v.var, y=per_channel(op.scale))
    return Value(e.mb.add(x=scaled, y=per_channel(op.offset), name=name), v.rank)


def _prelu(e: Emitter, op: ops.PReLU, xs: list[Value], shape: tuple, name: str) -> Value:
    """relu(x) - alpha * relu(-x), alpha (H, W, C) with shared axes of size 1 (laid out NCHW)."""
    v = xs[0]
    alpha = e.const(op.alpha)
    alpha = alpha.transpose(2, 0, 1)[None] if v.nchw and alpha.ndim == 3 else alpha[None]
    negative = e.mb.relu(x=e.mb.mul(x=v.var, y=np.float32(-1.0)))
    return Value(e.mb.sub(x=e.mb.relu(x=v.var), y=e.mb.mul(x=negative, y=np.ascontiguousarray(alpha)),
                          name=name), v.rank)


def _batch_norm(e: Emitter, op: ops.BatchNorm, xs: list[Value], shape: tuple, name: str) -> Value:
    """A BatchNormalization over an axis other than the channels (the one the passes leave; MPS
    refuses it): x * s + t with the exact per-index scale s and shift t along that axis."""
    from ...passes.batch_norm import bn_params
    from ...passes.bn_math import bn_as_scale_bias
    v = xs[0]
    scale, shift = bn_as_scale_bias(bn_params(op))
    axis = op.axis % v.rank
    axis = {1: 2, 2: 3, 3: 1}.get(axis, axis) if v.nchw else axis
    along = [1] * v.rank
    along[axis] = -1
    scaled = e.mb.mul(x=v.var, y=e.const(scale).reshape(along))
    return Value(e.mb.add(x=scaled, y=e.const(shift).reshape(along), name=name), v.rank)


def _space_to_depth(e: Emitter, op: ops.SpaceToDepth, xs: list[Value], shape: tuple, name: str) -> Value:
    """TensorFlow's (YAD2K's) order, out[i, j, (bi*b + bj)*C + c] = in[i*b + bi, j*b + bj, c], by
    reshapes and a transpose in NHWC (rank 5 at most): (H/b, b, W/b, b*C) rows -> (W/b, b, b*C)."""
    b = op.block
    x = to_keras(e, xs[0])                                             # (1, H, W, C)
    _, h, w, c = x.shape
    x = e.mb.reshape(x=x, shape=[h // b, b, w // b, b, c])
    x = e.mb.transpose(x=x, perm=[0, 2, 1, 3, 4])                     # (H/b, W/b, bi, bj, C)
    x = e.mb.reshape(x=x, shape=[1, h // b, w // b, b * b * c])
    return from_keras(e, x, 4, name)


EMITTERS: dict[type, Callable[[Emitter, Any, list[Value], tuple, str], Value]] = {
    ops.Conv2D: _conv2d,
    ops.DepthwiseConv2D: _depthwise,
    ops.Conv2DTranspose: _conv_transpose,
    ops.Pool2D: _pool,
    ops.GlobalPool2D: _global_pool,
    ops.Dense: _dense,
    ops.Elementwise: _elementwise,
    ops.Concat: _concat,
    ops.Resize: _resize,
    ops.Pad: _pad,
    ops.Crop: _crop,
    ops.Reshape: _reshape,
    ops.Flatten: _reshape,
    ops.Softmax: _softmax,
    ops.Activation: _passthrough,
    ops.Identity: _passthrough,
    ops.Rescaling: _rescaling,
    ops.PReLU: _prelu,
    ops.SpaceToDepth: _space_to_depth,
    ops.BatchNorm: _batch_norm,
}


def supported() -> str:
    return ", ".join(sorted(cls.__name__ for cls in EMITTERS))
