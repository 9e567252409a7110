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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import ExportError
from .exported import Export
from .mps import effective_kernel, entry_geometry, entry_offset

PADDING_MODES = ("pad", "offset")


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


def apply_activation(x: np.ndarray, spec: dict[str, Any], layer: str | None = None) -> np.ndarray:
    fn = ACTIVATIONS.get(spec.get("type"))
    if fn is None:
        raise ExportError(f"expected an activation the reference executor supports "
                          f"({', '.join(ACTIVATIONS)}), received {spec.get('type')!r}", layer=layer)
    return fn(x, spec).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# sliding windows: explicit pad or MPS offset -> (first source index, output size) per axis

@dataclass(frozen=True)
class Window:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    first: tuple[int, int]       # source index of the first tap of output (0, 0); may be < 0
    out: tuple[int, int]         # output height, width

    def frame(self, x: np.ndarray, fill: float) -> tuple[np.ndarray, tuple[int, int]]:
        """``x`` (N, H, W, C) extended with ``fill`` just enough for every tap; and where the
        first tap of output (0, 0) sits in the extended array."""
        widths, base = [(0, 0)], []
        for axis in (0, 1):
            size, first = x.shape[1 + axis], self.first[axis]
            last = first + (self.out[axis] - 1) * self.strides[axis] + \
                effective_kernel(self.kernel[axis], self.dilation[axis]) - 1
            lo, hi = max(0, -first), max(0, last - (size - 1))
            widths.append((lo, hi))
            base.append(first + lo)
        widths.append((0, 0))
        if any(w != (0, 0) for w in widths):
            x = np.pad(x, widths, constant_values=fill)
        return x, (base[0], base[1])

    def taps(self, base: tuple[int, int]) -> Iterator[tuple[int, int, slice, slice]]:
        """(i, j, rows, cols): the source slices tap (i, j) reads for every output pixel."""
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = self.kernel, self.strides, self.dilation, self.out
        for i in range(kh):
            r = base[0] + i * dh
            for j in range(kw):
                c = base[1] + j * dw
                yield i, j, slice(r, r + (oh - 1) * sh + 1, sh), slice(c, c + (ow - 1) * sw + 1, sw)

    def real_counts(self, size: tuple[int, int], dtype: Any) -> np.ndarray:
        """(1, oh, ow, 1): how many real (not padded) pixels each window covers."""
        ones, base = self.frame(np.ones((1, size[0], size[1], 1), dtype), 0.0)
        count = np.zeros((1, *self.out, 1), dtype)
        for _, _, rows, cols in self.taps(base):
            count += ones[:, rows, cols, :]
        return count


