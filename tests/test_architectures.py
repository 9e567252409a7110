"""Real architectures nobody here wrote pass the parity check at 1e-5 (randomised BN statistics)."""
import pytest

from kerasfold.pipeline import export
from kerasfold.verify import verify_export
from models.applications import build

FAST = ["MobileNetV2", "ResNet50", "ResNet50V2", "DenseNet121", "MobileNet", "Xception"]   # VGG16, NASNetMobile: README


@pytest.mark.parametrize("name", FAST)
def test_architecture_parity(tmp_path, name):
    model = build(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    result = export(path, tmp_path / "out")
    layers = result.manifest["layers"]
    kinds = {e["keras_class"] for e in layers}
    assert "BatchNormalization" not in kinds or all(e["type"] == "depthwise_conv2d" for e in layers
                                                     if e["keras_class"] == "BatchNormalization")
    assert sum(len(e["folded"]) for e in layers) > 0
    report = verify_export(path, tmp_path / "out")
    assert report.passed, report.text()
    assert report.max_rel <= 1e-5
