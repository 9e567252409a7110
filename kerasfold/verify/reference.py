"""A numpy reference of an export's network, run the way the device runs it (no TensorFlow).

Everything comes from the export through FORMAT.md: the manifest's graph, and every weight
read from its ``.bin`` file in device layout (OHWI, OHW, OI) with :meth:`Export.tensor`.
Computation is float32 (float16 weights are upcast), as MPS accumulates; ``dtype="float64"``
runs the same network in double precision.

    run(export, [x]) -> {"conv2d_9": y}                     outputs by manifest output name
    run(export, [x], keep=True) -> {layer name: output}     every layer, for layer-by-layer checks
    run(export, [x], padding="offset")                      MPS's window rule (kerasfold.mps)

``padding="pad"`` applies each entry's explicit ``pad`` (zeros for convolutions; pooling ignores
padded positions). ``padding="offset"`` places every window with MPSCNN's ``offset`` instead:
the entry's ``offset`` when the manifest gives one, else the offset derived from ``pad``
(:func:`kerasfold.mps.offset_for`, what a loader would set); pixels outside the image read zero
for convolutions and take no part in pooling, and the output size is the entry's
``output_shape`` (the destination image). With the right offsets both modes agree exactly.
(Transposed convolutions keep their ``crop`` in both modes.)

One small function per entry ``type`` in :data:`OPS`, one per activation in :data:`ACTIVATIONS`;
sliding windows loop over kernel taps only, never over pixels.

Repeated runs are cheap: an export's graph is decoded once (:meth:`Export.kept_graph`) and its
weights cast to the run's precision once per dtype (:class:`Context`); convolutions gather their
taps into one im2col buffer per run (none for a 1x1 stride-1 convolution: the input is its own
im2col), and a fresh output takes its bias and activation in place. Every shortcut computes the
same values, bit for bit, as the straightforward formulas (tests/test_reference.py keeps those).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import ops
from ..errors import ExportError, UnsupportedLayer
from ..graph import Graph, Node
from ..targets.mps.offsets import effective_kernel
from ..targets.mps.read import WINDOWS, Export

PADDING_MODES = WINDOWS


# ---------------------------------------------------------------------------------------------
# activations (Keras 3 definitions)

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype)           # 1 / (1 + e^-x), no overflow


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x).astype(x.dtype)


def _erfc(z: np.ndarray) -> np.ndarray:
    """Complementary error function, fractional error < 1.2e-7 everywhere (Numerical Recipes'
    ``erfcc`` Chebyshev fit), in float64; numpy has no erf."""
    z = np.asarray(z, np.float64)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = -a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    r = t * np.exp(poly)
    return np.where(z >= 0, r, 2.0 - r)


def _relu(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """keras.activations.relu(x, negative_slope=alpha, max_value, threshold), step by step as
    Keras 3's ``ReLU.static_call``."""
    slope = float(spec.get("alpha", spec.get("negative_slope", 0.0)) or 0.0)
    max_value = spec.get("max_value")
    threshold = float(spec.get("threshold", 0.0) or 0.0)
    dt = x.dtype.type
    if slope != 0.0:
        if max_value is None and threshold == 0:
            return np.where(x > 0, x, dt(slope) * x)
        negative = np.maximum(-x + dt(threshold), 0) if threshold != 0 else np.maximum(-x, 0)
    if threshold != 0:
        y = np.where(x > dt(threshold), x, dt(0))
    else:
        y = np.maximum(x, dt(0))
    if max_value is not None:
        y = np.clip(y, dt(0), dt(max_value))
    if slope != 0.0:
        y = y - dt(slope) * negative
    return y


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _hard_sigmoid(x: np.ndarray) -> np.ndarray:
    """Keras 3: relu6(x + 3) / 6 (Keras 2's hard_sigmoid was clip(0.2x + 0.5, 0, 1))."""
    dt = x.dtype.type
    return np.clip(x + dt(3), dt(0), dt(6)) / dt(6)


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


def _gelu(x: np.ndarray) -> np.ndarray:
    """keras.activations.gelu default (approximate=False): 0.5·x·erfc(-x/√2), as tf.nn.gelu."""
    return (0.5 * x * _erfc(-np.asarray(x, np.float64) * 0.7071067811865476)).astype(x.dtype)


Activation = Callable[[np.ndarray, dict[str, Any]], np.ndarray]

