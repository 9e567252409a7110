"""A numpy evaluator of a saved Core ML ML Program (``.mlpackage``), read back through coremltools.

Core ML predicts on macOS only, and coremltools evaluates no convolution in numpy; this runs a
saved program op by op on Linux so that an export can be checked there. The program is read with
coremltools' own milproto loader (what Core ML would run, after coremltools' pass pipeline), never
rebuilt from our side.

    prog = load_program("model.mlpackage")                 inputs, outputs, metadata, MIL program
    run(prog, {"image": x}) -> {"output": y}               outputs by the spec's output names
    run("model.mlpackage", {"image": x}, dtype="float64")  the export's own error, without fp32 noise

Tensors are NCHW, as in MIL. Computation is in ``dtype`` (float32 as a device accumulates, or
float64); float16 weights are upcast. A float16 program (``compute_precision=FLOAT16``) casts its
inputs to fp16 and its outputs back: every ``cast`` to or from fp16 rounds (``x.astype(float16)``),
so half storage is modelled where the program casts; between casts ops run in ``dtype``.

One small function per MIL op type in :data:`OPS` (opset iOS15 and what coremltools' default pass
pipeline fuses it into); an op type not there raises :class:`UnsupportedLayer` listing them.

Semantics that are easy to get wrong, as the iOS15 op definitions state them:

- ``conv`` weight (Cout, Cin/groups, kh, kw); ``conv_transpose`` weight (Cin, Cout/groups, kh, kw)
  (PyTorch's layout, no flip): input pixel i adds x·W[ci, co, a] to full output i·s + a·d, the full
  output is ``(in - 1)·s + (k - 1)·d + 1``, then ``pad`` [before, after] is cut from each side.
- ``pad_type="same"`` splits the total pad as TensorFlow (the odd pixel after); ``same_lower``
  before. Max pooling never reads padded cells; average pooling counts them unless
  ``exclude_padding_from_average``.
- ``space_to_depth``/``depth_to_space`` use TensorFlow's depth order (coremltools' TensorFlow
  frontend maps SpaceToDepth to it between NHWC<->NCHW transposes):
  out[n, (bi·b + bj)·C + c, i, j] = in[n, c, i·b + bi, j·b + bj]. ``pixel_unshuffle``/``pixel_shuffle``
  are PyTorch's order: channel c·b² + bi·b + bj.
- ``upsample_bilinear(align_corners=False)`` samples source x = clamp((i + ½)·in/out − ½, 0, in − 1),
  TensorFlow's half-pixel resize; ``align_corners=True`` samples i·(in − 1)/(out − 1).
  ``resize_bilinear``'s sampling modes are in :data:`_GRIDS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ExportError, UnsupportedLayer
from .reference import _erfc, _sigmoid, _softmax, _softplus

DTYPES = ("float32", "float64")


# ---------------------------------------------------------------------------------------------
# loading

@dataclass(frozen=True)
class Feature:
    """One input or output of the model description."""
    name: str
    kind: str                            # "multiArray" | "image" | another spec feature type
    shape: tuple[int, ...] = ()          # multiArray: its shape; image: (1, channels, height, width)
    data_type: str | None = None         # multiArray: "FLOAT32", "FLOAT16", ...
    color_layout: str | None = None      # image: "RGB", "BGR", "GRAYSCALE", ...


@dataclass
class Program:
    """A saved ML Program as coremltools loads it."""
    path: Path
    mil: Any                             # coremltools.converters.mil.Program
    inputs: tuple[Feature, ...]
    outputs: tuple[Feature, ...]
    metadata: dict[str, str] = field(default_factory=dict)   # author, version, user-defined keys

    @property
    def main(self) -> Any:
        return self.mil.functions["main"]


def _feature(ct: Any, desc: Any) -> Feature:
    kind = desc.type.WhichOneof("Type")
    if kind == "multiArrayType":
        t = desc.type.multiArrayType
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(t.dataType)
        return Feature(desc.name, "multiArray", tuple(int(s) for s in t.shape), data_type=dtype)
    if kind == "imageType":
        t = desc.type.imageType
        layout = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(t.colorSpace)
        channels = 1 if layout.startswith("GRAYSCALE") else 3
        return Feature(desc.name, "image", (1, channels, int(t.height), int(t.width)), color_layout=layout)
    return Feature(desc.name, str(kind).removesuffix("Type"))


def load_program(path: str | Path) -> Program:
    """Read a saved ``.mlpackage`` through coremltools (no model compilation, no TensorFlow)."""
    from ..targets.coreml.ct_env import import_coremltools
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milload
    path = Path(path)
    if not path.exists():
        raise ExportError("expected a saved ML Program (.mlpackage), received a path that does not exist",
                          file=str(path))
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ExportError(f"expected an ML Program, received a Core ML model of type "
                          f"{spec.WhichOneof('Type')!r}", file=str(path))
    prog = milload(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)
    meta = spec.description.metadata
    metadata = {k: v for k, v in (("author", meta.author), ("short_description", meta.shortDescription),
                                  ("version", meta.versionString), ("license", meta.license)) if v}
    metadata.update(meta.userDefined)
    return Program(path, prog, tuple(_feature(ct, d) for d in spec.description.input),
                   tuple(_feature(ct, d) for d in spec.description.output), metadata)


# ---------------------------------------------------------------------------------------------
# op arguments

class Args:
    """An op's inputs: computed tensors and constants, by input name; missing ones are ``None``."""

    def __init__(self, op: Any, env: dict[str, Any]):
        self.op = op
        self._env = env

    def __getattr__(self, name: str) -> Any:
        var = self.op.inputs.get(name)
        if var is None:
            return None
        if isinstance(var, (list, tuple)):
            return [self._env[v.name] for v in var]
        return self._env[var.name]

    def get(self, name: str, default: Any) -> Any:
        value = getattr(self, name)
        return default if value is None else value

    def scalar(self, name: str, default: Any) -> Any:
        value = self.get(name, default)
        return value.item() if isinstance(value, np.ndarray) else value

    def ints(self, name: str, default: Any) -> list[int]:
        return [int(v) for v in np.atleast_1d(self.get(name, default))]


