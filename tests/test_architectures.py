"""Real architectures nobody here wrote pass the parity check at 1e-5 (randomised BN statistics),
and so do their Core ML packages, built from the verified export's files."""
import numpy as np
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
    core_ml_agrees(model, tmp_path)


def core_ml_agrees(model, tmp_path):
    """The .mlpackage built from the export directory holds exactly its weights, runs (numpy
    evaluator) like the export, and like Keras' own prediction."""
    pytest.importorskip("coremltools")
    from kerasfold.targets.coreml.build import build_package
    from kerasfold.verify.coreml import verify_package
    from kerasfold.verify.mlprogram import load_program, run
    package = tmp_path / "model.mlpackage"
    build_package(tmp_path / "out", package)
    report = verify_package(tmp_path / "out", package)
    assert report.passed and any("exactly the export files' values" in n for n in report.notes), report.text()
    x = np.random.default_rng(3).random((1, *model.input_shape[1:]), dtype=np.float32)
    program = load_program(package)
    (got,) = run(program, {program.inputs[0].name: x}, dtype="float64").values()
    want = model.predict(x, verbose=0)
    assert float(np.max(np.abs(got - want))) <= 1e-4 * float(np.max(np.abs(want)))
