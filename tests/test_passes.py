"""kerasfold.passes on small models: what folds and fuses, what each failed guard leaves, and the
values written; after every outcome the parity check (the model rebuilt from the files against
Keras) still holds."""
import numpy as np
import pytest

from kerasfold.errors import ExportError
from kerasfold.pipeline import export
from kerasfold.verify import verify_export
from models import small

FLAVOURS = ("keras2-h5", "keras3-h5", "keras")


def _export(small_model, tmp_path, builder=small.conv_bn_act, flavour="keras", **options):
    model, path = small_model(builder, flavour, **options)
    out = tmp_path / "out"
    result = export(path, out)
    return model, path, out, {e["name"]: e for e in result.manifest["layers"]}


def _parity(path, out):
    report = verify_export(path, out)
    assert report.passed, report.text()
    assert 0 < report.max_rel <= 1e-5 and not report.hash_mismatches
    return report


def _tensor(out, info):
    return np.fromfile(out / info["file"], "<f4").reshape(info["shape"])


def _bn(model, name):
    """(s, t) of a Keras BN layer in float64, γ/β absent = identity, ε from the layer."""
    layer = model.get_layer(name)
    w = {v.path.split("/")[-1]: np.asarray(v, np.float64) for v in layer.weights}
    c = w["moving_mean"].shape[0]
    s = w.get("gamma", np.ones(c)) / np.sqrt(w["moving_variance"] + layer.epsilon)
    return s, w.get("beta", np.zeros(c)) - w["moving_mean"] * s


def _conv(model, name):
    weights = model.get_layer(name).get_weights()
    kernel = weights[0].astype(np.float64)
    return kernel, (weights[1].astype(np.float64) if len(weights) > 1 else np.zeros(kernel.shape[-1]))


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_conv_bn_leaky_becomes_one_entry(small_model, tmp_path, flavour, use_bias):
    model, path, out, layers = _export(small_model, tmp_path, flavour=flavour, use_bias=use_bias)
    assert list(layers) == ["conv", "head"]
    conv = layers["conv"]
    assert conv["type"] == "conv2d" and conv["folded"] == ["bn"] and conv["inputs"] == ["image"]
    assert conv["activation"] == {"type": "leaky_relu", "alpha": 0.1}
    assert layers["head"]["inputs"] == ["conv"] and layers["head"]["folded"] == []
    kernel, bias = _conv(model, "conv")
    s, t = _bn(model, "bn")
    np.testing.assert_array_equal(_tensor(out, conv["weights"]),
                                  (kernel * s).astype(np.float32).transpose(3, 0, 1, 2))
    np.testing.assert_array_equal(_tensor(out, conv["bias"]), (bias * s + t).astype(np.float32))
    _parity(path, out)


