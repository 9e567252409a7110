"""Issue 3: every fold pattern and layer kind, checked on values (parity from the written files
against Keras, in float64) and, where the layout matters, on the written weights themselves."""
import json

import numpy as np
import pytest

from kerasfold.pipeline import ExportOptions, export
from kerasfold.verify import verify_export
from models.small import build


def _export(arch, tmp_path, seed=0, ext="keras"):
    model = build(arch, seed)
    path = tmp_path / f"m.{ext}"
    model.save(path)
    result = export(path, tmp_path / "out")
    report = verify_export(path, tmp_path / "out")
    assert report.passed, report.text()
    assert report.max_rel < 1e-5
    return model, {e["name"]: e for e in result.manifest["layers"]}, tmp_path / "out"


def _read(out, info):
    return np.fromfile(out / info["file"], "<f4").reshape(info["shape"])


def _bn_s_t(model, name):
    bn = model.get_layer(name)
    w = {v.path.split("/")[-1]: np.asarray(v, np.float64) for v in bn.weights}
    g, b = w.get("gamma", 1.0), w.get("beta", 0.0)
    s = g / np.sqrt(w["moving_variance"] + bn.epsilon)
    return s, b - w["moving_mean"] * s


@pytest.mark.parametrize("multiplier,use_bias", [(1, True), (2, False), (3, True)])
def test_depthwise_bn(tmp_path, multiplier, use_bias):
    def arch(k):
        x = inp = k.Input((9, 9, 4))
        x = k.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=multiplier, use_bias=use_bias, name="dw")(x)
        x = k.layers.BatchNormalization(name="bn")(x)
        return k.Model(inp, k.layers.ReLU(6.0, name="r")(x))
    model, layers, out = _export(arch, tmp_path)
    e = layers["dw"]
    assert e["type"] == "depthwise_conv2d" and e["folded"] == ["bn"] and e["depth_multiplier"] == multiplier
    assert e["activation"] == {"type": "relu", "max_value": 6.0}
    kernel = np.asarray(model.get_layer("dw").weights[0], np.float64)     # (kh, kw, C, M)
    s, _ = _bn_s_t(model, "bn")
    w = _read(out, e["weights"])
    for c, m in [(0, 0), (3, multiplier - 1), (2, multiplier // 2)]:
        o = c * multiplier + m                                             # output channel c·M + m
        np.testing.assert_array_equal(w[o], (kernel[:, :, c, m] * s[o]).astype(np.float32))


def test_separable_bn(tmp_path):
    def arch(k):
        x = inp = k.Input((10, 10, 3))
        x = k.layers.SeparableConv2D(5, 3, strides=2, padding="same", depth_multiplier=2, name="sep")(x)
        x = k.layers.BatchNormalization(name="bn")(x)
        return k.Model(inp, k.layers.LeakyReLU(0.2)(x))
    _, layers, _ = _export(arch, tmp_path)
    assert [layers[n]["type"] for n in layers] == ["depthwise_conv2d", "conv2d"]
    assert layers["sep/depthwise"]["folded"] == [] and "bias" in layers["sep/depthwise"]
    assert layers["sep"]["folded"] == ["bn"] and layers["sep"]["kernel"] == [1, 1]
    assert layers["sep"]["inputs"] == ["sep/depthwise"] and layers["sep"]["activation"]["alpha"] == 0.2
    assert layers["sep/depthwise"]["weights"]["file"] == "sep_depthwise_W.bin"


@pytest.mark.parametrize("flatten", [False, True])
def test_dense_bn(tmp_path, flatten):
    def arch(k):
        x = inp = k.Input((4, 5, 3))
        x = k.layers.Flatten()(x) if flatten else k.layers.GlobalAveragePooling2D()(x)
        x = k.layers.Dense(7, name="fc")(x)
        x = k.layers.BatchNormalization(name="bn")(x)
        return k.Model(inp, k.layers.Dense(3, activation="softmax", name="cls")(x))
    model, layers, out = _export(arch, tmp_path)
    assert layers["fc"]["folded"] == ["bn"] and layers["cls"]["activation"] == {"type": "softmax"}
    kernel = np.asarray(model.get_layer("fc").weights[0], np.float64)     # (in, out); in in H, W, C order
    s, _ = _bn_s_t(model, "bn")
    w = _read(out, layers["fc"]["weights"])
    assert layers["fc"]["weights"]["layout"] == "OI" and w.shape == (7, kernel.shape[0])
    np.testing.assert_array_equal(w, (kernel * s).T.astype(np.float32))


@pytest.mark.parametrize("channels,strides,padding,kernel", [
    (1, 1, "same", 3), (3, 2, "same", 3), (5, 2, "valid", 3), (4, 2, "same", 4), (2, 3, "same", 2)])
def test_conv_transpose_bn(tmp_path, channels, strides, padding, kernel):
    def arch(k):
        x = inp = k.Input((5, 6, 3))
        x = k.layers.Conv2DTranspose(channels, kernel, strides=strides, padding=padding, name="up")(x)
        return k.Model(inp, k.layers.BatchNormalization(name="bn")(x))
    model, layers, out = _export(arch, tmp_path)
    e = layers["up"]
    assert e["type"] == "conv2d_transpose" and e["folded"] == ["bn"]
    k3 = np.asarray(model.get_layer("up").weights[0], np.float64)         # (kh, kw, out, in)
    s, _ = _bn_s_t(model, "bn")
    w = _read(out, e["weights"])                                           # (out, kh, kw, in)
    for o in range(channels):                                              # output channel is axis 2
        np.testing.assert_array_equal(w[o], (k3[:, :, o, :] * s[o]).astype(np.float32))


@pytest.mark.parametrize("groups,dilation,strides", [(2, 1, 1), (3, 1, 2), (1, 2, 1), (2, 2, 1)])
def test_grouped_and_dilated_conv_bn(tmp_path, groups, dilation, strides):
    def arch(k):
        x = inp = k.Input((11, 11, 6))
        x = k.layers.Conv2D(6, 3, padding="same", groups=groups, dilation_rate=dilation, strides=strides,
                            name="conv")(x)
        return k.Model(inp, k.layers.BatchNormalization(name="bn")(x))
    _, layers, _ = _export(arch, tmp_path)
    assert layers["conv"]["groups"] == groups and layers["conv"]["dilation"] == [dilation] * 2
    assert layers["conv"]["weights"]["shape"] == [6, 3, 3, 6 // groups] and layers["conv"]["folded"] == ["bn"]


def test_bn_before_valid_conv_folds_forward(tmp_path):
    def arch(k):
        x = inp = k.Input((8, 8, 4))
        x = k.layers.BatchNormalization(name="pre")(x)
        x = k.layers.Conv2D(5, 3, padding="valid", name="valid")(x)        # pads nothing: exact
        x = k.layers.BatchNormalization(name="post")(x)                    # and one after it
        x = k.layers.ReLU(name="relu")(x)
        x = k.layers.BatchNormalization(name="pre2")(x)
        x = k.layers.Conv2D(3, 3, padding="same", name="same")(x)          # pads: not exact
        return k.Model(inp, x)
    _, layers, _ = _export(arch, tmp_path)
    assert layers["valid"]["folded"] == ["pre", "post"] and layers["valid"]["activation"] == {"type": "relu"}
    assert layers["pre2"]["type"] == "depthwise_conv2d" and layers["pre2"]["folded"] == ["pre2"]
    assert layers["same"]["folded"] == [] and "pre" not in layers


@pytest.mark.parametrize("scale,center", [(False, True), (True, False), (False, False)])
def test_bn_without_gamma_or_beta(tmp_path, scale, center):
    def arch(k):
        x = inp = k.Input((6, 6, 3))
        x = k.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(x)
        x = k.layers.BatchNormalization(scale=scale, center=center, name="bn")(x)
        return k.Model(inp, k.layers.Activation("relu")(x))
    _, layers, _ = _export(arch, tmp_path)
    assert layers["conv"]["folded"] == ["bn"] and layers["conv"]["activation"] == {"type": "relu"}


def test_parameterless_layers(tmp_path):
    def arch(k):
        L = k.layers
        a = inp = k.Input((9, 9, 3))
        a = L.Rescaling(1 / 127.5, offset=-1)(a)
        a = L.Conv2D(4, 3, padding="same", name="c1")(a)
        b = L.ZeroPadding2D(((1, 0), (2, 1)))(a)
        b = L.Cropping2D(((1, 0), (2, 1)))(b)
        b = L.AveragePooling2D(3, strides=2, padding="same")(b)            # odd input, real-pixel count
        b = L.UpSampling2D(2)(b)
        b = L.Cropping2D(((0, 1), (0, 1)))(b)
        c = L.ReLU(max_value=2.0, negative_slope=0.1, threshold=0.5)(a)
        d = L.ELU(alpha=0.7)(a)
        e = L.PReLU(shared_axes=[1, 2], name="prelu")(a)
        x = L.Add()([b, c])
        x = L.Subtract()([x, d])
        x = L.Multiply()([x, e])
        x = L.Concatenate()([x, a])
        x = L.Conv2D(6, 1, name="c2")(x)
        x = L.MaxPooling2D(2, strides=1, padding="same")(x)
        gap = L.GlobalAveragePooling2D()(x)
        gmp = L.GlobalMaxPooling2D(keepdims=True)(x)
        flat = L.Dense(5, name="fc")(L.Flatten()(gmp))
        r = L.Reshape((5, 1))(flat)
        return k.Model(inp, [L.Softmax()(gap), L.Dropout(0.3)(r)])
    _, layers, _ = _export(arch, tmp_path)
    types = {e["type"] for e in layers.values()}
    assert {"rescaling", "zero_padding2d", "cropping2d", "avg_pool2d", "upsampling2d", "add", "subtract",
            "multiply", "concatenate", "prelu", "global_avg_pool2d", "global_max_pool2d", "flatten",
            "reshape", "softmax", "dense", "max_pool2d", "activation"} <= types
    assert not any(e["keras_class"] == "Dropout" for e in layers.values())


def test_shared_layer_and_several_inputs_outputs(tmp_path):
    def arch(k):
        a, b = k.Input((6, 6, 3), name="left"), k.Input((6, 6, 3), name="right")
        shared = k.layers.Conv2D(4, 3, padding="same", name="shared")
        bn = k.layers.BatchNormalization(name="bn")
        x = bn(shared(a))
        y = shared(b)
        return k.Model([a, b], [x, k.layers.Add()([x, y])])
    _, layers, out = _export(arch, tmp_path)
    assert "shared" in layers and "shared@1" in layers
    assert layers["shared"]["folded"] == []                     # shared weights: never folded
    m = json.loads((out / "manifest.json").read_text())
    assert [i["name"] for i in m["inputs"]] == ["left", "right"] and len(m["outputs"]) == 2


def test_unknown_parameterless_layer_is_refused_unless_allowed_opaque(tmp_path):
    """Permute has no rule: exit 2 naming it and listing the supported classes; with --allow-opaque
    an opaque entry and a warning, and the verifier refuses to call such an export proven."""
    from kerasfold.errors import UnsupportedLayer
    from kerasfold.kinds import UnknownLayerWarning

    def arch(k):
        x = inp = k.Input((4, 4, 3))
        x = k.layers.Conv2D(3, 1, name="c")(x)
        return k.Model(inp, k.layers.Permute((2, 1, 3), name="perm")(x))
    path = tmp_path / "m.keras"
    build(arch).save(path)
    with pytest.raises(UnsupportedLayer, match=r"layer 'perm': expected a layer kerasfold can run "
                                               r"\(.*BatchNormalization, .*\), received Permute; --allow-opaque"):
        export(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.warns(UnknownLayerWarning, match="'perm'.*Permute.*opaque"):
        result = export(path, tmp_path / "out", ExportOptions(allow_opaque=True))
    layers = {e["name"]: e for e in result.manifest["layers"]}
    assert layers["perm"]["type"] == "keras_layer" and layers["perm"]["class_name"] == "Permute"
    assert layers["perm"]["config"]["dims"] == [2, 1, 3]
    with pytest.raises(UnsupportedLayer, match="layer 'perm'.*opaque keras_layer entry of a Permute"):
        verify_export(path, tmp_path / "out")
    from kerasfold.verify.check import main as verify_main        # the command line: exit 2, no crash
    assert verify_main([str(path), str(tmp_path / "out")]) == 2


def test_unsupported_weighted_layer_lists_the_supported(tmp_path):
    from kerasfold.errors import UnsupportedLayer

    def arch(k):
        x = inp = k.Input((4, 4, 4, 3))
        return k.Model(inp, k.layers.Conv3D(2, 3, name="c3d")(x))
    model = build(arch)
    model.save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedLayer, match=r"layer 'c3d'.*BatchNormalization, Conv1D, Conv2D, Conv2DTranspose, "
                                               r"Dense, DepthwiseConv2D, Normalization, PReLU, SeparableConv2D.*Conv3D"):
        export(tmp_path / "m.keras", tmp_path / "out")


def test_normalization_at_the_input(tmp_path):
    def arch(k):
        x = inp = k.Input((6, 6, 3))
        norm = k.layers.Normalization(mean=[0.4, 0.5, 0.6], variance=[0.04, 0.09, 0.0], name="norm")
        x = k.layers.Conv2D(4, 3, padding="same", name="conv")(norm(x))
        return k.Model(inp, x)
    model, layers, out = _export(arch, tmp_path)
    e = layers["norm"]
    assert e["type"] == "depthwise_conv2d" and e["keras_class"] == "Normalization" and e["kernel"] == [1, 1]
    scale = _read(out, e["weights"]).reshape(-1)
    np.testing.assert_allclose(scale, [1 / 0.2, 1 / 0.3, 1e7], rtol=1e-6)     # σ = 0 divides by ε = 1e-7
    np.testing.assert_allclose(_read(out, e["bias"]), [-0.4 / 0.2, -0.5 / 0.3, -0.6e7], rtol=1e-6)


def test_other_lambda_is_refused_or_opaque_never_executed(tmp_path):
    """A Lambda that is not space_to_depth_x2: refused by its function's name (never its bytecode);
    with allow_opaque an entry named by its config and a warning; no code run either way."""
    from kerasfold.errors import UnsupportedLayer
    from kerasfold.kinds import UnknownLayerWarning

    def arch(k):
        x = inp = k.Input((4, 4, 3))
        x = k.layers.Conv2D(3, 1, name="c")(x)
        return k.Model(inp, k.layers.Lambda(lambda t: t * 2.0, name="double")(x))
    path = tmp_path / "lambda.keras"
    build(arch).save(path)
    with pytest.raises(UnsupportedLayer, match="layer 'double'.*received Lambda '<lambda>'") as caught:
        export(path, tmp_path / "out")
    assert "4wEA" not in str(caught.value)                                # no base64 bytecode
    with pytest.warns(UnknownLayerWarning, match="'double'.*Lambda '<lambda>'"):
        result = export(path, tmp_path / "out", ExportOptions(allow_opaque=True))
    entry = next(e for e in result.manifest["layers"] if e["name"] == "double")
    assert entry["type"] == "keras_layer" and entry["class_name"] == "Lambda"
    assert entry["config"]["function"] == "<bytecode>"                  # named, not copied
    assert entry["config"]["function_name"] == "<lambda>"


def test_space_to_depth_needs_even_sizes():
    """TensorFlow's space_to_depth rejects odd sizes; so does the shape rule (no silent rounding).
    Keras cannot even build such a model, so the rule is exercised directly."""
    from kerasfold.errors import ExportError
    from kerasfold.kinds import KINDS
    from kerasfold.kinds.base import Fields
    kind = KINDS["SpaceToDepth"]
    params = kind.parse(Fields({"block_size": 2}, "SpaceToDepth"))
    assert kind.shape(params, [(6, 4, 3)]) == (3, 2, 12)
    with pytest.raises(ExportError, match="even height and width.*5x4"):
        kind.shape(params, [(5, 4, 3)])


@pytest.mark.parametrize("flavour", ["keras2-h5", "keras"])
def test_conv1d_bn_exports_as_conv2d_over_one_row(small_model, tmp_path, flavour):
    """Conv1D -> BN -> LeakyReLU folds into one conv2d entry with a 1 x k kernel over the (W, C)
    signal (a 1 x W image), weights OHWI (out, 1, k, in); parity holds against Keras."""
    from models import small
    model, path = small_model(small.conv1d_bn, flavour)
    result = export(path, tmp_path / "out")
    layers = {e["name"]: e for e in result.manifest["layers"]}
    assert list(layers) == ["c1", "c2", "head"]
    assert [layers[n]["folded"] for n in layers] == [["b1"], ["b2"], []]
    assert layers["c1"]["activation"] == {"type": "leaky_relu", "alpha": 0.1}
    assert layers["c2"]["kernel"] == [1, 3] and layers["c2"]["pad"] == [0, 0, 0, 1]
    assert layers["c2"]["weights"]["shape"] == [8, 1, 3, 16] and layers["c2"]["output_shape"] == [48, 8]
    assert result.manifest["inputs"] == [{"name": "signal", "shape": [96, 6]}]
    kernel = model.get_layer("c1").get_weights()[0]                       # (k, in, out)
    s, _ = _bn_s_t(model, "b1")
    w = _read(tmp_path / "out", layers["c1"]["weights"])
    np.testing.assert_array_equal(w[:, 0], (kernel.transpose(2, 0, 1) * s[:, None, None]).astype(np.float32))
    report = verify_export(path, tmp_path / "out")
    assert report.passed and len(report.checks) == 2, report.text()


def test_dropouts_before_strided_same_convs(small_model, tmp_path):
    """AlphaDropout, SpatialDropout2D and GaussianDropout vanish; the convs after them get the pads
    of the shapes the dropouts passed on (13 -> 7 -> 4 -> 2)."""
    from models import small
    _, path = small_model(small.dropouts, "keras2-h5")
    layers = {e["name"]: e for e in export(path, tmp_path / "out").manifest["layers"]}
    assert list(layers) == ["c1", "c2", "head"]
    assert [layers[n]["pad"] for n in layers] == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 0, 1]]
    assert layers["c2"]["folded"] == ["b2"] and layers["head"]["output_shape"] == [2, 2, 4]
    report = verify_export(path, tmp_path / "out")
    assert report.passed, report.text()


def test_bilinear_upsampling(small_model, tmp_path):
    """UpSampling2D bilinear: an upsampling2d entry the reference executor and the rebuild both run
    as Keras does; and it is not nearest (the reference's nearest result is far off)."""
    from models import small
    from kerasfold.targets.mps.read import load_export
    from kerasfold.verify.reference import run
    model, path = small_model(small.bilinear, "keras")
    layers = {e["name"]: e for e in export(path, tmp_path / "out").manifest["layers"]}
    assert layers["up"]["interpolation"] == "bilinear" and layers["up"]["size"] == [2, 3]
    report = verify_export(path, tmp_path / "out", compute="float32")
    assert report.passed and {c.label for c in report.checks} == {"parity", "reference"}, report.text()
    x = np.random.default_rng(1).random((1, 5, 6, 3), dtype=np.float32)
    got = run(load_export(tmp_path / "out"), [x], keep=True)["up"]
    want = np.asarray(model.get_layer("up")(model.get_layer("c1")(x)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    graph = load_export(tmp_path / "out").graph()
    graph.nodes["up"].op.interpolation = "nearest"
    assert np.max(np.abs(run(graph, [x], keep=True)["up"] - want)) > 1e-2


def test_scalar_operands_verify_from_a_legacy_h5(small_model, tmp_path):
    """keras.applications' hard-swish (``x + 3.0``) saved by Keras 3 as a legacy .h5: Keras cannot
    load it back, so the original is rebuilt from the graph, scalar operands included."""
    from models.small import hard_swish
    _, path = small_model(hard_swish, flavour="keras3-h5")
    out = tmp_path / "out"
    result = export(path, out)
    assert any(e.get("constants") for e in result.manifest["layers"])
    report = verify_export(path, out)
    assert report.passed, report.text()
    assert report.original == "rebuilt from the graph" and any("cannot load" in n for n in report.notes)
