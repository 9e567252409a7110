"""The ML Program evaluator (kerasfold.verify.mlprogram) against independent numpy computations.

Each program is built with the MIL builder, converted with coremltools' default pass pipeline
(iOS15, FLOAT32 unless stated), saved, loaded back with ``load_program`` and run. Expected values
come from the reference executor's ops (NHWC, ``kerasfold.verify.reference``) or from explicit
index formulas and loops written here, never from the evaluator's own code.
"""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kerasfold import ops
from kerasfold.errors import ExportError, UnsupportedLayer
from kerasfold.targets.coreml.ct_env import import_coremltools
from kerasfold.verify import reference
from kerasfold.verify.mlprogram import OPS, load_program, run

ct = import_coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402

REL = 1e-5
RNG = np.random.default_rng(7)


def rel_err(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / (np.max(np.abs(want)) or 1.0))


def normal(*shape) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def save(tmp_path_factory):
    """save(name, prog, precision=FLOAT32) -> the loaded Program, converted once per name."""
    cache = {}

    def convert(name, prog, precision=ct.precision.FLOAT32, **kwargs):
        if name not in cache:
            model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
                               compute_precision=precision, **kwargs)
            model.user_defined_metadata["kerasfold.test"] = name
            path = tmp_path_factory.mktemp("mlprogram") / f"{name}.mlpackage"
            model.save(str(path))
            cache[name] = load_program(path)
        return cache[name]
    return convert


def op_types(prog) -> list[str]:
    return [op.op_type for op in prog.main.operations if op.op_type != "const"]


def nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def nchw(x):
    return np.transpose(x, (0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------
# convolution: against the reference executor's conv (NHWC, HWIO kernel, explicit pad)

X_CONV = normal(1, 4, 11, 9)
CONVS = {   # name: weight (Cout, Cin/groups, kh, kw), strides, dilations, groups, pad_type, pad
    "stride2_asym": (normal(6, 4, 3, 3), [2, 2], [1, 1], 1, "custom", [1, 2, 0, 1]),
    "dilated_groups": (normal(6, 2, 3, 2), [1, 1], [2, 2], 2, "custom", [2, 0, 1, 1]),
    "depthwise_same": (normal(8, 1, 3, 3), [2, 2], [1, 1], 4, "same", None),
    "pointwise_valid": (normal(5, 4, 1, 1), [1, 1], [1, 1], 1, "valid", None),
    "wide_stride": (normal(3, 4, 2, 5), [2, 3], [1, 2], 1, "custom", [0, 1, 3, 0]),
}
CONV_BIAS = {name: normal(spec[0].shape[0]) for name, spec in CONVS.items()}


@pytest.fixture(scope="module")
def conv_outputs(save):
    @mb.program(input_specs=[mb.TensorSpec(shape=X_CONV.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        outs = []
        for name, (w, s, d, g, pad_type, pad) in CONVS.items():
            kw = {"pad": pad} if pad is not None else {}
            outs.append(mb.conv(x=x, weight=w, bias=CONV_BIAS[name], strides=s, dilations=d, groups=g,
                                pad_type=pad_type, name=name, **kw))
        return tuple(outs)
    return run(save("convs", prog), {"x": X_CONV})


def _same_pad(size, k, s, d):
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_matches_reference(conv_outputs, name):
    w, s, d, g, pad_type, pad = CONVS[name]
    kh, kw = w.shape[2:]
    if pad_type == "same":
        pad = [*_same_pad(X_CONV.shape[2], kh, s[0], d[0]), *_same_pad(X_CONV.shape[3], kw, s[1], d[1])]
    pad = pad or [0, 0, 0, 0]
    op = ops.Conv2D(kernel=w.transpose(2, 3, 1, 0), bias=CONV_BIAS[name], strides=tuple(s),
                    dilation=tuple(d), groups=g, padding="same", pad=tuple(pad))
    want = nchw(reference._conv2d(op, [nhwc(X_CONV).astype(np.float64)], reference.Context(np.float64)))
    got = conv_outputs[name]
    assert got.shape == want.shape
    assert rel_err(got, want) < REL


def test_conv1d_and_max_pool1d(save):
    """Rank-3 (N, C, W) windows run as the 1 x W image."""
    x, w, b = normal(1, 3, 10), normal(4, 3, 3), normal(4)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        y = mb.conv(x=x, weight=w, bias=b, strides=[2], pad_type="custom", pad=[1, 2], name="conv1d")
        return y, mb.max_pool(x=y, kernel_sizes=[2], strides=[1], pad_type="custom", pad=[0, 1], name="pool1d")
    got = run(save("conv1d", prog), {"x": x}, dtype="float64")
    op = ops.Conv2D(kernel=w.transpose(2, 1, 0)[None], bias=b, strides=(1, 2), dilation=(1, 1), groups=1,
                    padding="same", pad=(0, 0, 1, 2))
    want = nchw(reference._conv2d(op, [nhwc(x[:, :, None]).astype(np.float64)], reference.Context(np.float64)))[:, :, 0]
    assert rel_err(got["conv1d"], want) < 1e-12
    padded = np.pad(want, [(0, 0), (0, 0), (0, 1)], constant_values=-np.inf)
    assert np.array_equal(got["pool1d"], np.maximum(padded[:, :, :-1], padded[:, :, 1:]))


# conv_transpose: weight (Cin, Cout/groups, kh, kw), against a scatter written here

X_DECONV = normal(1, 4, 5, 6)
DECONVS = {   # name: weight, strides, dilations, groups, pad
    "stride2_crop": (normal(4, 3, 3, 3), [2, 2], [1, 1], 1, [1, 0, 0, 1]),
    "groups_dilated": (normal(4, 3, 2, 3), [2, 1], [1, 2], 2, [0, 0, 2, 1]),
}


def _scatter(x, w, s, d, g, pad):
    """Input pixel (i, j) of channel ci adds x·W[ci, co, a, b] to (i·s + a·d, j·s + b·d) of output
    channel group(ci)·Cout/g + co; then ``pad`` is cut."""
    n, cin, h, wd = x.shape
    _, coutg, kh, kw = w.shape
    full = np.zeros((n, coutg * g, (h - 1) * s[0] + (kh - 1) * d[0] + 1, (wd - 1) * s[1] + (kw - 1) * d[1] + 1))
    for ci in range(cin):
        group = ci // (cin // g)
        for i in range(h):
            for j in range(wd):
                for a in range(kh):
                    for b in range(kw):
                        full[:, group * coutg:(group + 1) * coutg, i * s[0] + a * d[0], j * s[1] + b * d[1]] += \
                            x[:, ci, i, j, None] * w[ci, :, a, b]
    top, bottom, left, right = pad
    return full[:, :, top:full.shape[2] - bottom, left:full.shape[3] - right]


@pytest.fixture(scope="module")
def deconv_program(save):
    @mb.program(input_specs=[mb.TensorSpec(shape=X_DECONV.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        return tuple(mb.conv_transpose(x=x, weight=w, strides=s, dilations=d, groups=g, pad_type="custom",
                                       pad=pad, name=name) for name, (w, s, d, g, pad) in DECONVS.items())
    return save("deconvs", prog)


@pytest.mark.parametrize("name", list(DECONVS))
def test_conv_transpose_matches_scatter(deconv_program, name):
    got = run(deconv_program, {"x": X_DECONV}, dtype="float64")[name]
    want = _scatter(X_DECONV.astype(np.float64), *DECONVS[name])
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-12


def test_conv_transpose_matches_reference_with_fused_bias(save):
    """conv_transpose + add(bias) is fused by the pipeline; the reference's Conv2DTranspose takes
    (kh, kw, out, in) and a crop."""
    w, b = normal(4, 3, 3, 3), normal(3)

    @mb.program(input_specs=[mb.TensorSpec(shape=X_DECONV.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        y = mb.conv_transpose(x=x, weight=w, strides=[2, 2], pad_type="valid")
        return mb.add(x=y, y=b.reshape(1, 3, 1, 1))
    program = save("deconv_bias", prog)
    assert op_types(program) == ["conv_transpose"]
    op = ops.Conv2DTranspose(kernel=w.transpose(2, 3, 1, 0), bias=b, strides=(2, 2), padding="valid",
                             crop=(0, 0, 0, 0))
    want = nchw(reference._conv2d_transpose(op, [nhwc(X_DECONV)], reference.Context(np.float64)))
    assert rel_err(next(iter(run(program, {"x": X_DECONV}).values())), want) < REL


# ---------------------------------------------------------------------------------------------
# pooling

X_POOL = normal(2, 3, 9, 8)
POOLS = {   # name: mode, kernel, strides, pad_type, pad, exclude_padding_from_average
    "max_asym": ("max", [3, 3], [2, 2], "custom", [1, 0, 1, 1], False),
    "max_same_s1": ("max", [2, 2], [1, 1], "same", None, False),        # tiny-yolo's last pool
    "avg_exclude": ("avg", [3, 2], [2, 1], "custom", [1, 1, 0, 1], True),
    "avg_include": ("avg", [3, 3], [2, 2], "custom", [1, 1, 1, 1], False),
}


@pytest.fixture(scope="module")
def pool_outputs(save):
    @mb.program(input_specs=[mb.TensorSpec(shape=X_POOL.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        outs = []
        for name, (mode, k, s, pad_type, pad, exclude) in POOLS.items():
            kw = {"pad": pad} if pad is not None else {}
            if mode == "max":
                outs.append(mb.max_pool(x=x, kernel_sizes=k, strides=s, pad_type=pad_type, name=name, **kw))
            else:
                outs.append(mb.avg_pool(x=x, kernel_sizes=k, strides=s, pad_type=pad_type, name=name,
                                        exclude_padding_from_average=exclude, **kw))
        return tuple(outs)
    return run(save("pools", prog), {"x": X_POOL})


@pytest.mark.parametrize("name", list(POOLS))
def test_pool(pool_outputs, name):
    mode, k, s, pad_type, pad, exclude = POOLS[name]
    if pad_type == "same":
        pad = [*_same_pad(X_POOL.shape[2], k[0], s[0], 1), *_same_pad(X_POOL.shape[3], k[1], s[1], 1)]
    got = pool_outputs[name]
    if exclude or mode == "max":        # the reference: padded cells take no part
        op = ops.Pool2D(mode=mode, size=tuple(k), strides=tuple(s), padding="same", pad=tuple(pad))
        want = nchw(reference._pool2d(op, [nhwc(X_POOL)], reference.Context(np.float32)))
    else:                               # zeros counted: the mean of each zero-padded window
        xp = np.pad(X_POOL, [(0, 0), (0, 0), tuple(pad[:2]), tuple(pad[2:])])
        want = np.array([[[[xp[n, c, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]].mean()
                            for j in range(got.shape[3])] for i in range(got.shape[2])]
                          for c in range(3)] for n in range(2)])
    assert got.shape == want.shape
    assert rel_err(got, want) < REL


def test_pool_ceil_mode_refused(save):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 7, 7))], opset_version=ct.target.iOS15)
    def prog(x):
        return mb.max_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", ceil_mode=True)
    with pytest.raises(UnsupportedLayer, match="ceil_mode"):
        run(save("ceil", prog), {"x": normal(1, 2, 7, 7)})


# ---------------------------------------------------------------------------------------------
# resampling and depth <-> space

X_IMG = normal(1, 3, 5, 4)


def _interp_loop(x, out_h, out_w, grid):
    """Bilinear sampling at grid(in, out, i) positions, clamped, one output pixel at a time."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        r = min(max(grid(h, out_h, i), 0.0), h - 1.0)
        r0 = int(math.floor(r))
        r1 = min(r0 + 1, h - 1)
        for j in range(out_w):
            q = min(max(grid(w, out_w, j), 0.0), w - 1.0)
            q0 = int(math.floor(q))
            q1 = min(q0 + 1, w - 1)
            top = x[:, :, r0, q0] * (1 - (q - q0)) + x[:, :, r0, q1] * (q - q0)
            bottom = x[:, :, r1, q0] * (1 - (q - q0)) + x[:, :, r1, q1] * (q - q0)
            y[:, :, i, j] = top * (1 - (r - r0)) + bottom * (r - r0)
    return y


@pytest.fixture(scope="module")
def resample_outputs(save):
    @mb.program(input_specs=[mb.TensorSpec(shape=X_IMG.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        return (mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=3, align_corners=False,
                                     name="half_pixel"),
                mb.upsample_bilinear(x=x, scale_factor_height=3, scale_factor_width=2, align_corners=True,
                                     name="aligned"),
                mb.resize_bilinear(x=x, target_size_height=7, target_size_width=11,
                                   sampling_mode="UNALIGN_CORNERS", name="unaligned"),
                mb.resize_bilinear(x=x, target_size_height=8, target_size_width=3, sampling_mode="DEFAULT",
                                   name="default"),
                mb.resize_bilinear(x=x, target_size_height=7, target_size_width=6,
                                   sampling_mode="STRICT_ALIGN_CORNERS", name="strict"),
                mb.upsample_nearest_neighbor(x=x, scale_factor_height=2, scale_factor_width=3, name="nearest"))
    return run(save("resample", prog), {"x": X_IMG}, dtype="float64")


def test_upsample_bilinear_half_pixel_is_keras_resize(resample_outputs):
    op = ops.Resize(size=(2, 3), interpolation="bilinear")
    want = nchw(reference._resize(op, [nhwc(X_IMG).astype(np.float64)], reference.Context(np.float64)))
    assert rel_err(resample_outputs["half_pixel"], want) < 1e-12


@pytest.mark.parametrize("name, size, grid", [
    ("aligned", (15, 8), lambda n, m, i: i * (n - 1) / (m - 1)),
    ("unaligned", (7, 11), lambda n, m, i: (i + 0.5) * n / m - 0.5),
    ("default", (8, 3), lambda n, m, i: i * n / m),
    ("strict", (7, 6), lambda n, m, i: i * (n - 1) / (m - 1)),
])
def test_bilinear_sampling_modes(resample_outputs, name, size, grid):
    want = _interp_loop(X_IMG.astype(np.float64), *size, grid)
    assert rel_err(resample_outputs[name], want) < 1e-12


def test_upsample_nearest(resample_outputs):
    got = resample_outputs["nearest"]
    assert got.shape == (1, 3, 10, 12)
    for i, j in [(0, 0), (3, 5), (9, 11), (4, 2)]:
        assert np.array_equal(got[:, :, i, j], X_IMG[:, :, i // 2, j // 3])


def test_space_to_depth_channel_order(save):
    """Core ML's space_to_depth is TensorFlow's: out[(bi·b + bj)·C + c, i, j] = x[c, i·b + bi, j·b + bj];
    pixel_unshuffle is PyTorch's: out[c·b² + bi·b + bj]."""
    x = normal(1, 3, 6, 4)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        s = mb.space_to_depth(x=x, block_size=2, name="s2d")
        return s, mb.depth_to_space(x=s, block_size=2, name="d2s"), \
            mb.pixel_shuffle(x=mb.space_to_depth(x=x, block_size=2), upscale_factor=2, name="shuffle")
    got = run(save("s2d", prog), {"x": x})
    b, c = 2, 3
    s2d = got["s2d"]
    assert s2d.shape == (1, 12, 3, 2)
    for bi, bj, ch, i, j in np.ndindex(b, b, c, 3, 2):
        assert s2d[0, (bi * b + bj) * c + ch, i, j] == x[0, ch, i * b + bi, j * b + bj]
    assert np.array_equal(got["d2s"], x)
    # pixel_shuffle of the TF-ordered depth: out[c', i·b + bi, j·b + bj] = s2d[c'·b² + bi·b + bj, i, j]
    shuffle = got["shuffle"]
    for ch, bi, bj, i, j in np.ndindex(c, b, b, 3, 2):
        assert shuffle[0, ch, i * b + bi, j * b + bj] == s2d[0, ch * b * b + bi * b + bj, i, j]


# ---------------------------------------------------------------------------------------------
# activations, elementwise, tensors: one program, many outputs

X_ACT = normal(2, 4, 5, 3) * 2
ALPHA = RNG.uniform(0.05, 0.5, size=4).astype(np.float32)
C4 = normal(1, 4, 1, 1)
_erf = np.vectorize(math.erf)


def _sig(x):
    return 1 / (1 + np.exp(-x))


ACTS = {   # name: (builder on x, numpy on x)
    "relu": (lambda x: mb.relu(x=x), lambda x: np.maximum(x, 0)),
    "relu6": (lambda x: mb.relu6(x=x), lambda x: np.minimum(np.maximum(x, 0), 6)),
    "clip": (lambda x: mb.clip(x=x, alpha=-0.5, beta=1.5), lambda x: np.minimum(np.maximum(x, -0.5), 1.5)),
    "leaky_relu": (lambda x: mb.leaky_relu(x=x, alpha=0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
    "elu": (lambda x: mb.elu(x=x, alpha=0.7), lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1))),
    "silu": (lambda x: mb.silu(x=x), lambda x: x * _sig(x)),
    "swish_pattern": (lambda x: mb.mul(x=x, y=mb.sigmoid(x=x)), lambda x: x * _sig(x)),
    "sigmoid": (lambda x: mb.sigmoid(x=x), _sig),
    "tanh": (lambda x: mb.tanh(x=x), np.tanh),
    "sigmoid_hard": (lambda x: mb.sigmoid_hard(x=x, alpha=0.2, beta=0.5),
                     lambda x: np.minimum(np.maximum(0.2 * x + 0.5, 0), 1)),
    "softplus": (lambda x: mb.softplus(x=x), lambda x: np.log1p(np.exp(x))),
    "softsign": (lambda x: mb.softsign(x=x), lambda x: x / (1 + np.abs(x))),
    "gelu_exact": (lambda x: mb.gelu(x=x, mode="EXACT"), lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    "gelu_tanh": (lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"),
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    "gelu_sigmoid": (lambda x: mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"), lambda x: x * _sig(1.702 * x)),
    "gelu_pattern": (lambda x: mb.mul(x=mb.mul(x=x, y=np.float32(0.5)), y=mb.add(
        x=mb.erf(x=mb.mul(x=x, y=np.float32(1 / math.sqrt(2)))), y=np.float32(1))),
        lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    "exp": (lambda x: mb.exp(x=x), np.exp),
    "log": (lambda x: mb.log(x=mb.add(x=mb.abs(x=x), y=np.float32(0.1))), lambda x: np.log(np.abs(x) + 0.1)),
    "sqrt": (lambda x: mb.sqrt(x=mb.abs(x=x)), lambda x: np.sqrt(np.abs(x))),
    "rsqrt": (lambda x: mb.rsqrt(x=mb.add(x=mb.abs(x=x), y=np.float32(0.5))), lambda x: 1 / np.sqrt(np.abs(x) + 0.5)),
    "prelu": (lambda x: mb.prelu(x=x, alpha=ALPHA), lambda x: np.where(x > 0, x, ALPHA.reshape(1, 4, 1, 1) * x)),
    "prelu_pattern": (lambda x: mb.sub(x=mb.relu(x=x), y=mb.mul(x=mb.relu(x=mb.mul(x=x, y=np.float32(-1))),
                                                                 y=ALPHA.reshape(1, 4, 1, 1))),
                      lambda x: np.where(x > 0, x, ALPHA.reshape(1, 4, 1, 1) * x)),
    "thresholded_relu": (lambda x: mb.thresholded_relu(x=x, alpha=0.5), lambda x: np.where(x > 0.5, x, 0)),
    "identity": (lambda x: mb.identity(x=x), lambda x: x),
    "add_sub_mul_div": (lambda x: mb.real_div(x=mb.mul(x=mb.sub(x=mb.add(x=x, y=C4), y=np.float32(1)), y=x),
                                              y=mb.add(x=mb.abs(x=C4), y=np.float32(1))),
                        lambda x: (x + C4 - 1) * x / (np.abs(C4) + 1)),
    "maximum_minimum": (lambda x: mb.minimum(x=mb.maximum(x=x, y=C4), y=np.float32(1)),
                        lambda x: np.minimum(np.maximum(x, C4), 1)),
    "reduce_mean": (lambda x: mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True), lambda x: x.mean((2, 3), keepdims=True)),
    "reduce_max": (lambda x: mb.reduce_max(x=x, axes=[1], keep_dims=False), lambda x: x.max(1)),
    "softmax": (lambda x: mb.softmax(x=x, axis=1), lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
    "concat": (lambda x: mb.concat(values=[x, mb.relu(x=x)], axis=1), lambda x: np.concatenate([x, np.maximum(x, 0)], 1)),
    "concat_interleave": (lambda x: mb.concat(values=[x, mb.relu(x=x)], axis=1, interleave=True),
                          lambda x: np.stack([x, np.maximum(x, 0)], 2).reshape(2, 8, 5, 3)),
    "slice": (lambda x: mb.slice_by_index(x=x, begin=[0, 1, 4, 0], end=[0, 4, 0, 3], stride=[1, 2, -2, 1],
                                          end_mask=[True, False, True, False]),
              lambda x: x[:, 1:4:2, 4::-2, 0:3]),
    "slice_squeeze": (lambda x: mb.slice_by_index(x=x, begin=[0, 2, 0, 0], end=[2, 3, 5, 3],
                                                  squeeze_mask=[False, True, False, False]),
                      lambda x: x[:, 2]),
    "pad": (lambda x: mb.pad(x=x, pad=[1, 0, 2, 1], mode="constant", constant_val=0.25),
            lambda x: np.pad(x, [(0, 0), (0, 0), (1, 0), (2, 1)], constant_values=0.25)),
    "pad_reflect": (lambda x: mb.pad(x=x, pad=[1, 2, 0, 1], mode="reflect"),
                    lambda x: np.pad(x, [(0, 0), (0, 0), (1, 2), (0, 1)], mode="reflect")),
    "transpose_reshape": (lambda x: mb.reshape(x=mb.transpose(x=x, perm=[0, 2, 3, 1]), shape=[2, -1]),
                          lambda x: x.transpose(0, 2, 3, 1).reshape(2, -1)),
    "batch_norm_pattern": (lambda x: mb.add(x=mb.mul(x=mb.real_div(x=mb.sub(x=x, y=C4), y=mb.sqrt(
        x=mb.add(x=mb.abs(x=C4), y=np.float32(1e-3)))), y=C4 * 2), y=C4 + 1),
        lambda x: (x - C4) / np.sqrt(np.abs(C4) + 1e-3) * (C4 * 2) + (C4 + 1)),
}


@pytest.fixture(scope="module")
def act_program(save):
    @mb.program(input_specs=[mb.TensorSpec(shape=X_ACT.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        return tuple(mb.identity(x=build(x), name=name) for name, (build, _) in ACTS.items())
    return save("acts", prog)


@pytest.fixture(scope="module")
def act_outputs(act_program):
    return run(act_program, {"x": X_ACT}, dtype="float64")


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_and_elementwise(act_outputs, name):
    want = ACTS[name][1](X_ACT.astype(np.float64))
    got = act_outputs[name]
    assert got.shape == want.shape
    # float32 constants (C4, alpha) and erf's 1.2e-7; the pipeline folds the batch_norm
    # pattern's constants (sqrt, division) in float32
    assert rel_err(got, want) < (1e-5 if name == "batch_norm_pattern" else 2e-7)


def test_pipeline_fuses_patterns(act_program):
    """What coremltools' default pipeline made of the patterns above (so the evaluator is tested
    on what a saved program holds): x·sigmoid(x) -> silu, 0.5x(1 + erf(x/√2)) -> gelu,
    (x - m)/√v·γ + β -> batch_norm; relu(x) - α·relu(-x) stays unfused."""
    types = set(op_types(act_program))
    assert {"silu", "gelu", "batch_norm"} <= types
    assert "erf" not in types


# ---------------------------------------------------------------------------------------------
# dense, normalisation, fused conv

def test_linear_and_matmul(save):
    x, y = normal(2, 5, 16), normal(2, 7, 16)
    w, b, z = normal(16, 6), normal(6), normal(2, 5, 3)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape), mb.TensorSpec(shape=y.shape)],
                opset_version=ct.target.iOS15)
    def prog(x, y):
        return (mb.add(x=mb.matmul(x=x, y=w), y=b, name="dense"),
                mb.matmul(x=x, y=y, transpose_y=True, name="xyT"),
                mb.matmul(x=x, y=z, transpose_x=True, name="xTz"))
    program = save("dense", prog)
    assert "linear" in op_types(program)
    got = run(program, {"x": x, "y": y}, dtype="float64")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    assert rel_err(got["dense"], np.einsum("nti,io->nto", x64, w) + b) < 1e-12
    assert rel_err(got["xyT"], np.einsum("nai,nbi->nab", x64, y64)) < 1e-12
    assert rel_err(got["xTz"], np.einsum("nai,nab->nib", x64, z)) < 1e-12


def test_norms(save):
    x = normal(2, 4, 5, 3)
    g, b, m, v = normal(4), normal(4), normal(4), RNG.uniform(0.5, 2, 4).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        return (mb.batch_norm(x=x, mean=m, variance=v, gamma=g, beta=b, epsilon=1e-3, name="bn"),
                mb.instance_norm(x=x, gamma=g, beta=b, epsilon=1e-4, name="inst"),
                mb.layer_norm(x=x, axes=[1], gamma=g.reshape(4), beta=b, epsilon=1e-5, name="ln"),
                mb.layer_norm(x=x, axes=[2, 3], epsilon=1e-5, name="ln_hw"))
    got = run(save("norms", prog), {"x": x}, dtype="float64")
    x64, c = x.astype(np.float64), (1, 4, 1, 1)

    def norm(axes, eps):
        mu = x64.mean(axes, keepdims=True)
        return (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(axes, keepdims=True) + eps)
    assert rel_err(got["bn"], (x64 - m.reshape(c)) / np.sqrt(v.reshape(c) + 1e-3) * g.reshape(c) + b.reshape(c)) < 1e-6
    assert rel_err(got["inst"], norm((2, 3), 1e-4) * g.reshape(c) + b.reshape(c)) < 1e-6
    assert rel_err(got["ln"], norm((1,), 1e-5) * g.reshape(c) + b.reshape(c)) < 1e-6
    assert rel_err(got["ln_hw"], norm((2, 3), 1e-5)) < 1e-6


def test_conv_bn_add_mul_fused(save):
    """conv -> batch_norm -> add -> mul -> leaky_relu becomes conv -> mul -> leaky_relu (batch_norm and
    add are folded into the conv's weights and bias, the mul is not); the result is
    the unfused computation's. (coremltools 9.0's fuse_conv_batchnorm raises on a batch_norm without gamma or beta.)"""
    x, w, cb = normal(1, 3, 7, 6), normal(5, 3, 3, 3), normal(5)
    m, v, a, s = normal(5), RNG.uniform(0.5, 2, 5).astype(np.float32), normal(1, 5, 1, 1), normal(1, 5, 1, 1)
    g, b = normal(5), normal(5)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        y = mb.conv(x=x, weight=w, bias=cb, pad_type="custom", pad=[1, 1, 1, 1])
        y = mb.batch_norm(x=y, mean=m, variance=v, gamma=g, beta=b, epsilon=1e-3)
        return mb.leaky_relu(x=mb.mul(x=mb.add(x=y, y=a), y=s), alpha=0.1)
    program = save("conv_fused", prog)
    assert op_types(program) == ["conv", "mul", "leaky_relu"]
    op = ops.Conv2D(kernel=w.transpose(2, 3, 1, 0), bias=cb, strides=(1, 1), dilation=(1, 1), groups=1,
                    padding="same", pad=(1, 1, 1, 1))
    y = nchw(reference._conv2d(op, [nhwc(x).astype(np.float64)], reference.Context(np.float64)))
    c = (1, 5, 1, 1)
    y = ((y - m.reshape(c)) / np.sqrt(v.reshape(c) + 1e-3) * g.reshape(c) + b.reshape(c) + a) * s
    want = np.where(y > 0, y, 0.1 * y)
    assert rel_err(next(iter(run(program, {"x": x}).values())), want) < REL


# ---------------------------------------------------------------------------------------------
# float16 compute precision, loading, refusals

def test_float16_program_rounds_at_casts(save):
    x, w, b = normal(1, 4, 6, 6) * 3, normal(6, 4, 3, 3), normal(6)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        return mb.relu(x=mb.conv(x=x, weight=w, bias=b, pad_type="custom", pad=[1, 1, 1, 1]))
    program = save("fp16", prog, ct.precision.FLOAT16)
    types = op_types(program)
    assert types[0] == "cast" and types[-1] == "cast" and "conv" in types
    got = next(iter(run(program, {"x": x}, dtype="float64").values()))
    assert np.array_equal(got, got.astype(np.float16).astype(np.float64))      # the output cast rounded
    half = [a.astype(np.float16).astype(np.float64) for a in (x, w, b)]        # fp16 input, fp16 weights
    op = ops.Conv2D(kernel=half[1].transpose(2, 3, 1, 0), bias=half[2], strides=(1, 1), dilation=(1, 1),
                    groups=1, padding="same", pad=(1, 1, 1, 1))
    exact = np.maximum(nchw(reference._conv2d(op, [nhwc(half[0])], reference.Context(np.float64))), 0)
    assert np.array_equal(got, exact.astype(np.float16).astype(np.float64))
    assert rel_err(got, exact) > 0                                               # and rounding happened
    f32 = next(iter(run(program, {"x": x}).values()))
    assert f32.dtype == np.float32 and rel_err(f32, exact) < 1e-3


def test_program_description(save, act_program):
    assert [f.name for f in act_program.inputs] == ["x"]
    assert act_program.inputs[0].kind == "multiArray" and act_program.inputs[0].shape == X_ACT.shape
    assert [f.name for f in act_program.outputs] == list(ACTS)
    assert act_program.metadata["kerasfold.test"] == "acts"

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 6))], opset_version=ct.target.iOS15)
    def prog(image):
        return mb.relu(x=image, name="out")
    program = save("image", prog, inputs=[ct.ImageType(name="image", shape=(1, 3, 8, 6),
                                                       color_layout=ct.colorlayout.BGR)])
    feature = program.inputs[0]
    assert (feature.kind, feature.shape, feature.color_layout) == ("image", (1, 3, 8, 6), "BGR")
    x = RNG.uniform(0, 255, (1, 3, 8, 6)).astype(np.float32)
    assert np.array_equal(run(program, {"image": x})["out"], x)


def test_bad_inputs(act_program):
    with pytest.raises(ExportError, match=r"expected input 'x' of shape \(2, 4, 5, 3\)"):
        run(act_program, {"x": X_ACT[:1]})
    with pytest.raises(ExportError, match="expected inputs"):
        run(act_program, {"y": X_ACT})
    with pytest.raises(ValueError, match="float32 or float64"):
        run(act_program, {"x": X_ACT}, dtype="float16")
    with pytest.raises(ExportError, match="does not exist"):
        load_program("/nonexistent/model.mlpackage")


def test_unknown_op_refused(save):
    assert "cos" not in OPS

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 3, 3))], opset_version=ct.target.iOS15)
    def prog(x):
        return mb.relu(x=mb.cos(x=x, name="the_cos"))
    with pytest.raises(UnsupportedLayer) as err:
        run(save("cos", prog), {"x": normal(1, 2, 3, 3)})
    text = str(err.value)
    assert "'cos'" in text and "the_cos" in text and "conv, conv_transpose" in text and "\n" not in text


def test_never_imports_tensorflow(act_program):
    code = ("import sys, numpy as np\n"
            "from kerasfold.verify.mlprogram import load_program, run\n"
            f"p = load_program({str(act_program.path)!r})\n"
            "run(p, {'x': np.zeros((2, 4, 5, 3), np.float32)})\n"
            "print(sorted(m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(Path(__file__).resolve().parent.parent))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""