def window(entry: dict[str, Any], x: np.ndarray, mode: str) -> Window:
    """The windows of a conv/pool entry on input ``x`` under ``mode`` ("pad" or "offset")."""
    kernel, strides, dilation = entry_geometry(entry)
    top, bottom, left, right = (int(p) for p in entry.get("pad", [0, 0, 0, 0]))
    size = x.shape[1:3]
    out = []
    for axis, (before, after) in enumerate(((top, bottom), (left, right))):
        span = size[axis] + before + after - effective_kernel(kernel[axis], dilation[axis])
        out.append(span // strides[axis] + 1 if span >= 0 else 0)
    if mode == "pad":
        first = (-top, -left)
    else:
        offset = entry_offset(entry)
        first = tuple(offset[a] - (effective_kernel(kernel[a], dilation[a]) >> 1) for a in (0, 1))
        shape = entry.get("output_shape") or [None, None]
        out = [int(shape[a]) if shape[a] is not None else out[a] for a in (0, 1)]
    if min(out) < 1:
        raise ExportError(f"expected the {kernel[0]}x{kernel[1]} window with pad {entry.get('pad')} "
                          f"to fit the {size[0]}x{size[1]} input, received an empty output",
                          layer=entry.get("name"))
    return Window(tuple(kernel), tuple(strides), tuple(dilation), first, tuple(out))


# ---------------------------------------------------------------------------------------------
# layer types: f(entry, inputs, context) -> output (before the entry's activation)

@dataclass
class Context:
    export: Export
    padding: str = "pad"
    dtype: Any = np.float32

    def weights(self, entry: dict[str, Any]) -> np.ndarray:
        return self.export.tensor(entry, "weights").astype(self.dtype)

    def bias(self, entry: dict[str, Any]) -> np.ndarray | None:
        return self.export.tensor(entry, "bias").astype(self.dtype) if "bias" in entry else None


Op = Callable[[dict[str, Any], list[np.ndarray], Context], np.ndarray]


def _channels(entry: dict[str, Any], x: np.ndarray, expected: int) -> None:
    if x.shape[-1] != expected:
        raise ExportError(f"expected {expected} input channels for the weights, received "
                          f"{x.shape[-1]}", layer=entry["name"])


def _with_bias(y: np.ndarray, entry: dict[str, Any], ctx: Context) -> np.ndarray:
    b = ctx.bias(entry)
    return y if b is None else y + b


def _conv2d(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """im2col by kernel taps, then one matmul (per group): weights OHWI (out, kh, kw, in/groups)."""
    x, w = xs[0], ctx.weights(entry)
    cout, kh, kw, cg = w.shape
    groups = int(entry.get("groups", 1) or 1)
    _channels(entry, x, cg * groups)
    win = window(entry, x, ctx.padding)
    xp, base = win.frame(x, 0.0)
    n, (oh, ow) = x.shape[0], win.out
    cols = np.stack([xp[:, r, c, :] for _, _, r, c in win.taps(base)], axis=3)  # (N, oh, ow, T, C)
    rows, taps = n * oh * ow, kh * kw
    if groups == 1:
        y = cols.reshape(rows, taps * cg) @ w.reshape(cout, taps * cg).T
    else:
        cols = cols.reshape(rows, taps, groups, cg).transpose(2, 0, 1, 3).reshape(groups, rows, taps * cg)
        wg = w.reshape(groups, cout // groups, taps * cg).transpose(0, 2, 1)   # (g, T·cg, out/g)
        y = np.matmul(cols, wg).transpose(1, 0, 2).reshape(rows, cout)
    return _with_bias(y.reshape(n, oh, ow, cout), entry, ctx)


def _conv2d_transpose(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Weights OHWI (out, kh, kw, in), used as-is: input pixel (i, j) adds x·W[:, a, b, :] to output
    (i·s + a, j·s + b), one matmul per kernel tap; the full output is ``in·s + max(k − s, 0)``
    (TensorFlow's 'valid' size), then the entry's ``crop`` [top, bottom, left, right]. Windows
    are given by ``crop``, not by an MPS offset, in both padding modes."""
    x, w = xs[0], ctx.weights(entry)
    cout, kh, kw, cin = w.shape
    _channels(entry, x, cin)
    sh, sw = (int(v) for v in entry.get("strides", [1, 1]))
    n, h, wd, _ = x.shape
    full = (h * sh + max(kh - sh, 0), wd * sw + max(kw - sw, 0))
    y = np.zeros((n, *full, cout), x.dtype)
    flat = x.reshape(-1, cin)
    for a in range(kh):
        for b in range(kw):
            y[:, a:a + (h - 1) * sh + 1:sh, b:b + (wd - 1) * sw + 1:sw, :] += \
                (flat @ w[:, a, b, :].T).reshape(n, h, wd, cout)
    top, bottom, left, right = (int(v) for v in entry.get("crop", [0, 0, 0, 0]))
    return _with_bias(y[:, top:full[0] - bottom, left:full[1] - right, :], entry, ctx)


def _depthwise_conv2d(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Weights OHW (C·M, kh, kw); output channel c·M + m reads input channel c. A 1×1 one on a
    (N, C) tensor (a BatchNormalization after a Dense) is a per-channel scale and bias."""
    x, w = xs[0], ctx.weights(entry)
    if x.ndim == 2 and w.shape[1:] == (1, 1) and int(entry.get("depth_multiplier", 1)) == 1:
        return _with_bias(x * w[:, 0, 0], entry, ctx)
    cm, kh, kw = w.shape
    m = int(entry.get("depth_multiplier", 1))
    c = x.shape[-1]
    if c * m != cm:
        raise ExportError(f"expected {cm // m} input channels for the weights (depth multiplier {m}), "
                          f"received {c}", layer=entry["name"])
    w = w.reshape(c, m, kh, kw)
    win = window(entry, x, ctx.padding)
    xp, base = win.frame(x, 0.0)
    acc = np.zeros((x.shape[0], *win.out, c, m), x.dtype)
    for i, j, r, cc in win.taps(base):
        acc += xp[:, r, cc, :, None] * w[:, :, i, j]
    return _with_bias(acc.reshape(x.shape[0], *win.out, cm), entry, ctx)


def _pool(entry: dict[str, Any], x: np.ndarray, ctx: Context, fill: float) -> tuple[Window, np.ndarray, Iterator]:
    win = window(entry, x, ctx.padding)
    counts = win.real_counts(x.shape[1:3], x.dtype)
    if np.any(counts == 0):
        raise ExportError("expected every pooling window to cover at least one input pixel, received "
                          "windows entirely outside the input (wrong pad or offset)", layer=entry["name"])
    xp, base = win.frame(x, fill)
    return win, counts, ((r, c, xp) for _, _, r, c in win.taps(base))


def _max_pool2d(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Maximum over the real pixels of each window (padded positions are -inf)."""
    _, _, taps = _pool(entry, xs[0], ctx, -np.inf)
    out = None
    for r, c, xp in taps:
        out = xp[:, r, c, :].copy() if out is None else np.maximum(out, xp[:, r, c, :], out=out)
    return out


def _avg_pool2d(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Sum over each window / the number of real pixels in it."""
    win, counts, taps = _pool(entry, xs[0], ctx, 0.0)
    out = np.zeros((xs[0].shape[0], *win.out, xs[0].shape[-1]), xs[0].dtype)
    for r, c, xp in taps:
        out += xp[:, r, c, :]
    return out / counts


def _dense(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Weights OI (out, in); applies to the last axis, as Keras' Dense."""
    w = ctx.weights(entry)
    _channels(entry, xs[0], w.shape[1])
    return _with_bias(xs[0] @ w.T, entry, ctx)


def _elementwise(op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Op:
    """Add/subtract/multiply/divide over the inputs, with numpy broadcasting (a squeeze-excite
    (1, 1, C) scale) and the entry's scalar ``constants`` at their argument positions."""
    def apply(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
        args: list[Any] = list(xs)
        for c in entry.get("constants", []):
            args.insert(c["position"], xs[0].dtype.type(c["value"]))
        try:
            out = args[0]
            for a in args[1:]:
                out = op(out, a)
        except ValueError as err:
            raise ExportError(f"expected inputs that broadcast, received {[x.shape[1:] for x in xs]}",
                              layer=entry["name"]) from err
        return np.asarray(out, dtype=xs[0].dtype)
    return apply


def _concatenate(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """``axis`` indexes the unbatched shape (the manifest's convention); -1 is the channels."""
    axis = int(entry.get("axis", -1))
    return np.concatenate(xs, axis=axis if axis < 0 else axis + 1)


def _space_to_depth(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """TensorFlow's order: out[i, j, (bi·b + bj)·C + c] = in[i·b + bi, j·b + bj, c]."""
    x, b = xs[0], int(entry.get("block_size", 2))
    n, h, w, c = x.shape
    if h % b or w % b:
        raise ExportError(f"expected a height and width divisible by block size {b}, received {h}x{w}",
                          layer=entry["name"])
    x = x.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // b, w // b, b * b * c)


def _global_pool(reduce: Callable[..., np.ndarray]) -> Op:
    def op(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
        return reduce(xs[0], axis=(1, 2), keepdims=bool(entry.get("keepdims", False)))
    return op


def _zero_padding2d(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    top, bottom, left, right = (int(p) for p in entry["pad"])
    return np.pad(xs[0], ((0, 0), (top, bottom), (left, right), (0, 0)))


def _cropping2d(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    top, bottom, left, right = (int(p) for p in entry["crop"])
    x = xs[0]
    return x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :]


def _upsampling2d(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    if entry.get("interpolation", "nearest") != "nearest":
        raise ExportError(f"expected nearest upsampling, received {entry.get('interpolation')}",
                          layer=entry["name"])
    sh, sw = (int(s) for s in entry.get("size", [2, 2]))
    return np.repeat(np.repeat(xs[0], sh, axis=1), sw, axis=2)


def _softmax_layer(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    axis = int(entry.get("axis", -1))
    return _softmax(xs[0], axis if axis < 0 else axis + 1)


def _rescaling(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    dt = xs[0].dtype
    return xs[0] * np.asarray(entry.get("scale", 1.0), dt) + np.asarray(entry.get("offset", 0.0), dt)


def _prelu(entry: dict[str, Any], xs: list[np.ndarray], ctx: Context) -> np.ndarray:
    """Keras' PReLU: relu(x) - alpha·relu(-x); alpha (H, W, C) with shared axes of size 1."""
    x, alpha = xs[0], ctx.weights(entry)
    return np.maximum(x, 0) - alpha * np.maximum(-x, 0)


OPS: dict[str, Op] = {
    "conv2d": _conv2d,
    "depthwise_conv2d": _depthwise_conv2d,
    "conv2d_transpose": _conv2d_transpose,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "activation": lambda entry, xs, ctx: xs[0],        # the entry's activation does the work
    "dense": _dense,
    "add": _elementwise(np.add),
    "subtract": _elementwise(np.subtract),
    "multiply": _elementwise(np.multiply),
    "divide": _elementwise(np.divide),
    "concatenate": _concatenate,
    "space_to_depth": _space_to_depth,
    "global_avg_pool2d": _global_pool(np.mean),
    "global_max_pool2d": _global_pool(np.max),
    "zero_padding2d": _zero_padding2d,
    "cropping2d": _cropping2d,
    "upsampling2d": _upsampling2d,
    "flatten": lambda entry, xs, ctx: xs[0].reshape(xs[0].shape[0], -1),
    "reshape": lambda entry, xs, ctx: xs[0].reshape(xs[0].shape[0], *entry["target_shape"]),
    "softmax": _softmax_layer,
    "rescaling": _rescaling,
    "prelu": _prelu,
}


# ---------------------------------------------------------------------------------------------

def _check_shape(entry: dict[str, Any], y: np.ndarray) -> None:
    want = entry.get("output_shape")
    if want is None:
        return
    got = y.shape[1:]
    if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
        raise ExportError(f"expected output shape {tuple(want)} from the manifest, computed "
                          f"{tuple(got)}", layer=entry["name"])


def _inputs(export: Export, inputs: Sequence[np.ndarray], dtype: Any) -> dict[str, np.ndarray]:
    specs = export.manifest["inputs"]
    if len(inputs) != len(specs):
        raise ExportError(f"expected {len(specs)} input arrays ({', '.join(s['name'] for s in specs)}), "
                          f"received {len(inputs)}", file=str(export.root))
    out = {}
    for spec, x in zip(specs, inputs):
        x = np.asarray(x)
        shape = spec["shape"]
        if x.ndim != len(shape) + 1 or any(s is not None and s != d for s, d in zip(shape, x.shape[1:])):
            raise ExportError(f"expected input '{spec['name']}' of shape (N, {', '.join(map(str, shape))}), "
                              f"received {x.shape}", file=str(export.root))
        out[spec["name"]] = np.ascontiguousarray(x, dtype=dtype)
    return out


def run(export: Export, inputs: Sequence[np.ndarray], *, padding: str = "pad", keep: bool = False,
        dtype: str = "float32") -> dict[str, np.ndarray]:
    """Run ``export``'s network on ``inputs`` (one batched array (N, ...) per manifest input).

    Returns the outputs by manifest output name; with ``keep`` every layer's output by layer name.
    ``padding``: "pad" (explicit pads) or "offset" (MPS's window rule). Raises :class:`ExportError`
    naming the layer for a type or activation it does not know, or shapes that disagree."""
    if padding not in PADDING_MODES:
        raise ValueError(f"expected padding in {PADDING_MODES}, received {padding!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"expected dtype float32 or float64, received {dtype!r}")
    ctx = Context(export, padding, np.dtype(dtype))
    tensors = _inputs(export, inputs, ctx.dtype)
    layers = export.layers
    outputs = list(export.manifest["outputs"])
    last_use = {name: i for i, e in enumerate(layers) for name in e["inputs"]}
    for i, entry in enumerate(layers):
        name = entry["name"]
        op = OPS.get(entry["type"])
        if op is None:
            raise ExportError(f"expected a layer type the reference executor supports "
                              f"({', '.join(sorted(OPS))}), received {entry['type']!r}",
                              file=str(export.root), layer=name)
        try:
            xs = [tensors[n] for n in entry["inputs"]]
        except KeyError as err:
            raise ExportError(f"expected input {err.args[0]!r} to be computed before this layer",
                              file=str(export.root), layer=name) from None
        try:
            y = op(entry, xs, ctx)
            y = apply_activation(np.asarray(y, ctx.dtype), entry.get("activation") or {"type": "linear"}, name)
            _check_shape(entry, y)
        except ExportError as err:
            raise err.at(file=str(export.root), layer=name)
        tensors[name] = y
        if not keep:                              # free what no later layer and no output reads
            for n in entry["inputs"]:
                if last_use.get(n) == i and n not in outputs:
                    tensors.pop(n, None)
    if keep:
        return {e["name"]: tensors[e["name"]] for e in layers}
    return {name: tensors[name] for name in outputs}