# ---------------------------------------------------------------------------------------------
# sliding windows (NCHW): pad per axis, then one strided slice per kernel tap

def _pads(a: Args, x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int]) -> list[tuple[int, int]]:
    """(before, after) per spatial axis for pad_type custom | valid | same | same_lower."""
    pad_type = str(a.scalar("pad_type", "valid")).lower()
    spatial = x.shape[2:]
    if pad_type == "custom":
        pad = a.ints("pad", [0] * 2 * len(spatial))
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(spatial))]
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            out.append((small, total - small) if pad_type == "same" else (total - small, small))
        return out
    raise ExportError(f"expected pad_type custom, valid, same or same_lower, received {pad_type!r}")


def _taps(xp: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int]):
    """(i, j, view): for each kernel tap, the padded input each output pixel reads, (N, C, oh, ow)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ExportError(f"expected the {kh}x{kw} window to fit the padded "
                          f"{xp.shape[2]}x{xp.shape[3]} input, received an empty output")
    for i in range(kh):
        for j in range(kw):
            r, c = i * dh, j * dw
            yield i, j, xp[:, :, r:r + (oh - 1) * sh + 1:sh, c:c + (ow - 1) * sw + 1:sw]


def _spatial2d(fn: Callable[[Args, np.ndarray, "Context"], np.ndarray]) -> Callable:
    """Run a 2-D windowed op on a rank-3 (N, C, W) tensor as on (N, C, 1, W)."""
    def run(a: Args, ctx: "Context") -> np.ndarray:
        x = a.x
        if x.ndim == 4:
            return fn(a, x, ctx)
        if x.ndim != 3:
            raise UnsupportedLayer(f"expected a rank-3 or rank-4 input to {a.op.op_type}, received rank {x.ndim}")
        y = fn(_Lift(a), x[:, :, None], ctx)
        return y[:, :, 0]
    return run


class _Lift(Args):
    """The arguments of a 1-D window op seen as 2-D: a leading 1 for kernel, strides, dilations, pad."""

    def __init__(self, a: Args):
        super().__init__(a.op, a._env)

    def __getattr__(self, name: str) -> Any:
        value = super().__getattr__(name)
        if value is None or name not in ("kernel_sizes", "strides", "dilations", "pad", "weight", "output_shape"):
            return value
        if name == "weight":
            return value[:, :, None]
        if name == "output_shape":
            return np.insert(np.asarray(value), 2, 1)
        return np.concatenate([[0, 0] if name == "pad" else [1], np.atleast_1d(value)])


def _conv(a: Args, x: np.ndarray, ctx: "Context") -> np.ndarray:
    """weight (Cout, Cin/groups, kh, kw): one matmul per kernel tap, per group."""
    w, g = a.weight, int(a.scalar("groups", 1))
    cout, cg, kh, kw = w.shape
    n, cin = x.shape[:2]
    if cin != cg * g:
        raise ExportError(f"expected {cg * g} input channels for the weights, received {cin}")
    strides, dilations = a.ints("strides", [1, 1]), a.ints("dilations", [1, 1])
    pads = _pads(a, x, [kh, kw], strides, dilations)
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    wg = w.reshape(g, cout // g, cg, kh, kw)                           # (g, Cout/g, Cin/g, kh, kw)
    y = None
    for i, j, v in _taps(xp, [kh, kw], strides, dilations):
        oh, ow = v.shape[2:]
        xs = v.reshape(n, g, cg, oh * ow)
        if cg == 1:                                                     # depthwise: an outer product
            t = wg[None, :, :, 0, i, j, None] * xs
        else:
            t = np.matmul(wg[None, :, :, :, i, j], xs)                  # (N, g, Cout/g, oh·ow)
        y = t if y is None else y + t
    y = y.reshape(n, cout, oh, ow)
    return y if a.bias is None else y + a.bias.reshape(1, -1, 1, 1)


def _conv_transpose(a: Args, x: np.ndarray, ctx: "Context") -> np.ndarray:
    """weight (Cin, Cout/groups, kh, kw): input pixel (i, j) adds x·W[:, :, a, b] to full output
    (i·s + a·d, j·s + b·d); then the pads are cut (or ``output_shape`` taken after the first pad)."""
    w, g = a.weight, int(a.scalar("groups", 1))
    cin, coutg, kh, kw = w.shape
    n, _, h, wd = x.shape
    if x.shape[1] != cin:
        raise ExportError(f"expected {cin} input channels for the weights, received {x.shape[1]}")
    (sh, sw), (dh, dw) = a.ints("strides", [1, 1]), a.ints("dilations", [1, 1])
    full = ((h - 1) * sh + (kh - 1) * dh + 1, (wd - 1) * sw + (kw - 1) * dw + 1)
    pad_type = str(a.scalar("pad_type", "valid")).lower()
    shape = a.output_shape
    out = [int(v) for v in shape[2:]] if shape is not None else None
    if pad_type == "custom":
        p = a.ints("pad", [0, 0, 0, 0])
        before = [p[0], p[2]]
        out = out or [full[0] - p[0] - p[1], full[1] - p[2] - p[3]]
    elif pad_type == "valid":
        before, out = [0, 0], out or list(full)
    elif pad_type in ("same", "same_lower"):
        out = out or [h * sh, wd * sw]
        total = [max(f - o, 0) for f, o in zip(full, out)]
        before = [t // 2 if pad_type == "same" else t - t // 2 for t in total]
    else:
        raise ExportError(f"expected pad_type custom, valid, same or same_lower, received {pad_type!r}")
    size = [max(f, b + o) for f, b, o in zip(full, before, out)]
    y = np.zeros((n, g, coutg, *size), x.dtype)
    xg = x.reshape(n, g, cin // g, h * wd)
    wt = w.reshape(g, cin // g, coutg, kh, kw)
    for i in range(kh):
        for j in range(kw):
            t = np.matmul(wt[None, :, :, :, i, j].swapaxes(2, 3), xg)     # (N, g, Cout/g, h·w)
            r, c = i * dh, j * dw
            y[:, :, :, r:r + (h - 1) * sh + 1:sh, c:c + (wd - 1) * sw + 1:sw] += t.reshape(n, g, coutg, h, wd)
    y = y.reshape(n, g * coutg, *size)[:, :, before[0]:before[0] + out[0], before[1]:before[1] + out[1]]
    return y if a.bias is None else y + a.bias.reshape(1, -1, 1, 1)


def _pool(mode: str) -> Callable:
    def pool(a: Args, x: np.ndarray, ctx: "Context") -> np.ndarray:
        """Max: padded cells take no part (−∞). Average: the window sum / its size, or / its real
        cells with ``exclude_padding_from_average``."""
        if bool(a.scalar("ceil_mode", False)):
            raise UnsupportedLayer(f"expected {a.op.op_type} with ceil_mode False, received True")
        kernel, strides = a.ints("kernel_sizes", None), a.ints("strides", [1, 1])
        pads = _pads(a, x, kernel, strides, [1, 1])
        widths = [(0, 0), (0, 0), *pads]
        xp = np.pad(x, widths, constant_values=-np.inf if mode == "max" else 0)
        out = None
        for _, _, v in _taps(xp, kernel, strides, [1, 1]):
            out = v.copy() if out is None else (np.maximum(out, v, out=out) if mode == "max" else out + v)
        if mode == "max":
            return out
        if not bool(a.scalar("exclude_padding_from_average", False)):
            return out / x.dtype.type(kernel[0] * kernel[1])
        ones = np.pad(np.ones((1, 1, *x.shape[2:]), x.dtype), widths)
        count = sum(v for _, _, v in _taps(ones, kernel, strides, [1, 1]))
        return out / count
    return pool


# ---------------------------------------------------------------------------------------------
# resampling: source positions along one axis, then linear interpolation

def _unaligned(n_in: int, n_out: int) -> np.ndarray:
    return (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5


def _aligned(n_in: int, n_out: int) -> np.ndarray:
    return np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)


_GRIDS: dict[str, Callable[[int, int], np.ndarray]] = {
    # resize_bilinear sampling modes (iOS15 definition); all clamped to [0, in - 1]
    "STRICT_ALIGN_CORNERS": _aligned,
    "ALIGN_CORNERS": lambda i, o: _aligned(i, o) if o > 1 else np.full(1, (i - 1) / 2),
    "DEFAULT": lambda i, o: np.arange(o) * (i / o),                     # TF, no half-pixel
    "OFFSET_CORNERS": lambda i, o: (np.arange(o) + 0.5) * (max(1, i - 1) / o),
    "UNALIGN_CORNERS": _unaligned,                                      # TF half-pixel
}


def _lerp(x: np.ndarray, axis: int, src: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` at source positions ``src`` (clamped)."""
    size = x.shape[axis]
    src = np.clip(src, 0, size - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    shape = [1] * x.ndim
    shape[axis] = -1
    t = (src - lo).astype(x.dtype).reshape(shape)
    a, b = np.take(x, lo, axis=axis), np.take(x, hi, axis=axis)
    return a + (b - a) * t


def _resize(x: np.ndarray, out: tuple[int, int], grid: Callable[[int, int], np.ndarray]) -> np.ndarray:
    y = _lerp(x, x.ndim - 2, grid(x.shape[-2], out[0]))
    return _lerp(y, x.ndim - 1, grid(x.shape[-1], out[1]))


def _upsample_bilinear(a: Args, ctx: "Context") -> np.ndarray:
    x = a.x
    out = (int(math.floor(x.shape[-2] * float(a.scalar("scale_factor_height", 1)))),
           int(math.floor(x.shape[-1] * float(a.scalar("scale_factor_width", 1)))))
    return _resize(x, out, _aligned if bool(a.scalar("align_corners", True)) else _unaligned)


def _resize_bilinear(a: Args, ctx: "Context") -> np.ndarray:
    mode = str(a.scalar("sampling_mode", "DEFAULT"))
    if mode not in _GRIDS:
        raise UnsupportedLayer(f"expected a resize_bilinear sampling_mode in ({', '.join(_GRIDS)}), received {mode!r}")
    return _resize(a.x, (int(a.scalar("target_size_height", 1)), int(a.scalar("target_size_width", 1))), _GRIDS[mode])


def _nearest(x: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """Output pixel i reads floor(i · in / out)."""
    rows = np.minimum(np.arange(out[0]) * x.shape[-2] // out[0], x.shape[-2] - 1)
    cols = np.minimum(np.arange(out[1]) * x.shape[-1] // out[1], x.shape[-1] - 1)
    return x[..., rows, :][..., cols]


def _upsample_nearest(a: Args, ctx: "Context") -> np.ndarray:
    x = a.x
    sh, sw = float(a.scalar("scale_factor_height", 1)), float(a.scalar("scale_factor_width", 1))
    if sh.is_integer() and sw.is_integer():
        return np.repeat(np.repeat(x, int(sh), axis=-2), int(sw), axis=-1)
    return _nearest(x, (int(math.floor(x.shape[-2] * sh)), int(math.floor(x.shape[-1] * sw))))


# ---------------------------------------------------------------------------------------------
# depth <-> space

def _space_to_depth(x: np.ndarray, b: int, torch_order: bool) -> np.ndarray:
    """TF order: out[n, (bi·b + bj)·C + c, i, j] = x[n, c, i·b + bi, j·b + bj];
    PyTorch's pixel_unshuffle: channel c·b² + bi·b + bj."""
    n, c, h, w = x.shape
    if h % b or w % b:
        raise ExportError(f"expected a height and width divisible by block size {b}, received {h}x{w}")
    x = x.reshape(n, c, h // b, b, w // b, b)                          # (n, c, i, bi, j, bj)
    perm = (0, 1, 3, 5, 2, 4) if torch_order else (0, 3, 5, 1, 2, 4)
    return x.transpose(perm).reshape(n, c * b * b, h // b, w // b)


def _depth_to_space(x: np.ndarray, b: int, torch_order: bool) -> np.ndarray:
    """The inverse of :func:`_space_to_depth` in the same order."""
    n, cb, h, w = x.shape
    c = cb // (b * b)
    if c * b * b != cb:
        raise ExportError(f"expected channels divisible by {b * b}, received {cb}")
    if torch_order:
        x = x.reshape(n, c, b, b, h, w).transpose(0, 1, 4, 2, 5, 3)     # (n, c, i, bi, j, bj)
    else:
        x = x.reshape(n, b, b, c, h, w).transpose(0, 3, 4, 1, 5, 2)
    return x.reshape(n, c, h * b, w * b)


# ---------------------------------------------------------------------------------------------
# tensors

def _axes(a: Args, x: np.ndarray) -> tuple[int, ...] | None:
    axes = a.axes
    return None if axes is None else tuple(int(v) for v in np.atleast_1d(axes))


def _reduce(fn: Callable) -> Callable:
    return lambda a, ctx: fn(a.x, axis=_axes(a, a.x), keepdims=bool(a.scalar("keep_dims", False)))


def _log_sum_exp(x: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``, shifted by the maximum so that it does not overflow."""
    top = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axis)


def _reshape(a: Args, ctx: "Context") -> np.ndarray:
    x, shape = a.x, [int(v) for v in a.shape]
    if len(shape) == x.ndim:                                           # 0 keeps the input's size
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _slice_by_index(a: Args, ctx: "Context") -> np.ndarray:
    x = a.x
    r = x.ndim
    begin, end = a.ints("begin", [0] * r), a.ints("end", list(x.shape))
    stride = a.ints("stride", [1] * r)
    bm, em, sm = (list(np.atleast_1d(a.get(k, [False] * r))) for k in ("begin_mask", "end_mask", "squeeze_mask"))
    index: list[Any] = []
    for i in range(r):
        if sm[i]:
            index.append(begin[i])
            continue
        b = None if bm[i] else begin[i]
        e = None if em[i] else end[i]
        index.append(slice(b, e, stride[i]))
    return x[tuple(index)]


def _concat(a: Args, ctx: "Context") -> np.ndarray:
    values, axis = a.values, int(a.scalar("axis", 0))
    if not bool(a.scalar("interleave", False)):
        return np.concatenate(values, axis=axis)
    axis = axis % values[0].ndim                                       # element k of each in turn
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _pad(a: Args, ctx: "Context") -> np.ndarray:
    """``pad`` [before, after] for the last len(pad)/2 axes."""
    x, p = a.x, a.ints("pad", [])
    mode = str(a.scalar("mode", "constant"))
    if mode not in _PAD_MODES:
        raise UnsupportedLayer(f"expected a pad mode in ({', '.join(_PAD_MODES)}), received {mode!r}")
    k = len(p) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
    if mode == "constant":
        return np.pad(x, widths, constant_values=float(a.scalar("constant_val", 0.0)))
    return np.pad(x, widths, mode=_PAD_MODES[mode])


def _split(a: Args, ctx: "Context") -> tuple[np.ndarray, ...]:
    x, axis = a.x, int(a.scalar("axis", 0))
    sizes = a.split_sizes
    if sizes is None:
        return tuple(np.split(x, int(a.scalar("num_splits", 1)), axis=axis))
    return tuple(np.split(x, np.cumsum([int(s) for s in sizes])[:-1], axis=axis))


def _matmul(a: Args, ctx: "Context") -> np.ndarray:
    x, y = a.x, a.y
    if bool(a.scalar("transpose_x", False)) and x.ndim > 1:
        x = np.swapaxes(x, -1, -2)
    if bool(a.scalar("transpose_y", False)) and y.ndim > 1:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _linear(a: Args, ctx: "Context") -> np.ndarray:
    """weight (out, in): x @ weightᵀ + bias on the last axis."""
    y = a.x @ a.weight.T
    return y if a.bias is None else y + a.bias


# ---------------------------------------------------------------------------------------------
# normalisation

def _channel(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.reshape(v, (1, -1) + (1,) * (x.ndim - 2))


def _batch_norm(a: Args, ctx: "Context") -> np.ndarray:
    """Along axis 1: γ (x − mean) / √(var + ε) + β."""
    x = a.x
    eps = x.dtype.type(a.scalar("epsilon", 1e-5))
    y = (x - _channel(a.mean, x)) / np.sqrt(_channel(a.variance, x) + eps)
    if a.gamma is not None:
        y = y * _channel(a.gamma, x)
    return y if a.beta is None else y + _channel(a.beta, x)


def _normalize(x: np.ndarray, axes: tuple[int, ...], eps: Any) -> np.ndarray:
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def _instance_norm(a: Args, ctx: "Context") -> np.ndarray:
    """Per sample and channel over the spatial axes; γ, β per channel."""
    x = a.x
    y = _normalize(x, tuple(range(2, x.ndim)), x.dtype.type(a.scalar("epsilon", 1e-5)))
    if a.gamma is not None:
        y = y * _channel(a.gamma, x)
    return y if a.beta is None else y + _channel(a.beta, x)


def _layer_norm(a: Args, ctx: "Context") -> np.ndarray:
    """Over ``axes`` (all when absent); γ, β shaped as x on those axes."""
    x = a.x
    axes = _axes(a, x)
    axes = tuple(range(x.ndim)) if axes is None else tuple(sorted(v % x.ndim for v in axes))
    y = _normalize(x, axes, x.dtype.type(a.scalar("epsilon", 1e-5)))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if a.gamma is not None:
        y = y * np.reshape(a.gamma, shape)
    return y if a.beta is None else y + np.reshape(a.beta, shape)


# ---------------------------------------------------------------------------------------------
# activations and elementwise

def _erf(x: np.ndarray) -> np.ndarray:
    return (1.0 - _erfc(x)).astype(x.dtype)


_GELU: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "EXACT": lambda x: (0.5 * x * _erfc(-np.asarray(x, np.float64) * 0.7071067811865476)).astype(x.dtype),
    "TANH_APPROXIMATION": lambda x: 0.5 * x * (1 + np.tanh(x.dtype.type(math.sqrt(2 / math.pi)) *
                                                            (x + x.dtype.type(0.044715) * x ** 3))),
    "SIGMOID_APPROXIMATION": lambda x: x * _sigmoid(x.dtype.type(1.702) * x),
}


def _gelu(a: Args, ctx: "Context") -> np.ndarray:
    mode = str(a.scalar("mode", "EXACT"))
    if mode not in _GELU:
        raise UnsupportedLayer(f"expected a gelu mode in ({', '.join(_GELU)}), received {mode!r}")
    return _GELU[mode](a.x)


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable:
    return lambda a, ctx: fn(a.x)


def _alpha(fn: Callable[..., np.ndarray], alpha: float | None = None, beta: float | None = None) -> Callable:
    """An activation of x with scalar (or per-channel) ``alpha`` and ``beta`` (``None``: required)."""
    def run(a: Args, ctx: "Context") -> np.ndarray:
        x = a.x
        args = [a.get(k, d) for k, d in (("alpha", alpha), ("beta", beta)) if k in a.op.inputs or d is not None]
        return fn(x, *(np.asarray(v, x.dtype) for v in args))
    return run


def _is_half(var: Any) -> bool:
    from coremltools.converters.mil.mil import types
    return var.dtype == types.fp16


def _cast(a: Args, ctx: "Context") -> np.ndarray:
    """A cast to fp16, or from a tensor the program stores in fp16, rounds to half precision (kept
    in ``ctx.dtype``); fp32 computes in ``ctx.dtype``."""
    x, to = a.x, str(a.scalar("dtype", "fp32"))
    if to == "fp16" or (x.dtype.kind == "f" and _is_half(a.op.inputs["x"])):
        x = np.asarray(x, np.float16).astype(ctx.dtype)
    if to == "fp16":
        return x
    if to in ("fp32", "fp64"):
        return np.asarray(x, ctx.dtype)
    if to in ("int32", "int16", "int8", "uint8", "uint16", "int64"):
        return np.asarray(x).astype(to)
    if to == "bool":
        return np.asarray(x).astype(bool)
    raise UnsupportedLayer(f"expected a cast to fp16, fp32, an integer type or bool, received {to!r}")


def _binary(fn: Callable[[Any, Any], np.ndarray]) -> Callable:
    return lambda a, ctx: fn(a.x, a.y)


Run = Callable[[Args, "Context"], Any]

OPS: dict[str, Run] = {
    "identity": _unary(lambda x: x),
    "cast": _cast,
    # windows
    "conv": _spatial2d(_conv),
    "conv_transpose": _spatial2d(_conv_transpose),
    "max_pool": _spatial2d(_pool("max")),
    "avg_pool": _spatial2d(_pool("avg")),
    # elementwise binary, numpy broadcasting
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.divide),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "pow": _binary(np.power),
    # comparisons (bool) and selection
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "equal": _binary(np.equal),
    "not_equal": _binary(np.not_equal),
    "select": lambda a, ctx: np.where(np.asarray(a.cond).astype(bool), a.a, a.b),
    "reduce_log_sum_exp": _reduce(_log_sum_exp),
    # reductions
    "reduce_mean": _reduce(np.mean),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reduce_sum": _reduce(np.sum),
    # tensors
    "transpose": lambda a, ctx: np.transpose(a.x, a.ints("perm", None)),
    "reshape": _reshape,
    "squeeze": lambda a, ctx: np.squeeze(a.x, axis=_axes(a, a.x)),
    "expand_dims": lambda a, ctx: np.expand_dims(a.x, axis=_axes(a, a.x)),
    "concat": _concat,
    "split": _split,
    "slice_by_index": _slice_by_index,
    "slice_by_size": lambda a, ctx: a.x[tuple(slice(b, None if s == -1 else b + s)
                                              for b, s in zip(a.ints("begin", None), a.ints("size", None)))],
    "pad": _pad,
    "tile": lambda a, ctx: np.tile(a.x, a.ints("reps", None)),
    "space_to_depth": lambda a, ctx: _space_to_depth(a.x, int(a.scalar("block_size", 2)), False),
    "depth_to_space": lambda a, ctx: _depth_to_space(a.x, int(a.scalar("block_size", 2)), False),
    "pixel_unshuffle": lambda a, ctx: _space_to_depth(a.x, int(a.scalar("downscale_factor", 2)), True),
    "pixel_shuffle": lambda a, ctx: _depth_to_space(a.x, int(a.scalar("upscale_factor", 2)), True),
    "upsample_nearest_neighbor": _upsample_nearest,
    "resize_nearest_neighbor": lambda a, ctx: _nearest(a.x, (int(a.scalar("target_size_height", 1)),
                                                             int(a.scalar("target_size_width", 1)))),
    "upsample_bilinear": _upsample_bilinear,
    "resize_bilinear": _resize_bilinear,
    # dense
    "linear": _linear,
    "matmul": _matmul,
    # normalisation
    "batch_norm": _batch_norm,
    "instance_norm": _instance_norm,
    "layer_norm": _layer_norm,
    "softmax": lambda a, ctx: _softmax(a.x, int(a.scalar("axis", -1))),
    # activations and unary
    "relu": _unary(lambda x: np.maximum(x, x.dtype.type(0))),
    "relu6": _unary(lambda x: np.clip(x, x.dtype.type(0), x.dtype.type(6))),
    "clip": _alpha(lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi)),
    "leaky_relu": _alpha(lambda x, al: np.where(x >= 0, x, al * x), alpha=0.01),
    "elu": _alpha(lambda x, al: np.where(x > 0, x, al * np.expm1(np.minimum(x, 0))), alpha=1.0),
    "prelu": lambda a, ctx: np.where(a.x >= 0, a.x, _channel(a.alpha, a.x) * a.x),
    "thresholded_relu": _alpha(lambda x, al: np.where(x >= al, x, x.dtype.type(0)), alpha=1.0),
    "clamped_relu": _alpha(lambda x, al, be: np.minimum(np.where(x >= 0, x, al * x), be)),
    "linear_activation": _alpha(lambda x, al, be: al * x + be, beta=0.0),
    "scaled_tanh": _alpha(lambda x, al, be: al * np.tanh(be * x), alpha=1.0, beta=1.0),
    "sigmoid_hard": _alpha(lambda x, al, be: np.clip(al * x + be, x.dtype.type(0), x.dtype.type(1)),
                           alpha=0.2, beta=0.5),
    "sigmoid": _unary(_sigmoid),
    "silu": _unary(lambda x: x * _sigmoid(x)),
    "tanh": _unary(np.tanh),
    "softplus": _unary(_softplus),
    "softsign": _unary(lambda x: x / (1 + np.abs(x))),
    "gelu": _gelu,
    "erf": _unary(_erf),
    "exp": _unary(np.exp),
    "exp2": _unary(np.exp2),
    "log": lambda a, ctx: np.log(a.x + a.x.dtype.type(a.scalar("epsilon", 1e-45))),
    "sqrt": _unary(np.sqrt),
    "rsqrt": lambda a, ctx: 1 / np.sqrt(a.x + a.x.dtype.type(a.scalar("epsilon", 1e-12))),
    "inverse": lambda a, ctx: 1 / (a.x + a.x.dtype.type(a.scalar("epsilon", 1e-4))),
    "square": _unary(np.square),
    "abs": _unary(np.abs),
    "sign": _unary(np.sign),
    "floor": _unary(np.floor),
    "ceil": _unary(np.ceil),
    "round": _unary(np.round),
}


# ---------------------------------------------------------------------------------------------

@dataclass
class Context:
    dtype: Any = np.float32

    def const(self, value: Any) -> Any:
        """A constant as stored, floats computed in the run's precision; ints, bools, strings as-is."""
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            return value.astype(self.dtype)
        if isinstance(value, (float, np.floating)):
            return self.dtype.type(value)
        return value


def supported() -> str:
    return ", ".join(sorted(OPS))


def _inputs(function: Any, inputs: dict[str, np.ndarray], dtype: Any, where: str | None) -> dict[str, np.ndarray]:
    specs = function.inputs
    missing = [name for name in specs if name not in inputs]
    extra = [name for name in inputs if name not in specs]
    if missing or extra:
        raise ExportError(f"expected inputs ({', '.join(specs)}), received ({', '.join(inputs)})", file=where)
    out = {}
    for name, var in specs.items():
        x = np.asarray(inputs[name])
        want = tuple(var.shape)            # a symbolic dimension (a flexible batch) takes any size
        if len(x.shape) != len(want) or any(isinstance(w, (int, np.integer)) and w != n for w, n in zip(want, x.shape)):
            raise ExportError(f"expected input '{name}' of shape {want}, received {x.shape}", file=where)
        out[name] = np.ascontiguousarray(x, dtype=dtype)
    return out


def run(program: Program | str | Path, inputs: dict[str, np.ndarray], dtype: str = "float32") -> dict[str, np.ndarray]:
    """Evaluate the program's ``main`` function on ``inputs`` (by input name, NCHW arrays of the
    program's input shapes). Returns the outputs by name. Raises :class:`UnsupportedLayer` naming an
    op type (and op) it does not know, :class:`ExportError` for inputs or shapes that disagree."""
    if dtype not in DTYPES:
        raise ValueError(f"expected dtype float32 or float64, received {dtype!r}")
    if not isinstance(program, Program):
        program = load_program(program)
    where = str(program.path)
    function = program.main
    ctx = Context(np.dtype(dtype))
    env: dict[str, Any] = dict(_inputs(function, inputs, ctx.dtype, where))
    outputs = [v.name for v in function.outputs]
    operations = list(function.operations)
    last_use: dict[str, int] = {}
    for i, op in enumerate(operations):
        for var in op.inputs.values():
            for v in var if isinstance(var, (list, tuple)) else [var]:
                last_use[v.name] = i
    for i, op in enumerate(operations):
        if op.op_type == "const":
            env[op.outputs[0].name] = ctx.const(op.outputs[0].val)
            continue
        fn = OPS.get(op.op_type)
        if fn is None:
            raise UnsupportedLayer(f"expected an op the ML Program evaluator runs ({supported()}), "
                                   f"received op type '{op.op_type}'", file=where, layer=op.name)
        try:
            ys = fn(Args(op, env), ctx)
        except ExportError as err:
            raise err.at(file=where, layer=op.name)
        ys = ys if isinstance(ys, tuple) else (ys,)
        for var, y in zip(op.outputs, ys):
            y = np.asarray(y)
            if y.dtype.kind == "f" and y.dtype != ctx.dtype:
                y = y.astype(ctx.dtype)
            if var.shape is not None and all(isinstance(s, (int, np.integer)) for s in var.shape) \
                    and tuple(var.shape) != y.shape:
                raise ExportError(f"expected output shape {tuple(var.shape)} from the program, computed {y.shape}",
                                  file=where, layer=op.name)
            env[var.name] = y
        for var in op.inputs.values():                 # free what no later op and no output reads
            for v in var if isinstance(var, (list, tuple)) else [var]:
                if last_use.get(v.name) == i and v.name not in outputs:
                    env.pop(v.name, None)
    return {name: env[name] for name in outputs}