@pytest.mark.parametrize("guard", ["branch", "conv_is_output", "conv_activation", "shared_weights"])
def test_failed_guard_keeps_bn_as_scale_bias(small_model, tmp_path, guard):
    options = {"branch": {"branch": True}, "conv_is_output": {"conv_is_output": True},
               "conv_activation": {"conv_activation": "relu"}, "shared_weights": {}}[guard]
    builder = small.shared_conv if guard == "shared_weights" else small.conv_bn_act
    model, path, out, layers = _export(small_model, tmp_path, builder, **options)
    conv, bn = layers["conv"], layers["bn"]
    assert conv["folded"] == []
    # the conv is written as it is in the file
    kernel, bias = _conv(model, "conv")
    np.testing.assert_array_equal(_tensor(out, conv["weights"]), kernel.astype(np.float32).transpose(3, 0, 1, 2))
    np.testing.assert_array_equal(_tensor(out, conv["bias"]), bias.astype(np.float32))
    # the BN stays, as FORMAT.md says: a 1x1 depthwise_conv2d with weights [C][1][1] = s, bias t
    channels = kernel.shape[-1]
    assert bn["type"] == "depthwise_conv2d" and bn["folded"] == ["bn"] and bn["inputs"] == ["conv"]
    assert bn["kernel"] == [1, 1] and bn["strides"] == [1, 1] and bn["pad"] == [0, 0, 0, 0]
    assert bn["depth_multiplier"] == 1
    assert bn["weights"]["shape"] == [channels, 1, 1] and bn["weights"]["layout"] == "OHW"
    s, t = _bn(model, "bn")
    np.testing.assert_array_equal(_tensor(out, bn["weights"]), s.astype(np.float32).reshape(-1, 1, 1))
    np.testing.assert_array_equal(_tensor(out, bn["bias"]), t.astype(np.float32))
    if builder is small.conv_bn_act:
        assert bn["activation"] == {"type": "leaky_relu", "alpha": 0.1}       # fused into the BN entry
        assert layers["head"]["inputs"] == ["bn"]
    if guard == "branch":
        assert layers["side"]["inputs"] == ["conv"] and conv["activation"] == {"type": "linear"}
    if guard == "conv_is_output":
        from conftest import read_manifest
        assert read_manifest(out)["outputs"] == ["head", "conv"]
    if guard == "conv_activation":
        assert conv["activation"] == {"type": "relu"}
    if guard == "shared_weights":
        assert layers["conv@1"]["folded"] == [] and layers["conv@1"]["inputs"] == ["r"]
        np.testing.assert_array_equal(_tensor(out, layers["conv@1"]["weights"]), _tensor(out, conv["weights"]))
    _parity(path, out)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bn_over_a_spatial_axis_is_refused(small_model, tmp_path, flavour):
    """A BN normalising H (axis 1) can be neither folded nor written as a per-channel scale: the
    export refuses it with the layer's name, and writes nothing."""
    _, path = small_model(small.conv_bn_act, flavour, bn_axis=1, size=8, channels=8)
    with pytest.raises(ExportError, match="channel axis") as info:
        export(path, tmp_path / "out")
    assert info.value.layer == "bn" and str(path) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_bn_axis_given_as_positive_channel_index_folds(small_model, tmp_path):
    model, path, out, layers = _export(small_model, tmp_path, bn_axis=3)
    assert list(layers) == ["conv", "head"] and layers["conv"]["folded"] == ["bn"]
    _parity(path, out)


@pytest.mark.parametrize("eps", [1e-5, 1e-1])
def test_epsilon_is_the_layers_own(small_model, tmp_path, eps):
    model, path, out, layers = _export(small_model, tmp_path, flavour="keras2-h5", epsilon=eps)
    kernel, _ = _conv(model, "conv")
    bn = {v.path.split("/")[-1]: np.asarray(v, np.float64) for v in model.get_layer("bn").weights}
    got = _tensor(out, layers["conv"]["weights"])
    for e, should_match in ((eps, True), (1e-3, False)):
        s = bn["gamma"] / np.sqrt(bn["moving_variance"] + e)
        want = (kernel * s).astype(np.float32).transpose(3, 0, 1, 2)
        assert np.array_equal(got, want) == should_match, e
    _parity(path, out)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bn_without_scale_and_center(small_model, tmp_path, flavour):
    model, path, out, layers = _export(small_model, tmp_path, flavour=flavour, scale=False, center=False)
    assert layers["conv"]["folded"] == ["bn"]
    kernel, bias = _conv(model, "conv")
    s, t = _bn(model, "bn")                                   # γ = 1, β = 0
    np.testing.assert_array_equal(_tensor(out, layers["conv"]["bias"]), (bias * s + t).astype(np.float32))
    np.testing.assert_array_equal(_tensor(out, layers["conv"]["weights"]),
                                  (kernel * s).astype(np.float32).transpose(3, 0, 1, 2))
    _parity(path, out)


def test_dropout_removed_and_relu6_fused(small_model, tmp_path):
    _, path, out, layers = _export(small_model, tmp_path, act="relu6", dropout=True)
    assert list(layers) == ["conv", "head"]
    assert layers["conv"]["folded"] == ["bn"]
    assert layers["conv"]["activation"] == {"type": "relu", "max_value": 6.0}
    assert layers["head"]["inputs"] == ["conv"]
    _parity(path, out)


@pytest.mark.parametrize("act,expected", [("relu_activation", {"type": "relu"}), ("none", {"type": "linear"})])
def test_other_activations(small_model, tmp_path, act, expected):
    _, path, out, layers = _export(small_model, tmp_path, act=act)
    assert list(layers) == ["conv", "head"]
    assert layers["conv"]["folded"] == ["bn"] and layers["conv"]["activation"] == expected
    _parity(path, out)
