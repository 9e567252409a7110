"""Fold guards and fusion on small models; after any outcome the parity check still holds."""
import pytest

from kerasfold.export import export
from kerasfold.verify import verify_export


def _export(model, tmp_path):
    path = tmp_path / "m.keras"
    model.save(path)
    result = export(path, tmp_path / "out")
    return path, {e["name"]: e for e in result.manifest["layers"]}


def _parity(path, tmp_path):
    report = verify_export(path, tmp_path / "out")
    assert report.passed, report.text()
    return report


@pytest.mark.parametrize("use_bias", [True, False])
def test_conv_bn_leaky_becomes_one_entry(tmp_path, use_bias):
    from models.small import conv_bn_act
    path, layers = _export(conv_bn_act(use_bias=use_bias), tmp_path)
    assert list(layers) == ["conv", "head"]
    assert layers["conv"]["folded"] == ["bn"]
    assert layers["conv"]["activation"] == {"type": "leaky_relu", "alpha": 0.1}
    _parity(path, tmp_path)


@pytest.mark.parametrize("guard", ["branch", "conv_is_output", "conv_activation"])
def test_failed_guard_keeps_bn_as_scale_bias(tmp_path, guard):
    from models.small import conv_bn_act
    kwargs = {"branch": {"branch": True}, "conv_is_output": {"conv_is_output": True},
              "conv_activation": {"conv_activation": "relu"}}[guard]
    path, layers = _export(conv_bn_act(**kwargs), tmp_path)
    assert layers["conv"]["folded"] == []
    bn = layers["bn"]
    assert bn["type"] == "depthwise_conv2d" and bn["folded"] == ["bn"] and bn["kernel"] == [1, 1]
    assert bn["weights"]["shape"] == [8, 1, 1] and bn["activation"]["type"] == "leaky_relu"
    if guard == "conv_activation":
        assert layers["conv"]["activation"] == {"type": "relu"}
    _parity(path, tmp_path)


def test_dropout_removed_and_relu6_fused(tmp_path):
    from models.small import conv_bn_act
    path, layers = _export(conv_bn_act(act="relu6", dropout=True), tmp_path)
    assert list(layers) == ["conv", "head"]
    assert layers["conv"]["activation"] == {"type": "relu", "max_value": 6.0}
    assert layers["head"]["inputs"] == ["conv"]
    _parity(path, tmp_path)


def test_bn_over_a_spatial_axis_is_refused(tmp_path):
    from kerasfold.errors import ExportError
    from models.small import conv_bn_act
    model = conv_bn_act(bn_axis=1, size=8, channels=8)
    path = tmp_path / "m.keras"
    model.save(path)
    with pytest.raises(ExportError, match="layer 'bn'.*channel axis"):
        export(path, tmp_path / "out")
