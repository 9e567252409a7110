"""The numpy reference executor (kerasfold.reference) against Keras, and MPS offsets (kerasfold.mps).

Keras side: the original model file loaded with ``keras.models.load_model(safe_mode=True,
compile=False)``. Reference side: only the export directory. Errors are relative to the largest
output magnitude; both sides compute in float32, whose accumulated noise on tiny-yolo-voc is
~4e-6 each against a float64 run.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from kerasfold import FORMAT_NAME, FORMAT_VERSION
from kerasfold.kinds.activation import NAMES as _NAMES
from kerasfold.errors import ExportError, UnsupportedLayer
from kerasfold import ops as _ops
from kerasfold.graph import Graph, Node, SourceInfo
from kerasfold.targets.mps.read import Export, load_export
from kerasfold.targets.mps.offsets import entry_offset, mps_offset, offset_for, window_start
from kerasfold.verify import reference
from kerasfold.verify.reference import ACTIVATIONS, OPS, _image, apply_activation, im2col_matmul, run, window
from kerasfold.kinds.base import axis_pad

REL = 1e-5
ROOT = Path(__file__).resolve().parent.parent


def rel_err(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / (np.max(np.abs(want)) or 1.0))


def _quiet_keras():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    return keras


def _load(path):
    keras = _quiet_keras()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.models.load_model(path, safe_mode=True, compile=False)


def _predict(model, xs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ys = model(xs if len(xs) > 1 else xs[0], training=False)
    return [np.asarray(y) for y in (ys if isinstance(ys, (list, tuple)) else [ys])]


def _with_offsets(out, make=offset_for):
    """A fresh Export of ``out`` whose conv/pool entries carry an explicit ``offset``."""
    export = load_export(out)
    for entry in export.layers:
        if entry["type"] in ("conv2d", "depthwise_conv2d", "max_pool2d", "avg_pool2d"):
            entry["offset"] = make(entry)
    return export


# --------------------------------------------------------------------------------------------
# MPS offsets: the pure function


def forge_conv_offset(k, s, size):
    """Forge's offsetForConvolution (hollance/Forge, Forge/Layers.swift), one axis, 'same'."""
    out = -(-size // s)
    pad = (out - 1) * s + k - size                       # not clamped at 0
    return int((k - pad) / 2)                           # Swift Int division truncates


@pytest.mark.parametrize("k, s, d, before, want", [
    (3, 1, 1, 1, 0),     # 3x3 same: offset 0 (Forge's default for stride 1)
    (3, 2, 1, 0, 1),     # 3x3 stride 2 on an even input: TF pads bottom/right only
    (3, 2, 1, 1, 0),     # 3x3 stride 2 on an odd input
    (1, 2, 1, 0, 0),     # 1x1 stride 2 (even input): reads pixels 0, 2, 4, ...
    (2, 1, 1, 0, 1),     # 2x2 stride 1 (tiny-yolo's sixth pool): pad [0, 1]
    (2, 2, 1, 0, 1),     # 2x2 stride 2, no pad: Forge's kernel/2
    (4, 1, 1, 1, 1),     # 4x4 stride 1: pad [1, 2]
    (4, 2, 1, 1, 1),     # 4x4 stride 2 on an even input: pad [1, 1]
    (3, 1, 2, 2, 0),     # 3x3 dilation 2 (k_eff 5): pad [2, 2]
    (2, 1, 2, 1, 0),     # 2x2 dilation 2 (k_eff 3): pad [1, 1]
    (5, 1, 1, 0, 2),     # valid: the window starts at the centre minus k>>1
])
def test_mps_offset_table(k, s, d, before, want):
    assert mps_offset(k, s, d, before) == want


def test_mps_window_reproduces_tensorflow_same_and_valid():
    """For every geometry, MPS's window with mps_offset reads exactly TensorFlow's padded window."""
    for size in range(1, 14):
        for k in range(1, 6):
            for s in range(1, 4):
                for d in range(1, 4):
                    for padding in ("same", "valid"):
                        if s > 1 and d > 1:
                            continue
                        before, _, out = axis_pad(size, k, s, d, padding)
                        if out < 1:
                            continue
                        off = mps_offset(k, s, d, before)
                        for i in range(out):
                            tf_taps = [i * s - before + j * d for j in range(k)]
                            mps_taps = [window_start(i, s, off, k, d) + j * d for j in range(k)]
                            assert mps_taps == tf_taps, (size, k, s, d, padding, i)


@pytest.mark.parametrize("k, s, size, forge_right", [
    (3, 1, 13, True), (3, 2, 8, True), (3, 2, 9, True), (1, 1, 13, True),
    (2, 1, 13, False), (4, 1, 8, False), (1, 2, 8, False), (1, 2, 9, True), (2, 2, 9, False),
    (2, 2, 8, True), (4, 2, 8, True), (1, 3, 9, False), (1, 3, 10, True),
])
def test_forge_conv_offset_differs_for_even_kernels_and_1x1_stride_2(k, s, size, forge_right):
    """DOMAIN.md's claim, checked: Forge's 'same' offset is wrong for even kernels at stride 1 (and
    any even kernel with an odd total pad) and for 1x1 stride 2 on even inputs (negative pad)."""
    before, _, _ = axis_pad(size, k, s, 1, "same")
    assert (forge_conv_offset(k, s, size) == mps_offset(k, s, 1, before)) is forge_right


def test_offset_for_entry_and_manifest_forms():
    entry = {"name": "p", "type": "max_pool2d", "pool_size": [2, 2], "strides": [1, 1], "pad": [0, 1, 0, 1]}
    assert offset_for(entry) == {"x": 1, "y": 1}
    conv = {"name": "c", "kernel": [4, 1], "strides": [2, 2], "dilation": [1, 1], "pad": [1, 1, 0, 0]}
    assert offset_for(conv) == {"x": 0, "y": 1}
    assert entry_offset(conv) == (1, 0)
    assert entry_offset({**conv, "offset": {"x": 3, "y": -2}}) == (-2, 3)
    assert entry_offset({**conv, "offset": [5, 6]}) == (5, 6)
    with pytest.raises(ExportError, match="offset"):
        entry_offset({**conv, "offset": 7})
    with pytest.raises(ValueError):
        mps_offset(0, 1, 1, 0)


# --------------------------------------------------------------------------------------------
# tiny-yolo-voc (416x416): reference vs Keras, offset mode, layer by layer, speed, tampering


@pytest.fixture(scope="session")
def ty_input():
    return np.random.default_rng(7).random((1, 416, 416, 3), dtype=np.float32)


@pytest.fixture(scope="session")
def ty_keras(tiny_yolo):
    return _load(tiny_yolo["keras2-h5"])


@pytest.fixture(scope="session")
def ty_keras_out(ty_keras, ty_input):
    return _predict(ty_keras, [ty_input])[0]


@pytest.fixture(scope="session")
def ty_ref(tiny_yolo_export, ty_input):
    start = time.perf_counter()
    layers = run(load_export(tiny_yolo_export), [ty_input], keep=True)
    return layers, time.perf_counter() - start


def test_tiny_yolo_matches_keras(ty_ref, ty_keras_out, tiny_yolo_export):
    layers, _ = ty_ref
    manifest = load_export(tiny_yolo_export).manifest
    assert manifest["outputs"] == ["conv2d_9"]
    got = layers["conv2d_9"]
    assert got.shape == ty_keras_out.shape == (1, 13, 13, 125) and got.dtype == np.float32
    assert rel_err(got, ty_keras_out) <= REL


def test_tiny_yolo_outputs_only_without_keep(tiny_yolo_export, ty_input, ty_ref):
    out = run(load_export(tiny_yolo_export), [ty_input])
    assert list(out) == ["conv2d_9"]
    np.testing.assert_array_equal(out["conv2d_9"], ty_ref[0]["conv2d_9"])


def test_tiny_yolo_layer_by_layer(ty_ref, ty_keras, ty_input, tiny_yolo_export):
    """keep=True gives every entry's output; each matches the Keras layer it ends with
    (conv2d_k fused with BN and LeakyReLU -> leaky_re_lu_k)."""
    keras = _quiet_keras()
    layers, _ = ty_ref
    names = [e["name"] for e in load_export(tiny_yolo_export).layers]
    assert list(layers) == names
    keras_name = {n: (f"leaky_re_lu_{n.split('_')[1]}" if n.startswith("conv2d_") and n != "conv2d_9" else n)
                  for n in names}
    probe = keras.Model(ty_keras.inputs, [ty_keras.get_layer(keras_name[n]).output for n in names])
    for name, want in zip(names, _predict(probe, [ty_input])):
        assert layers[name].shape == want.shape, name
        assert rel_err(layers[name], want) <= REL, name


def test_tiny_yolo_offset_mode_equals_pad_mode(tiny_yolo_export, ty_input, ty_ref, ty_keras_out):
    want = ty_ref[0]["conv2d_9"]
    export = _with_offsets(tiny_yolo_export)
    offsets = {e["name"]: e["offset"] for e in export.layers}
    assert offsets["max_pooling2d_1"] == {"x": 1, "y": 1}           # 2x2 stride 2, no pad
    assert offsets["max_pooling2d_6"] == {"x": 1, "y": 1}           # 2x2 stride 1, pad [0, 1]
    assert offsets["conv2d_1"] == {"x": 0, "y": 0} and offsets["conv2d_9"] == {"x": 0, "y": 0}
    got = run(export, [ty_input], padding="offset")["conv2d_9"]
    np.testing.assert_array_equal(got, want)
    assert rel_err(got, ty_keras_out) <= REL
    derived = run(load_export(tiny_yolo_export), [ty_input], padding="offset")["conv2d_9"]
    np.testing.assert_array_equal(derived, want)                    # offsets derived from pad


def test_tiny_yolo_speed(ty_ref):
    _, seconds = ty_ref
    print(f"\nreference executor, tiny-yolo-voc 416x416 batch 1: {seconds:.2f} s")
    assert seconds < 5.0


def test_tiny_yolo_tampered_bin_changes_result(tiny_yolo_export, ty_input, ty_ref, tmp_path):
    out = tmp_path / "tampered"
    shutil.copytree(tiny_yolo_export, out)
    export = load_export(out)
    entry = next(e for e in export.layers if e["name"] == "conv2d_5")
    path = out / entry["weights"]["file"]
    w = np.fromfile(path, dtype="<f4")
    w[: w.size // 256] *= 1.5                                      # first output channel, scaled
    w.tofile(path)
    got = run(export, [ty_input])["conv2d_9"]
    assert rel_err(got, ty_ref[0]["conv2d_9"]) > 1e-3
    assert export.hash_mismatches == [entry["weights"]["file"]]


def test_runs_without_tensorflow(tiny_yolo_export):
    code = (
        "import sys\n"
        "for m in ('tensorflow', 'keras', 'tf_keras'): sys.modules[m] = None\n"
        "import numpy as np\n"
        "from kerasfold.targets.mps.read import load_export\n"
        "from kerasfold.verify.reference import run\n"
        f"ex = load_export({str(tiny_yolo_export)!r})\n"
        "y = run(ex, [np.ones((1, 416, 416, 3), np.float32)])['conv2d_9']\n"
        "assert y.shape == (1, 13, 13, 125) and np.isfinite(y).all()\n"
        "assert not any(m in sys.modules and sys.modules[m] is not None for m in ('tensorflow', 'keras'))\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# --------------------------------------------------------------------------------------------
# small Keras 3 models, exported with kerasfold.export.export, every case an output of one model

C_IN = 4
SIZES = (7, 8, 9, 13)

# name: (input size, Conv2D kwargs); padding "same" unless given
CONV_CASES = {
    "conv3x3_s1_odd": (7, dict(kernel_size=3)),
    "conv3x3_s2_even": (8, dict(kernel_size=3, strides=2)),
    "conv3x3_s2_odd": (9, dict(kernel_size=3, strides=2)),
    "conv1x1_s2_even": (8, dict(kernel_size=1, strides=2)),
    "conv1x1_s2_odd": (9, dict(kernel_size=1, strides=2)),
    "conv2x2_s1": (7, dict(kernel_size=2)),
    "conv2x2_s2_odd": (9, dict(kernel_size=2, strides=2)),
    "conv4x4_s1_even": (8, dict(kernel_size=4)),
    "conv4x4_s2_even": (8, dict(kernel_size=4, strides=2)),
    "conv4x4_s2_odd": (9, dict(kernel_size=4, strides=2)),
    "conv3x3_d2": (9, dict(kernel_size=3, dilation_rate=2)),
    "conv2x2_d2": (8, dict(kernel_size=2, dilation_rate=2)),
    "conv3x3_d2_valid": (9, dict(kernel_size=3, dilation_rate=2, padding="valid")),
    "conv3x2_s2x1": (9, dict(kernel_size=(3, 2), strides=(2, 1))),
    "conv3x3_g2": (8, dict(kernel_size=3, groups=2)),
    "conv3x3_g4_s2": (9, dict(kernel_size=3, groups=4, strides=2, filters=8)),
    "conv3x3_s2_valid": (9, dict(kernel_size=3, strides=2, padding="valid")),
    "conv5x5_s3_same": (13, dict(kernel_size=5, strides=3)),
}
DEPTHWISE_CASES = {
    "dw3x3_s2_m2_even": (8, dict(kernel_size=3, strides=2, depth_multiplier=2)),
    "dw2x2_s1_m1": (7, dict(kernel_size=2)),
    "dw3x3_d2_m3": (9, dict(kernel_size=3, dilation_rate=2, depth_multiplier=3)),
    "dw4x4_s2_odd": (9, dict(kernel_size=4, strides=2)),
}
# name: (input size, pool size, strides, padding)
POOL_GEOMETRIES = {
    "2x2_s2_same_odd": (7, 2, 2, "same"),
    "2x2_s2_same_even": (8, 2, 2, "same"),
    "2x2_s1_same_13": (13, 2, 1, "same"),          # tiny-yolo's sixth pool
    "2x2_s1_same_even": (8, 2, 1, "same"),
    "3x3_s2_same_odd": (9, 3, 2, "same"),
    "3x3_s2_same_even": (8, 3, 2, "same"),
    "3x3_s1_same": (7, 3, 1, "same"),
    "4x4_s3_same": (13, 4, 3, "same"),
    "2x2_s2_valid_odd": (7, 2, 2, "valid"),
    "3x3_s2_valid_even": (8, 3, 2, "valid"),
}
POOL_CASES = {f"{kind}_{g}": (kind, *v) for kind in ("max", "avg") for g, v in POOL_GEOMETRIES.items()}
WINDOW_CASES = [*CONV_CASES, *DEPTHWISE_CASES, *POOL_CASES]

# fused into a 1x1 conv (conv_<name>) and, where a layer exists, as a standalone activation entry
FUSED_ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "elu", "selu", "swish", "hard_sigmoid",
                     "softplus", "softsign", "softmax", "gelu", "exponential", "relu6", "leaky_relu",
                     "mish", "hard_swish", "log_softmax"]
LAYER_ACTIVATIONS = {
    "act_relu6": lambda L: L.ReLU(max_value=6.0),
    "act_relu_slope_threshold": lambda L: L.ReLU(negative_slope=0.1, threshold=0.5),
    "act_relu_max_slope": lambda L: L.ReLU(max_value=1.5, negative_slope=0.2),
    "act_relu_threshold": lambda L: L.ReLU(threshold=0.3),
    "act_relu_all": lambda L: L.ReLU(max_value=2.0, negative_slope=0.3, threshold=0.25),
    "act_leaky": lambda L: L.LeakyReLU(negative_slope=0.3),
    "act_elu": lambda L: L.ELU(alpha=0.7),
    "act_gelu": lambda L: L.Activation("gelu"),
    "act_hard_sigmoid": lambda L: L.Activation("hard_sigmoid"),
}


def _seed_weights(model, seed):
    from models.bn_stats import randomize_bn
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights and layer.__class__.__name__ != "BatchNormalization":
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    randomize_bn(model, rng)
    return model


def _zoo(build, tmp_path_factory, name, seed):
    """Build a multi-input, multi-output model, save it (.keras), export it, predict it with
    Keras (loaded back, safe mode) on seeded N(0, 1) inputs; outputs by case name."""
    from kerasfold.pipeline import export
    keras = _quiet_keras()
    inputs = {s: keras.Input((s, s, C_IN), name=f"in_{s}") for s in SIZES}
    outputs = build(keras, inputs)                        # {case name: tensor}
    model = _seed_weights(keras.Model(list(inputs.values()), list(outputs.values())), seed)
    root = tmp_path_factory.mktemp(name)
    path = root / f"{name}.keras"
    model.save(path)
    out = root / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(path, out)
    rng = np.random.default_rng(seed + 1)
    xs = [rng.normal(0, 1, (2, s, s, C_IN)).astype(np.float32) for s in SIZES]
    want = dict(zip(outputs, _predict(_load(path), xs)))
    manifest_outputs = load_export(out).manifest["outputs"]
    assert len(manifest_outputs) == len(outputs)
    return {"out": out, "xs": xs, "keras": want, "name": dict(zip(outputs, manifest_outputs))}


def _reference(zoo, padding="pad", export=None):
    got = run(export or load_export(zoo["out"]), zoo["xs"], padding=padding)
    return {case: got[name] for case, name in zoo["name"].items()}


@pytest.fixture(scope="session")
def window_zoo(tmp_path_factory):
    def build(keras, inputs):
        L, out = keras.layers, {}
        for name, (size, kw) in CONV_CASES.items():
            kw = {"padding": "same", "filters": 6, **kw}
            out[name] = L.Conv2D(name=name, **kw)(inputs[size])
        for name, (size, kw) in DEPTHWISE_CASES.items():
            out[name] = L.DepthwiseConv2D(name=name, **{"padding": "same", **kw})(inputs[size])
        for name, (kind, size, pool, stride, padding) in POOL_CASES.items():
            cls = L.MaxPooling2D if kind == "max" else L.AveragePooling2D
            out[name] = cls(pool, strides=stride, padding=padding, name=name)(inputs[size])
        return out
    zoo = _zoo(build, tmp_path_factory, "windows", seed=11)
    zoo["pad"] = _reference(zoo)
    zoo["offset"] = _reference(zoo, "offset", _with_offsets(zoo["out"]))
    return zoo


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_window_case_matches_keras(window_zoo, case):
    want = window_zoo["keras"][case]
    assert window_zoo["pad"][case].shape == want.shape
    assert rel_err(window_zoo["pad"][case], want) <= REL


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_window_case_offset_mode_matches_keras_and_pad_mode(window_zoo, case):
    np.testing.assert_array_equal(window_zoo["offset"][case], window_zoo["pad"][case])
    assert rel_err(window_zoo["offset"][case], window_zoo["keras"][case]) <= REL


def test_window_zoo_manifest_geometry(window_zoo):
    """The cases are what they claim: pads and offsets as TensorFlow and MPS put them."""
    layers = {e["name"]: e for e in load_export(window_zoo["out"]).layers}
    assert layers["max_2x2_s1_same_13"]["pad"] == [0, 1, 0, 1]
    assert layers["conv1x1_s2_even"]["pad"] == [0, 0, 0, 0]
    assert layers["conv4x4_s1_even"]["pad"] == [1, 2, 1, 2]
    assert layers["conv3x3_s2_even"]["pad"] == [0, 1, 0, 1]
    assert layers["conv3x3_g2"]["groups"] == 2 and layers["conv3x3_d2"]["dilation"] == [2, 2]
    assert offset_for(layers["conv2x2_s1"]) == {"x": 1, "y": 1}
    assert offset_for(layers["conv3x3_s2_odd"]) == {"x": 0, "y": 0}


@pytest.mark.parametrize("case, forge", [
    ("conv2x2_s1", lambda e: {"x": forge_conv_offset(2, 1, 7), "y": forge_conv_offset(2, 1, 7)}),
    ("conv4x4_s1_even", lambda e: {"x": forge_conv_offset(4, 1, 8), "y": forge_conv_offset(4, 1, 8)}),
    ("conv1x1_s2_even", lambda e: {"x": forge_conv_offset(1, 2, 8), "y": forge_conv_offset(1, 2, 8)}),
])
def test_offset_mode_uses_the_offset(window_zoo, case, forge):
    """Forge's offsets for these layers shift the window: offset mode then disagrees with Keras."""
    export = load_export(window_zoo["out"])
    entry = next(e for e in export.layers if e["name"] == window_zoo["name"][case])
    entry["offset"] = forge(entry)
    assert entry["offset"] != offset_for(entry)
    got = _reference(window_zoo, "offset", export)[case]
    assert rel_err(got, window_zoo["keras"][case]) > 1e-2


@pytest.fixture(scope="session")
def activation_zoo(tmp_path_factory):
    def build(keras, inputs):
        L, out = keras.layers, {}
        for name in FUSED_ACTIVATIONS:
            out[f"conv_{name}"] = L.Conv2D(5, 1, activation=name, name=f"conv_{name}")(inputs[7])
        for name, make in LAYER_ACTIVATIONS.items():
            pooled = L.MaxPooling2D(2, strides=1, padding="same", name=f"pool_{name}")(inputs[8])
            out[name] = make(L)(pooled)
        # activation layers after a conv: fused into it
        out["conv_then_relu_layer"] = L.ReLU(max_value=1.0, negative_slope=0.05, name="rl")(
            L.Conv2D(3, 3, padding="same", name="conv_rl")(inputs[9]))
        return out
    zoo = _zoo(build, tmp_path_factory, "activations", seed=21)
    zoo["pad"] = _reference(zoo)
    return zoo


ACTIVATION_CASES = [f"conv_{n}" for n in FUSED_ACTIVATIONS] + list(LAYER_ACTIVATIONS) + ["conv_then_relu_layer"]


@pytest.mark.parametrize("case", ACTIVATION_CASES)
def test_activation_case_matches_keras(activation_zoo, case):
    assert rel_err(activation_zoo["pad"][case], activation_zoo["keras"][case]) <= REL


def test_activation_zoo_entries(activation_zoo):
    layers = {e["name"]: e for e in load_export(activation_zoo["out"]).layers}
    assert layers["conv_rl"]["activation"] == {"type": "relu", "alpha": 0.05, "max_value": 1.0}
    assert layers["conv_relu6"]["activation"] == {"type": "relu", "max_value": 6.0}
    assert layers["conv_swish"]["activation"]["type"] == "swish"
    standalone = [e for e in layers.values() if e["type"] == "activation"]
    assert len(standalone) == len(LAYER_ACTIVATIONS)


@pytest.fixture(scope="session")
def ops_zoo(tmp_path_factory):
    """Multi-input layers, global pools, BatchNormalization (folded and standalone), dense."""
    def build(keras, inputs):
        L, out = keras.layers, {}
        a = L.Conv2D(6, 3, padding="same", name="a")(inputs[8])
        b = L.Conv2D(6, 1, name="b")(inputs[8])
        out["add"] = L.Add(name="add")([a, b, L.Conv2D(6, 2, padding="same", name="c")(inputs[8])])
        out["concatenate"] = L.Concatenate(name="concat")([a, L.MaxPooling2D(1, name="p1")(inputs[8])])
        out["global_avg"] = L.GlobalAveragePooling2D(name="gap")(a)
        out["global_max_keepdims"] = L.GlobalMaxPooling2D(keepdims=True, name="gmp")(b)
        x = L.Conv2D(5, 3, strides=2, padding="same", use_bias=False, name="conv_bn")(inputs[9])
        x = L.BatchNormalization(name="bn_folded")(x)
        out["conv_bn_relu"] = L.ReLU(name="r")(x)
        y = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw_bn")(inputs[7])
        out["dw_bn"] = L.BatchNormalization(name="bn_dw")(y)
        pooled = L.AveragePooling2D(2, padding="same", name="avg_for_bn")(inputs[7])
        out["bn_standalone"] = L.BatchNormalization(name="bn_alone")(pooled)
        flat = L.Flatten(name="flat")(L.MaxPooling2D(3, strides=2, padding="same", name="pf")(inputs[9]))
        out["dense"] = L.Dense(7, activation="tanh", name="dense")(flat)
        out["dense_4d"] = L.Dense(3, name="dense4d")(inputs[7])
        for name, (size, k, st, padding) in TRANSPOSE_CASES.items():
            out[name] = L.Conv2DTranspose(3, k, strides=st, padding=padding, name=name)(inputs[size])
        up = L.Conv2DTranspose(4, 3, strides=2, padding="same", use_bias=False, name="deconv_bn")(inputs[7])
        out["deconv_bn"] = L.BatchNormalization(name="bn_deconv")(up)
        out["separable_s2"] = L.SeparableConv2D(5, 3, strides=2, depth_multiplier=2, padding="same",
                                                name="sep")(inputs[8])
        return out
    zoo = _zoo(build, tmp_path_factory, "ops", seed=31)
    zoo["pad"] = _reference(zoo)
    zoo["offset"] = _reference(zoo, "offset")
    return zoo


# name: (input size, kernel, strides, padding)
TRANSPOSE_CASES = {
    "deconv3x3_s2_same": (7, 3, 2, "same"),
    "deconv2x2_s2_valid": (8, 2, 2, "valid"),
    "deconv4x4_s2_same": (9, 4, 2, "same"),
    "deconv1x1_s2_valid": (7, 1, 2, "valid"),       # kernel < stride: TF's output is in·s
    "deconv3x3_s1_same": (8, 3, 1, "same"),
    "deconv3x2_s3x1_valid": (7, (3, 2), (3, 1), "valid"),
}
OPS_CASES = ["add", "concatenate", "global_avg", "global_max_keepdims", "conv_bn_relu", "dw_bn",
             "bn_standalone", "dense", "dense_4d", *TRANSPOSE_CASES, "deconv_bn", "separable_s2"]


@pytest.mark.parametrize("case", OPS_CASES)
def test_ops_case_matches_keras(ops_zoo, case):
    assert ops_zoo["pad"][case].shape == ops_zoo["keras"][case].shape
    assert rel_err(ops_zoo["pad"][case], ops_zoo["keras"][case]) <= REL
    np.testing.assert_array_equal(ops_zoo["offset"][case], ops_zoo["pad"][case])


def test_ops_zoo_entries(ops_zoo):
    types = {e["name"]: e["type"] for e in load_export(ops_zoo["out"]).layers}
    assert {"add", "concatenate", "global_avg_pool2d", "global_max_pool2d", "dense", "flatten"} <= set(types.values())
    assert types["bn_alone"] == "depthwise_conv2d" and "bn_folded" not in types
    assert types["deconv3x3_s2_same"] == "conv2d_transpose" and "bn_deconv" not in types


# --------------------------------------------------------------------------------------------
# hand-made manifests: ops the exporter does not emit (yet), float16, errors


def write_export(root, inputs, layers, tensors=None, dtype="float32", outputs=None):
    """A minimal FORMAT.md export: ``tensors`` maps (layer, "weights"|"bias") to arrays."""
    root.mkdir(parents=True)
    for entry in layers:
        entry.setdefault("activation", {"type": "linear"})
        entry.setdefault("folded", [])
        for key in ("weights", "bias"):
            array = (tensors or {}).get((entry["name"], key))
            if array is None:
                continue
            kind = dtype if key == "weights" else "float32"
            data = np.ascontiguousarray(array, np.dtype(kind).newbyteorder("<")).tobytes()
            name = f"{entry['name']}{'_W' if key == 'weights' else '_b'}.bin"
            (root / name).write_bytes(data)
            entry[key] = {"file": name, "shape": list(array.shape), "dtype": kind,
                          "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "dtype": dtype,
                "inputs": [{"name": n, "shape": list(s)} for n, s in inputs.items()],
                "outputs": outputs or [layers[-1]["name"]], "layers": layers}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return load_export(root)


@pytest.fixture
def xs():
    rng = np.random.default_rng(3)
    return [rng.normal(0, 1, (2, 6, 8, c)).astype(np.float32) for c in (3, 3, 5)]


def test_add_and_concatenate_by_hand(tmp_path, xs):
    keras = _quiet_keras()
    export = write_export(tmp_path / "e", {"a": (6, 8, 3), "b": (6, 8, 3), "c": (6, 8, 5)}, [
        {"name": "sum", "type": "add", "inputs": ["a", "b", "a"], "output_shape": [6, 8, 3]},
        {"name": "cat", "type": "concatenate", "inputs": ["sum", "c"], "axis": 2, "output_shape": [6, 8, 8],
         "activation": {"type": "relu"}},
        {"name": "cat_w", "type": "concatenate", "inputs": ["a", "b"], "axis": 1, "output_shape": [6, 16, 3]},
        {"name": "cat_neg", "type": "concatenate", "inputs": ["c", "b"], "axis": -1, "output_shape": [6, 8, 8]},
    ], outputs=["cat", "cat_w", "cat_neg"])
    got = run(export, xs)
    s = keras.layers.Add()([xs[0], xs[1], xs[0]])
    np.testing.assert_allclose(got["cat"], np.asarray(keras.layers.ReLU()(
        keras.layers.Concatenate(axis=-1)([s, xs[2]]))), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["cat_w"], np.asarray(keras.layers.Concatenate(axis=2)([xs[0], xs[1]])))
    np.testing.assert_array_equal(got["cat_neg"], np.concatenate([xs[2], xs[1]], axis=-1))


def test_space_to_depth_is_tensorflows(tmp_path, xs):
    import tensorflow as tf
    export = write_export(tmp_path / "e", {"a": (6, 8, 3)}, [
        {"name": "s2d", "type": "space_to_depth", "inputs": ["a"], "block_size": 2, "output_shape": [3, 4, 12]}])
    got = run(export, xs[:1])["s2d"]
    np.testing.assert_array_equal(got, tf.nn.space_to_depth(xs[0], 2).numpy())
    assert got[0, 1, 2, 3 * 3 + 1] == xs[0][0, 3, 5, 1]             # (bi, bj) = (1, 1), channel 1


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pools_by_hand(tmp_path, xs, keepdims):
    keras = _quiet_keras()
    shape = [1, 1, 3] if keepdims else [3]
    export = write_export(tmp_path / "e", {"a": (6, 8, 3)}, [
        {"name": "gap", "type": "global_avg_pool2d", "inputs": ["a"], "keepdims": keepdims, "output_shape": shape},
        {"name": "gmp", "type": "global_max_pool2d", "inputs": ["a"], "keepdims": keepdims, "output_shape": shape},
    ], outputs=["gap", "gmp"])
    got = run(export, xs[:1])
    want_avg = np.asarray(keras.layers.GlobalAveragePooling2D(keepdims=keepdims)(xs[0]))
    want_max = np.asarray(keras.layers.GlobalMaxPooling2D(keepdims=keepdims)(xs[0]))
    assert rel_err(got["gap"], want_avg) <= REL
    np.testing.assert_array_equal(got["gmp"], want_max)


def test_float16_weights_are_upcast(tmp_path, xs):
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.5, 4).astype(np.float32)

    def entry():
        return [{"name": "c", "type": "conv2d", "inputs": ["a"], "kernel": [3, 3], "strides": [1, 1],
                 "dilation": [1, 1], "groups": 1, "pad": [1, 1, 1, 1], "output_shape": [6, 8, 4],
                 "activation": {"type": "leaky_relu", "alpha": 0.1}}]
    half = write_export(tmp_path / "h", {"a": (6, 8, 3)}, entry(), {("c", "weights"): w, ("c", "bias"): b},
                        dtype="float16")
    assert half.layers[0]["weights"]["dtype"] == "float16"
    rounded = write_export(tmp_path / "f", {"a": (6, 8, 3)}, entry(),
                           {("c", "weights"): w.astype(np.float16).astype(np.float32), ("c", "bias"): b})
    got = run(half, xs[:1])["c"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, run(rounded, xs[:1])["c"])


def test_unknown_type_names_layer_and_supported_types(tmp_path, xs):
    export = write_export(tmp_path / "e", {"a": (6, 8, 3)}, [
        {"name": "relu_ok", "type": "activation", "inputs": ["a"], "activation": {"type": "relu"}},
        {"name": "mystery", "type": "keras_layer", "inputs": ["relu_ok"], "class_name": "Lambda"}])
    with pytest.raises(ExportError) as info:
        run(export, xs[:1])
    assert info.value.layer == "mystery"
    message = str(info.value)
    assert "layer 'mystery'" in message and "Opaque 'Lambda'" in message
    assert all(t in message for t in ("Conv2D", "Pool2D", "SpaceToDepth"))
    with pytest.raises(UnsupportedLayer, match="layer 'odd'.*FORMAT.md.*conv2d.*received 'warp_field'"):
        write_export(tmp_path / "f", {"a": (6, 8, 3)}, [            # refused on load (schema.py)
            {"name": "odd", "type": "warp_field", "inputs": ["a"]}])


def test_unknown_activation_names_layer(tmp_path, xs):
    export = write_export(tmp_path / "e", {"a": (6, 8, 3)}, [
        {"name": "odd", "type": "activation", "inputs": ["a"], "activation": {"type": "swishy"}}])
    with pytest.raises(ExportError, match="layer 'odd'.*swishy"):
        run(export, xs[:1])


def test_shape_and_input_errors(tmp_path, xs):
    export = write_export(tmp_path / "e", {"a": (6, 8, 3)}, [
        {"name": "p", "type": "max_pool2d", "inputs": ["a"], "pool_size": [2, 2], "strides": [2, 2],
         "pad": [0, 0, 0, 0], "output_shape": [3, 5, 3]}])
    with pytest.raises(ExportError, match=r"layer 'p'.*\(3, 5, 3\).*\(3, 4, 3\)"):
        run(export, xs[:1])
    with pytest.raises(ExportError, match="expected input 'a' of shape"):
        run(export, [xs[2]])
    with pytest.raises(ExportError, match="expected 1 input"):
        run(export, xs[:2])
    with pytest.raises(ValueError):
        run(export, xs[:1], padding="same")


def test_offset_mode_rejects_windows_outside_the_image(tmp_path, xs):
    export = write_export(tmp_path / "e", {"a": (6, 8, 3)}, [
        {"name": "p", "type": "max_pool2d", "inputs": ["a"], "pool_size": [2, 2], "strides": [2, 2],
         "pad": [0, 0, 0, 0], "offset": {"x": 9, "y": 1}, "output_shape": [3, 4, 3]}])
    with pytest.raises(ExportError, match="layer 'p'.*outside"):
        run(export, xs[:1], padding="offset")


# --------------------------------------------------------------------------------------------
# activations: every name of the manifest's vocabulary, against keras.activations


def _grid():
    x = np.concatenate([np.linspace(-12, 12, 2001), [-100, -30, -1e-3, 0, 1e-3, 30, 100]])
    return x.astype(np.float32).reshape(1, 1, -1, 1).repeat(3, axis=3) * np.array([1, 0.5, -0.25], np.float32)


@pytest.mark.parametrize("name", sorted(_NAMES))
def test_activation_vocabulary_matches_keras(name):
    from kerasfold.kinds.activation import from_name
    keras = _quiet_keras()
    x = _grid() if name not in ("exponential",) else np.clip(_grid(), -20, 20)
    if name in ("softmax", "log_softmax"):
        x = x.reshape(1, 1, -1, 8)
    spec = from_name(name)
    assert spec["type"] in ACTIVATIONS
    got = apply_activation(x, spec)
    want = np.asarray(keras.activations.get(name)(x))
    assert got.dtype == np.float32
    assert rel_err(got, want) <= 2e-6, name


@pytest.mark.parametrize("alpha, max_value, threshold", [
    (0.0, None, 0.0), (0.0, 6.0, 0.0), (0.1, None, 0.0), (0.1, 6.0, 0.0), (0.0, None, 0.5),
    (0.2, None, 0.5), (0.2, 3.0, -1.0), (0.0, 2.5, 1.0), (1.5, None, 0.0)])
def test_relu_parameters_match_keras(alpha, max_value, threshold):
    keras = _quiet_keras()
    x = _grid()
    spec = {"type": "relu", "alpha": alpha, "max_value": max_value, "threshold": threshold}
    want = keras.activations.relu(x, negative_slope=alpha, max_value=max_value, threshold=threshold)
    np.testing.assert_allclose(apply_activation(x, spec), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_leaky_elu_parameters_match_keras():
    keras = _quiet_keras()
    x = _grid()
    np.testing.assert_allclose(apply_activation(x, {"type": "leaky_relu", "alpha": 0.1}),
                               np.asarray(keras.layers.LeakyReLU(negative_slope=0.1)(x)), rtol=1e-6)
    np.testing.assert_allclose(apply_activation(x, {"type": "elu", "alpha": 0.7}),
                               np.asarray(keras.layers.ELU(alpha=0.7)(x)), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# the executor's shortcuts (kept graph, weights cast once, one im2col buffer, 1x1 convolutions
# without im2col, bias and activation in place) against the straightforward executor they
# replaced, kept here as the yardstick: same values, bit for bit, for every node

class _PlainContext:
    """Every weight cast again on every use."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def array(self, a):
        return None if a is None else np.asarray(a, np.float32).astype(self.dtype)


def _plain_bias(y, op, ctx):
    b = ctx.array(op.bias)
    return y if b is None else y + b


@_image
def _plain_conv2d(op, xs, ctx):
    x, w = xs[0], ctx.array(op.kernel)
    kh, kw, cg, cout = w.shape
    win = window(x, (kh, kw), op.strides, op.dilation, op.pad)
    xp, base = win.frame(x, 0.0)
    cols = np.stack([xp[:, r, c, :] for _, _, r, c in win.taps(base)], axis=3)  # (N, oh, ow, T, C)
    return _plain_bias(im2col_matmul(cols, w, op.groups).reshape(x.shape[0], *win.out, cout), op, ctx)


def _bias_after(fn):
    """``fn`` (an operation whose only shortcut is the in-place bias) run without its bias, then
    ``+ bias`` as a new array."""
    def plain(op, xs, ctx):
        return _plain_bias(fn(dataclasses.replace(op, bias=None), xs, ctx), op, ctx)
    return plain


@_image
def _plain_pool2d(op, xs, ctx):
    """Max pooling tap by tap from a copy of the first tap (the average is unchanged)."""
    if op.mode != "max":
        return OPS[_ops.Pool2D](op, xs, ctx)
    win = window(xs[0], op.size, op.strides, (1, 1), op.pad)
    xp, base = win.frame(xs[0], -np.inf)
    out = None
    for _, _, r, c in win.taps(base):
        out = xp[:, r, c, :].copy() if out is None else np.maximum(out, xp[:, r, c, :], out=out)
    return out


_PLAIN_OPS = {**OPS, _ops.Conv2D: _plain_conv2d, _ops.Pool2D: _plain_pool2d,
              **{cls: _bias_after(OPS[cls]) for cls in (_ops.Conv2DTranspose, _ops.DepthwiseConv2D, _ops.Dense)}}


def plain_run(source, xs, dtype, padding="pad"):
    """Every node's output: a fresh decode, fresh casts, im2col by ``np.stack``, ``y + b``, pools
    tap by tap from a copy, and the activation as a new array."""
    graph = source.graph(windows=padding) if isinstance(source, Export) else source
    ctx = _PlainContext(dtype)
    tensors = {name: np.ascontiguousarray(x, dtype=ctx.dtype) for name, x in zip(graph.inputs, xs)}
    for node in graph:
        y = _PLAIN_OPS[type(node.op)](node.op, [tensors[n] for n in node.inputs], ctx)
        tensors[node.name] = apply_activation(np.asarray(y, ctx.dtype), node.op.activation or _ops.linear())
    return {node.name: tensors[node.name] for node in graph}


def assert_bit_identical(got, want):
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert np.array_equal(got[name], want[name], equal_nan=True), name


@pytest.fixture(scope="session")
def mixed_sources(small_model, tmp_path_factory):
    """models.small.mixed: its export, its unfolded graph (BN, activations as nodes) and an input."""
    from kerasfold.pipeline import export, prepare
    from models.small import mixed
    _, path = small_model(mixed)
    out = tmp_path_factory.mktemp("mixed") / "out"
    export(path, out)
    x = np.random.default_rng(3).normal(0, 1, (2, 16, 16, 3)).astype(np.float32)
    return out, prepare(path, fold=False), x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("padding", ["pad", "offset"])
def test_tiny_yolo_bit_identical_to_the_plain_executor(tiny_yolo_export, ty_input, dtype, padding):
    export = load_export(tiny_yolo_export)
    want = plain_run(export, [ty_input], dtype, padding)
    for _ in range(2):                                   # first run, and a run on the kept casts
        assert_bit_identical(run(export, [ty_input], dtype=dtype, padding=padding, keep=True), want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mixed_bit_identical_to_the_plain_executor(mixed_sources, dtype):
    out, graph, x = mixed_sources
    export = load_export(out)
    for source in (export, export, graph):
        assert_bit_identical(run(source, [x], dtype=dtype, keep=True), plain_run(source, [x], dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ops_zoo_bit_identical_to_the_plain_executor(ops_zoo, dtype):
    export = load_export(ops_zoo["out"])
    assert_bit_identical(run(export, ops_zoo["xs"], dtype=dtype, keep=True),
                         plain_run(export, ops_zoo["xs"], dtype))


def _conv_graph(rng):
    """Hand-made convolutions the exporter rarely writes: groups, dilation, strides, uneven and
    negative pads, 1x1 with and without stride, a dense on a 4-D tensor; pools with and without
    padding; 1-D (a Conv1D's (1, k, in, out) kernel)."""
    def w(*shape):
        return rng.normal(0, 1, shape).astype(np.float32)

    def conv(kernel, strides=(1, 1), dilation=(1, 1), groups=1, pad=(0, 0, 0, 0), bias=True, act=None):
        op = _ops.Conv2D(kernel=kernel, bias=w(kernel.shape[-1]) if bias else None, strides=strides,
                         dilation=dilation, groups=groups, padding="valid", pad=pad)
        op.activation = act or _ops.linear()
        return op

    leaky = {"type": "leaky_relu", "alpha": 0.3}
    nodes = [("crop", _ops.Crop(crop=(1, 0, 2, 1)), ["x"]),            # a view: im2col from strides
             ("c3", conv(w(3, 3, 6, 8), pad=(1, 1, 1, 1), act=leaky), ["x"]),
             ("c1", conv(w(1, 1, 8, 4), act={"type": "relu"}), ["c3"]),
             ("c1s2", conv(w(1, 1, 4, 6), strides=(2, 2)), ["c1"]),
             ("c1pad", conv(w(1, 1, 4, 5), pad=(1, 0, 0, 1), bias=False), ["c1"]),
             ("grouped", conv(w(3, 2, 2, 6), groups=3, strides=(2, 1), pad=(0, 2, 1, 0)), ["x"]),
             ("dilated", conv(w(3, 3, 6, 4), dilation=(2, 3), pad=(2, 2, 3, 3), act=leaky), ["x"]),
             ("cropped", conv(w(2, 2, 6, 3), pad=(-1, 0, 0, -1)), ["x"]),
             ("dilated_rows", conv(w(3, 2, 6, 3), dilation=(2, 1), strides=(1, 2), pad=(2, 2, 0, 1)), ["x"]),
             ("after_crop", conv(w(2, 2, 6, 3)), ["crop"]),
             ("dw", _ops.DepthwiseConv2D(kernel=w(3, 3, 4, 2), bias=w(8), strides=(2, 2), dilation=(1, 1),
                                         padding="same", pad=(0, 1, 0, 1)), ["c1"]),
             ("dense", _ops.Dense(kernel=w(4, 7), bias=w(7)), ["c1"]),
             ("max1", _ops.Pool2D(mode="max", size=(1, 1), strides=(2, 2), padding="valid", pad=(0, 0, 0, 0)), ["x"]),
             ("max2", _ops.Pool2D(mode="max", size=(2, 3), strides=(1, 2), padding="valid", pad=(0, 0, 0, 0)), ["c3"]),
             ("max3", _ops.Pool2D(mode="max", size=(3, 3), strides=(2, 2), padding="same", pad=(1, 1, 0, 1)), ["x"]),
             ("avg", _ops.Pool2D(mode="avg", size=(2, 2), strides=(2, 2), padding="same", pad=(0, 1, 0, 0)), ["x"]),
             ("conv1d", conv(w(1, 3, 5, 4), pad=(0, 0, 1, 1), act=leaky), ["s"]),
             ("pool1d", _ops.Pool2D(mode="max", size=(1, 2), strides=(1, 2), padding="valid", pad=(0, 0, 0, 0)),
              ["conv1d"])]
    graph = Graph(inputs={"x": (9, 10, 6), "s": (12, 5)}, nodes={}, outputs=[n for n, _, _ in nodes],
                  source=SourceInfo("m", "0" * 64, "3", "keras"))
    for name, op, inputs in nodes:
        graph.nodes[name] = Node(name=name, op=op, inputs=inputs, shape=None)
    return graph


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hand_made_convolutions_bit_identical_to_the_plain_executor(dtype):
    rng = np.random.default_rng(5)
    graph = _conv_graph(rng)
    xs = [rng.normal(0, 1, (2, 9, 10, 6)).astype(np.float32), rng.normal(0, 1, (2, 12, 5)).astype(np.float32)]
    assert_bit_identical(run(graph, xs, dtype=dtype, keep=True), plain_run(graph, xs, dtype))
    empty = [x[:0] for x in xs]                                            # a batch of none
    assert_bit_identical(run(graph, empty, dtype=dtype, keep=True), plain_run(graph, empty, dtype))


def _specials(dtype):
    """Signed zeros, infinities, subnormals, quiet and signalling NaNs of both signs, a spread."""
    dtype = np.dtype(dtype)
    uint = np.dtype(f"u{dtype.itemsize}")
    info = np.finfo(dtype)
    x = np.concatenate([_grid().ravel().astype(dtype), np.array(
        [0.0, -0.0, np.inf, -np.inf, info.tiny, -info.tiny, info.smallest_subnormal,
         -info.smallest_subnormal, info.tiny / 3, -info.tiny / 3, info.max, -info.max], dtype)])
    bits, mant = 8 * dtype.itemsize, info.nmant
    exponent = ((1 << (bits - 1)) - 1) & ~((1 << mant) - 1)
    sign, quiet = 1 << (bits - 1), 1 << (mant - 1)
    nans = np.array([exponent | quiet, exponent | quiet | 5, exponent | 3, sign | exponent | 1,
                     sign | exponent | quiet | 7], uint).view(dtype)
    return np.tile(np.concatenate([x, nans]), 3).reshape(1, 1, -1, 1)       # long enough for SIMD


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", [
    {"type": "leaky_relu", "alpha": 0.1}, {"type": "leaky_relu"}, {"type": "leaky_relu", "alpha": 0.999},
    {"type": "leaky_relu", "alpha": 1e-30}, {"type": "leaky_relu", "alpha": 0.0},
    {"type": "leaky_relu", "alpha": 1.5}, {"type": "relu"},
    {"type": "relu", "alpha": 0.0, "max_value": None, "threshold": 0.0},
    {"type": "relu", "max_value": 0.0}, {"type": "relu", "negative_slope": 0.1},
    {"type": "relu", "threshold": 0.5}, {"type": "linear"}])
def test_in_place_activation_bit_identical(spec, dtype):
    x = _specials(dtype)
    uint = f"u{x.dtype.itemsize}"
    with np.errstate(all="ignore"):
        want = apply_activation(x, spec)
        got = apply_activation(x.copy(), spec, in_place=True)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(uint), want.view(uint))


def test_in_place_activation_leaves_shared_outputs_alone():
    """An op whose output is a view of its input (Activation, Reshape) must not have the
    activation written into the input it shares."""
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    graph = Graph(inputs={"x": (2, 3, 4)}, nodes={}, outputs=["act", "flat"],
                  source=SourceInfo("m", "0" * 64, "3", "keras"))
    graph.nodes["id"] = Node(name="id", op=_ops.Activation(), inputs=["x"], shape=None)
    graph.nodes["act"] = Node(name="act", op=_ops.Activation(activation={"type": "relu"}), inputs=["id"],
                              shape=None)
    graph.nodes["flat"] = Node(name="flat", op=_ops.Flatten(activation={"type": "leaky_relu", "alpha": 0.5}),
                               inputs=["id"], shape=None)
    got = run(graph, [x], keep=True)
    np.testing.assert_array_equal(got["id"], x)
    np.testing.assert_array_equal(got["act"], np.maximum(x, 0))
    np.testing.assert_array_equal(got["flat"], np.where(x > 0, x, 0.5 * x).reshape(1, -1))


def test_second_run_of_an_export_reuses_the_decoded_graph_and_casts(tiny_yolo_export, ty_input, monkeypatch):
    from kerasfold.targets.mps import read
    decodes = []
    real_decode = read.decode
    monkeypatch.setattr(read, "decode", lambda *a, **k: decodes.append(a[1:]) or real_decode(*a, **k))
    export = load_export(tiny_yolo_export)
    first = run(export, [ty_input], dtype="float64")
    graph = export.kept_graph()
    casts = reference._kept_casts(graph, np.dtype("float64"))
    kept = {key: cast for key, (_, cast) in casts.items()}
    assert len(kept) == 2 * 9                                # every conv's kernel and bias, once
    again = run(export, [ty_input], dtype="float64")
    assert decodes == [("pad",)] and export.kept_graph() is graph
    assert reference._kept_casts(graph, np.dtype("float64")) is casts
    assert {key: cast for key, (_, cast) in casts.items()}.keys() == kept.keys()
    assert all(casts[key][1] is cast for key, cast in kept.items())
    np.testing.assert_array_equal(again["conv2d_9"], first["conv2d_9"])
    run(export, [ty_input], padding="offset")
    assert decodes == [("pad",), ("offset",)]


def test_kept_graph_follows_the_manifest(tiny_yolo_export):
    export = load_export(tiny_yolo_export)
    graph = export.kept_graph()
    assert export.kept_graph() is graph and export.graph() is not graph
    next(e for e in export.layers if e["name"] == "conv2d_1")["activation"] = {"type": "relu"}
    changed = export.kept_graph()
    assert changed is not graph and changed.nodes["conv2d_1"].op.activation == {"type": "relu"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_graph_weights_changed_between_runs_are_used(mixed_sources, dtype):
    """A graph (not an export) may change between runs: its casts are not kept across runs."""
    out, _, x = mixed_sources
    graph = load_export(out).graph()
    before = run(graph, [x], dtype=dtype)
    graph.nodes["conv_1"].op.kernel *= 2
    assert not np.array_equal(run(graph, [x], dtype=dtype)["classes"], before["classes"])