ACTIVATIONS: dict[str, Activation] = {
    "linear": lambda x, s: x,
    "relu": _relu,
    "leaky_relu": lambda x, s: np.where(x > 0, x, x.dtype.type(s.get("alpha", 0.2)) * x),
    "sigmoid": lambda x, s: _sigmoid(x),
    "tanh": lambda x, s: np.tanh(x),
    "elu": lambda x, s: _elu(x, s.get("alpha", 1.0)),
    "selu": lambda x, s: x.dtype.type(_SELU_SCALE) * _elu(x, _SELU_ALPHA),
    "swish": lambda x, s: x * _sigmoid(x),
    "hard_sigmoid": lambda x, s: _hard_sigmoid(x),
    "hard_swish": lambda x, s: x * _hard_sigmoid(x),
    "softplus": lambda x, s: _softplus(x),
    "softsign": lambda x, s: x / (1 + np.abs(x)),
    "softmax": lambda x, s: _softmax(x, -1),
    "log_softmax": lambda x, s: _log_softmax(x, -1),
    "gelu": lambda x, s: _gelu(x),
    "exponential": lambda x, s: np.exp(x),
    "mish": lambda x, s: x * np.tanh(_softplus(x)),
}


def _leaky_relu_in_place(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray | None:
    """``np.where(x > 0, x, alpha * x)`` written into ``x``, for 0 < alpha < 1: then alpha*x >= x
    exactly when x <= 0 (equal values carry equal signs: ±0 stay themselves), so the maximum is
    the same array; a NaN x makes alpha*x the first argument, the NaN numpy returns. None for
    any other alpha."""
    alpha = x.dtype.type(spec.get("alpha", 0.2))
    if not 0 < alpha < 1:
        return None
    return np.maximum(alpha * x, x, out=x)


def _relu_in_place(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray | None:
    """Plain relu (``np.maximum(x, 0)``) written into ``x``; None for relu's other forms."""
    if spec.get("max_value") is not None or any(
            spec.get(k) not in (None, 0, 0.0) for k in ("alpha", "negative_slope", "threshold")):
        return None
    return np.maximum(x, x.dtype.type(0), out=x)


IN_PLACE: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray | None]] = {
    "linear": lambda x, s: x,
    "relu": _relu_in_place,
    "leaky_relu": _leaky_relu_in_place,
}
"""Activations that can overwrite an array the run owns, with :data:`ACTIVATIONS`' values bit
for bit; None when the spec needs the general formula."""


def apply_activation(x: np.ndarray, spec: dict[str, Any], layer: str | None = None,
                     in_place: bool = False) -> np.ndarray:
    """The activation ``spec`` of ``x``; ``in_place`` lets it overwrite ``x`` where it can."""
    if in_place and spec.get("type") in IN_PLACE:
        y = IN_PLACE[spec["type"]](x, spec)
        if y is not None:
            return y
    fn = ACTIVATIONS.get(spec.get("type"))
    if fn is None:
        raise UnsupportedLayer(f"expected an activation the reference executor supports "
                          f"({', '.join(ACTIVATIONS)}), received {spec.get('type')!r}", layer=layer)
    return fn(x, spec).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# sliding windows: explicit pad -> (first source index, output size) per axis

@dataclass(frozen=True)
class Window:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    first: tuple[int, int]       # source index of the first tap of output (0, 0); may be < 0
    out: tuple[int, int]         # output height, width

    def margins(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """(before, after) per axis: how far the taps reach outside an input of ``size`` (H, W)."""
        widths = []
        for axis in (0, 1):
            first = self.first[axis]
            last = first + (self.out[axis] - 1) * self.strides[axis] + \
                effective_kernel(self.kernel[axis], self.dilation[axis]) - 1
            widths.append((max(0, -first), max(0, last - (size[axis] - 1))))
        return widths

    def frame(self, x: np.ndarray, fill: float) -> tuple[np.ndarray, tuple[int, int]]:
        """``x`` (N, H, W, C) extended with ``fill`` just enough for every tap; and where the
        first tap of output (0, 0) sits in the extended array."""
        widths = self.margins(x.shape[1:3])
        base = (self.first[0] + widths[0][0], self.first[1] + widths[1][0])
        if any(w != (0, 0) for w in widths):
            x = np.pad(x, [(0, 0), *widths, (0, 0)], constant_values=fill)
        return x, base

    def taps(self, base: tuple[int, int]) -> Iterator[tuple[int, int, slice, slice]]:
        """(i, j, rows, cols): the source slices tap (i, j) reads for every output pixel."""
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = self.kernel, self.strides, self.dilation, self.out
        for i in range(kh):
            r = base[0] + i * dh
            for j in range(kw):
                c = base[1] + j * dw
                yield i, j, slice(r, r + (oh - 1) * sh + 1, sh), slice(c, c + (ow - 1) * sw + 1, sw)

    def im2col(self, xp: np.ndarray, base: tuple[int, int], out: np.ndarray) -> None:
        """Fill ``out`` (N, oh, ow, kh, kw, C) from the framed ``xp``: [:, y, x, i, j] is what tap
        (i, j) reads for output pixel (y, x) (as :meth:`taps`, all taps in one copy). Without
        dilation across, the kw taps of a kernel row are kw*C consecutive values of ``xp``,
        copied as one opaque record (bytes as they are) rather than as kw*C floats."""
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = self.kernel, self.strides, self.dilation, self.out
        n, c = xp.shape[0], xp.shape[-1]
        if out.size == 0:
            return
        if dw == 1 and xp.flags.c_contiguous and out.flags.c_contiguous:
            record = np.dtype((np.void, kw * c * xp.itemsize))
            s = xp.strides
            rows = np.ndarray((n, oh, ow, kh), record, buffer=xp, offset=base[0] * s[1] + base[1] * s[2],
                              strides=(s[0], sh * s[1], sw * s[2], dh * s[1]))
            np.copyto(out.reshape(n, oh, ow, kh, kw * c).view(record)[..., 0], rows)
            return
        spans = (effective_kernel(kh, dh), effective_kernel(kw, dw))
        v = sliding_window_view(xp, spans, axis=(1, 2))           # (N, H', W', C, span_h, span_w)
        v = v[:, base[0]::sh, base[1]::sw][:, :oh, :ow, :, ::dh, ::dw]
        np.copyto(out, v.transpose(0, 1, 2, 4, 5, 3))

    def real_counts(self, size: tuple[int, int], dtype: Any) -> np.ndarray:
        """(1, oh, ow, 1): how many real (not padded) pixels each window covers."""
        ones, base = self.frame(np.ones((1, size[0], size[1], 1), dtype), 0.0)
        count = np.zeros((1, *self.out, 1), dtype)
        for _, _, rows, cols in self.taps(base):
            count += ones[:, rows, cols, :]
        return count


def window(x: np.ndarray, kernel: tuple, strides: tuple, dilation: tuple, pad: tuple) -> Window:
    """The windows of a conv/pool on input ``x`` (N, H, W, C) with explicit ``pad`` (may be < 0)."""
    top, bottom, left, right = (int(p) for p in pad)
    size = x.shape[1:3]
    out = []
    for axis, (before, after) in enumerate(((top, bottom), (left, right))):
        span = size[axis] + before + after - effective_kernel(kernel[axis], dilation[axis])
        out.append(span // strides[axis] + 1 if span >= 0 else 0)
    if min(out) < 1:
        raise ExportError(f"expected the {kernel[0]}x{kernel[1]} window with pad {list(pad)} "
                          f"to fit the {size[0]}x{size[1]} input, received an empty output")
    return Window(tuple(kernel), tuple(strides), tuple(dilation), (-top, -left), tuple(out))


def _image(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Run a windowed op on a rank-2 (W, C) tensor as on the 1 x W image (Conv1D)."""
    def run(op: Any, xs: list[np.ndarray], ctx: "Context") -> np.ndarray:
        if xs[0].ndim != 3:
            return fn(op, xs, ctx)
        y = fn(op, [xs[0][:, None]] + xs[1:], ctx)
        return y.reshape(y.shape[0], *y.shape[2:])
    return run


# ---------------------------------------------------------------------------------------------
# operations: f(op, inputs, context) -> output (before the op's activation)

Casts = dict[int, tuple[np.ndarray, np.ndarray]]


@dataclass
class Context:
    """A run's precision and what it reuses: ``casts`` maps id(weight) -> (weight, cast), shared by
    every run of an export's kept graph (it holds the weight, so the id stays its own); ``scratch``
    is the run's im2col buffer, grown to the largest convolution."""
    dtype: Any = np.float32
    casts: Casts = field(default_factory=dict, repr=False)
    scratch: np.ndarray | None = field(default=None, repr=False)

    def array(self, a: np.ndarray | None) -> np.ndarray | None:
        """A weight as written (float32), computed in the run's precision; cast once per array.
        A contiguous array already in that precision is used as it is (a copy would have the
        same layout); operations never write into a weight, nor return one."""
        if a is None:
            return None
        kept = self.casts.get(id(a))
        if kept is None or kept[0] is not a:
            compact = a.flags.c_contiguous or a.flags.f_contiguous
            cast = np.asarray(a, np.float32).astype(self.dtype, copy=not compact)
            kept = self.casts[id(a)] = (a, cast)
        return kept[1]

    def buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` in the run's precision, a view of the
        run's one scratch buffer: valid until the next call."""
        size = math.prod(shape)
        if self.scratch is None or self.scratch.size < size:
            self.scratch = np.empty(size, self.dtype)
        return self.scratch[:size].reshape(shape)


def _channels(x: np.ndarray, expected: int) -> None:
    if x.shape[-1] != expected:
        raise ExportError(f"expected {expected} input channels for the weights, received {x.shape[-1]}")


def _with_bias(y: np.ndarray, op: Any, ctx: Context) -> np.ndarray:
    """``y + bias``, written into ``y`` (a fresh result of the operation, never an input). On a
    C-contiguous ``y`` with few channels, rows are joined and the bias tiled to match: the same
    additions, in fewer and longer inner loops."""
    b = ctx.array(op.bias)
    if b is None:
        return y
    if b.ndim != 1 or y.shape[-1] != b.size:
        return y + b                      # as written; the shape check reports the mismatch
    rows, reps = y.size // max(b.size, 1), 1
    while y.flags.c_contiguous and rows > 0 and b.size * reps < 1024 and rows % (2 * reps) == 0:
        reps *= 2
    if reps > 1:
        np.add(y.reshape(-1, b.size * reps), np.tile(b, reps), out=y.reshape(-1, b.size * reps))
        return y
    return np.add(y, b, out=y)


@_image
def _conv2d(op: ops.Conv2D, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """im2col by kernel taps, then one matmul (per group): kernel (kh, kw, in/groups, out)."""
    x, w = xs[0], ctx.array(op.kernel)
    kh, kw, cg, cout = w.shape
    _channels(x, cg * op.groups)
    win = window(x, (kh, kw), op.strides, op.dilation, op.pad)
    n, (oh, ow), taps, g = x.shape[0], win.out, kh * kw, op.groups
    if taps == 1 and win.strides == (1, 1) and win.first == (0, 0) and win.out == x.shape[1:3]:
        cols = np.ascontiguousarray(x)                  # 1x1, stride 1, no pad: its own im2col
    else:
        xp, base = win.frame(x, 0.0)
        cols = ctx.buffer((n, oh, ow, taps, cg * g))    # (N, oh, ow, T, C)
        win.im2col(xp, base, cols.reshape(n, oh, ow, kh, kw, cg * g))
    return _with_bias(im2col_matmul(cols, w, g).reshape(n, oh, ow, cout), op, ctx)


def im2col_matmul(cols: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """(rows, cout): ``cols`` (..., T, C) times the kernel (kh, kw, C/groups, cout), one matmul
    per group (tap-major rows of the kernel, as the taps of ``cols``)."""
    kh, kw, cg, cout = w.shape
    taps, g = kh * kw, groups
    rows = cols.size // (taps * cg * g)
    if g == 1:
        return cols.reshape(rows, taps * cg) @ w.reshape(taps * cg, cout)
    cols = cols.reshape(rows, taps, g, cg).transpose(2, 0, 1, 3).reshape(g, rows, taps * cg)
    wg = w.reshape(taps, cg, g, cout // g).transpose(2, 0, 1, 3).reshape(g, taps * cg, cout // g)
    return np.matmul(cols, wg).transpose(1, 0, 2).reshape(rows, cout)


def _conv2d_transpose(op: ops.Conv2DTranspose, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Kernel (kh, kw, out, in), used as-is: input pixel (i, j) adds x*W[a, b] to output
    (i*s + a, j*s + b), one matmul per kernel tap; the full output is ``in*s + max(k - s, 0)``
    (TensorFlow's 'valid' size), then ``crop`` [top, bottom, left, right]."""
    x, w = xs[0], ctx.array(op.kernel)
    kh, kw, cout, cin = w.shape
    _channels(x, cin)
    sh, sw = op.strides
    n, h, wd, _ = x.shape
    full = (h * sh + max(kh - sh, 0), wd * sw + max(kw - sw, 0))
    y = np.zeros((n, *full, cout), x.dtype)
    flat = x.reshape(-1, cin)
    for a in range(kh):
        for b in range(kw):
            y[:, a:a + (h - 1) * sh + 1:sh, b:b + (wd - 1) * sw + 1:sw, :] += \
                (flat @ w[a, b].T).reshape(n, h, wd, cout)
    top, bottom, left, right = (int(v) for v in op.crop)
    return _with_bias(y[:, top:full[0] - bottom, left:full[1] - right, :], op, ctx)


def _depthwise_conv2d(op: ops.DepthwiseConv2D, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Kernel (kh, kw, C, M); output channel c*M + m reads input channel c. A 1x1 one on a
    (N, C) tensor (a BatchNormalization after a Dense) is a per-channel scale and bias."""
    x, w = xs[0], ctx.array(op.kernel)
    kh, kw, c, m = w.shape
    if x.ndim == 2 and (kh, kw, m) == (1, 1, 1):
        return _with_bias(x * w[0, 0, :, 0], op, ctx)
    if x.ndim == 3:
        return _image(_depthwise_conv2d)(op, xs, ctx)
    if x.shape[-1] != c:
        raise ExportError(f"expected {c} input channels for the weights (depth multiplier {m}), "
                          f"received {x.shape[-1]}")
    win = window(x, (kh, kw), op.strides, op.dilation, op.pad)
    xp, base = win.frame(x, 0.0)
    acc = np.zeros((x.shape[0], *win.out, c, m), x.dtype)
    for i, j, r, cc in win.taps(base):
        acc += xp[:, r, cc, :, None] * w[i, j]
    return _with_bias(acc.reshape(x.shape[0], *win.out, c * m), op, ctx)


@_image
def _pool2d(op: ops.Pool2D, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Max: the maximum over the real pixels of each window (padded positions are -inf).
    Average: the sum over each window / the number of real pixels in it."""
    x = xs[0]
    win = window(x, op.size, op.strides, (1, 1), op.pad)
    inside = all(w == (0, 0) for w in win.margins(x.shape[1:3]))    # every window: real pixels only
    counts = None if inside and op.mode == "max" else win.real_counts(x.shape[1:3], x.dtype)
    if counts is not None and np.any(counts == 0):
        raise ExportError("expected every pooling window to cover at least one input pixel, received "
                          "windows entirely outside the input (wrong pad or offset)")
    xp, base = win.frame(x, -np.inf if op.mode == "max" else 0.0)
    if op.mode == "max":
        taps = [xp[:, r, c, :] for _, _, r, c in win.taps(base)]
        if len(taps) == 1:
            return taps[0].copy()
        out = np.maximum(taps[0], taps[1])
        for tap in taps[2:]:
            np.maximum(out, tap, out=out)
        return out
    out = np.zeros((x.shape[0], *win.out, x.shape[-1]), x.dtype)
    for _, _, r, c in win.taps(base):
        out += xp[:, r, c, :]
    return out / counts


def _dense(op: ops.Dense, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Kernel (in, out); applies to the last axis, as Keras' Dense."""
    w = ctx.array(op.kernel)
    _channels(xs[0], w.shape[0])
    return _with_bias(xs[0] @ w, op, ctx)


_ELEMENTWISE = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide}


def _elementwise(op: ops.Elementwise, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Add/subtract/multiply/divide over the inputs, with numpy broadcasting (a squeeze-excite
    (1, 1, C) scale) and the scalar ``constants`` at their argument positions."""
    fn = _ELEMENTWISE[op.mode]
    args: list[Any] = list(xs)
    for position, value in op.constants:
        args.insert(position, xs[0].dtype.type(value))
    try:
        out = args[0]
        for a in args[1:]:
            out = fn(out, a)
    except ValueError as err:
        raise ExportError(f"expected inputs that broadcast, received {[x.shape[1:] for x in xs]}") from err
    return np.asarray(out, dtype=xs[0].dtype)


def _batched(axis: int) -> int:
    """An axis of the unbatched shape (the manifest's convention; -1 the channels) on (N, ...)."""
    return axis if axis < 0 else axis + 1


def _space_to_depth(op: ops.SpaceToDepth, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """TensorFlow's order: out[i, j, (bi*b + bj)*C + c] = in[i*b + bi, j*b + bj, c]."""
    x, b = xs[0], op.block
    n, h, w, c = x.shape
    if h % b or w % b:
        raise ExportError(f"expected a height and width divisible by block size {b}, received {h}x{w}")
    x = x.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // b, w // b, b * b * c)


def _crop(op: ops.Crop, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    top, bottom, left, right = op.crop
    x = xs[0]
    return x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :]


def _bilinear_axis(size: int, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TensorFlow's resize with half-pixel centres along one axis: (lower, upper, weight of upper)."""
    src = (np.arange(size * scale) + 0.5) / scale - 0.5
    floor = np.floor(src)
    lower = np.clip(floor, 0, size - 1).astype(int)
    upper = np.clip(np.ceil(src), 0, size - 1).astype(int)
    return lower, upper, src - floor


def _resize(op: ops.Resize, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Nearest: each pixel repeated. Bilinear: ``tf.image.resize`` (Keras' UpSampling2D),
    half-pixel centres, edge pixels clamped."""
    x = xs[0]
    sh, sw = op.size
    if op.interpolation == "nearest":
        return np.repeat(np.repeat(x, sh, axis=1), sw, axis=2)
    lo, hi, t = _bilinear_axis(x.shape[1], sh)
    x = x[:, lo] + (x[:, hi] - x[:, lo]) * t.astype(x.dtype)[None, :, None, None]
    lo, hi, t = _bilinear_axis(x.shape[2], sw)
    return x[:, :, lo] + (x[:, :, hi] - x[:, :, lo]) * t.astype(x.dtype)[None, None, :, None]


def _rescaling(op: ops.Rescaling, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    dt = xs[0].dtype
    return xs[0] * np.asarray(op.scale, dt) + np.asarray(op.offset, dt)


def _prelu(op: ops.PReLU, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Keras' PReLU: relu(x) - alpha*relu(-x); alpha (H, W, C) with shared axes of size 1."""
    x, alpha = xs[0], ctx.array(op.alpha)
    return np.maximum(x, 0) - alpha * np.maximum(-x, 0)


def _batch_norm(op: ops.BatchNorm, xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """gamma (x - mean) / sqrt(var + eps) + beta along the BN's axis (batch included)."""
    x = xs[0]
    shape = [1] * x.ndim
    shape[op.axis] = -1
    mean, var = ctx.array(op.mean).reshape(shape), ctx.array(op.var).reshape(shape)
    y = (x - mean) / np.sqrt(var + x.dtype.type(op.eps))
    if op.gamma is not None:
        y = y * ctx.array(op.gamma).reshape(shape)
    return y if op.beta is None else y + ctx.array(op.beta).reshape(shape)


Run = Callable[[Any, list[np.ndarray], Context], np.ndarray]

OPS: dict[type, Run] = {
    ops.Conv2D: _conv2d,
    ops.DepthwiseConv2D: _depthwise_conv2d,
    ops.Conv2DTranspose: _conv2d_transpose,
    ops.Dense: _dense,
    ops.BatchNorm: _batch_norm,
    ops.Pool2D: _pool2d,
    ops.GlobalPool2D: lambda op, xs, ctx: (np.max if op.mode == "max" else np.mean)(
        xs[0], axis=(1, 2), keepdims=op.keepdims),
    ops.Elementwise: _elementwise,
    ops.Concat: lambda op, xs, ctx: np.concatenate(xs, axis=_batched(op.axis)),
    ops.Resize: _resize,
    ops.Pad: lambda op, xs, ctx: np.pad(xs[0], ((0, 0), op.pad[:2], op.pad[2:], (0, 0))),
    ops.Crop: _crop,
    ops.Reshape: lambda op, xs, ctx: xs[0].reshape(xs[0].shape[0], *op.target),
    ops.Flatten: lambda op, xs, ctx: xs[0].reshape(xs[0].shape[0], -1),
    ops.Softmax: lambda op, xs, ctx: _softmax(xs[0], _batched(op.axis)),
    ops.Activation: lambda op, xs, ctx: xs[0],          # the op's activation does the work
    ops.Rescaling: _rescaling,
    ops.PReLU: _prelu,
    ops.SpaceToDepth: _space_to_depth,
}


# ---------------------------------------------------------------------------------------------

def _check_shape(node: Node, y: np.ndarray) -> None:
    want = node.shape
    if want is None:
        return
    got = y.shape[1:]
    if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
        raise ExportError(f"expected output shape {tuple(want)} from the manifest, computed {tuple(got)}")


def _inputs(graph: Graph, inputs: Sequence[np.ndarray], dtype: Any) -> dict[str, np.ndarray]:
    specs = graph.inputs
    if len(inputs) != len(specs):
        raise ExportError(f"expected {len(specs)} input arrays ({', '.join(specs)}), received {len(inputs)}")
    out = {}
    for (name, shape), x in zip(specs.items(), inputs):
        x = np.asarray(x)
        if x.ndim != len(shape) + 1 or any(s is not None and s != d for s, d in zip(shape, x.shape[1:])):
            raise ExportError(f"expected input '{name}' of shape (N, {', '.join(map(str, shape))}), "
                              f"received {x.shape}")
        out[name] = np.ascontiguousarray(x, dtype=dtype)
    return out


_CASTS: dict[int, dict[np.dtype, Casts]] = {}


def _kept_casts(graph: Graph, dtype: np.dtype) -> Casts:
    """The weight casts of an export's kept graph in ``dtype``, for as long as the graph lives."""
    key = id(graph)
    if key not in _CASTS:
        _CASTS[key] = {}
        weakref.finalize(graph, _CASTS.pop, key, None)
    return _CASTS[key].setdefault(dtype, {})


def supported() -> str:
    return ", ".join(cls.__name__ for cls in OPS)


def run(source: Export | Graph, inputs: Sequence[np.ndarray], *, padding: str = "pad", keep: bool = False,
        dtype: str = "float32") -> dict[str, np.ndarray]:
    """Run an export (or a graph of operations) on ``inputs`` (one batched array (N, ...) per model
    input). Returns the outputs by name; with ``keep`` every node's output by node name.
    ``padding``: "pad" (explicit pads) or "offset" (MPS's window rule; exports only). Raises
    :class:`ExportError` naming the layer for an operation or activation it does not know, or
    shapes that disagree."""
    if padding not in PADDING_MODES:
        raise ValueError(f"expected padding in {PADDING_MODES}, received {padding!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"expected dtype float32 or float64, received {dtype!r}")
    where = str(source.root) if isinstance(source, Export) else None
    if isinstance(source, Export):
        graph = source.kept_graph(windows=padding)
        ctx = Context(np.dtype(dtype), _kept_casts(graph, np.dtype(dtype)))
    elif padding != "pad":
        raise ValueError("expected padding 'pad' for a graph (offsets exist in exports only)")
    else:
        graph = source
        ctx = Context(np.dtype(dtype))          # a graph's arrays may change between runs
    try:
        tensors = _inputs(graph, inputs, ctx.dtype)
    except ExportError as err:
        raise err.at(file=where)
    outputs = list(graph.outputs)
    nodes = list(graph)
    last_use = {name: i for i, n in enumerate(nodes) for name in n.inputs}
    for i, node in enumerate(nodes):
        fn = OPS.get(type(node.op))
        if fn is None:
            what = f"{type(node.op).__name__}" + (f" '{node.op.class_name}'" if isinstance(node.op, ops.Opaque) else "")
            raise UnsupportedLayer(f"expected an operation the reference executor runs ({supported()}), "
                                   f"received {what}", file=where, layer=node.name)
        try:
            xs = [tensors[n] for n in node.inputs]
        except KeyError as err:
            raise ExportError(f"expected input {err.args[0]!r} to be computed before this layer",
                              file=where, layer=node.name) from None
        try:
            y = np.asarray(fn(node.op, xs, ctx), ctx.dtype)
            owned = y.flags.writeable and not any(np.may_share_memory(y, x) for x in xs)
            y = apply_activation(y, node.op.activation or ops.linear(), in_place=owned)
            _check_shape(node, y)
        except ExportError as err:
            raise err.at(file=where, layer=node.name)
        tensors[node.name] = y
        if not keep:                              # free what no later node and no output reads
            for n in node.inputs:
                if last_use.get(n) == i and n not in outputs:
                    tensors.pop(n, None)
    if keep:
        return {n.name: tensors[n.name] for n in nodes}
    return {name: tensors[name] for name in outputs}
