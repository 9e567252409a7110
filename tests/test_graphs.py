"""Graph forms across file flavours: nested models, YOLOv2's Lambda passthrough."""
import json

import pytest

from kerasfold.pipeline import export
from kerasfold.verify import verify_export
from models import flavours, yolov2


def _detector(k):
    """A backbone model used as a layer inside a detector, called twice (shared weights)."""
    L = k.layers
    bi = k.Input((8, 8, 3), name="bin")
    y = L.Conv2D(4, 3, padding="same", use_bias=False, name="bconv")(bi)
    y = L.BatchNormalization(name="bbn")(y)
    y = L.LeakyReLU(0.1, name="bact")(y)
    backbone = k.Model(bi, y, name="backbone")
    a, b = k.Input((8, 8, 3), name="img"), k.Input((8, 8, 3), name="img2")
    x = L.Concatenate(name="cat")([backbone(a), backbone(b)])
    return k.Model([a, b], L.Conv2D(5, 1, name="head")(x), name="det")


@pytest.fixture(scope="module")
def detector_files(tmp_path_factory):
    return flavours.build_and_save(_detector, tmp_path_factory.mktemp("det"), "det")


@pytest.mark.parametrize("flavour", flavours.FLAVOURS)
def test_nested_model_called_twice(detector_files, tmp_path, flavour):
    result = export(detector_files[flavour], tmp_path / "out")
    layers = {e["name"]: e for e in result.manifest["layers"]}
    assert set(layers) == {"backbone/bconv", "backbone@1/bconv", "backbone/bbn", "backbone@1/bbn", "cat", "head"}
    assert layers["backbone/bconv"]["folded"] == []           # weights shared by two calls: no fold
    assert layers["backbone@1/bbn"]["type"] == "depthwise_conv2d"
    assert layers["backbone@1/bbn"]["activation"] == {"type": "leaky_relu", "alpha": 0.1}
    assert layers["cat"]["inputs"] == ["backbone/bbn", "backbone@1/bbn"]
    report = verify_export(detector_files[flavour], tmp_path / "out")
    assert report.passed, report.text()


def _single_backbone(k):
    L = k.layers
    bi = k.Input((8, 8, 3), name="bin")
    y = L.BatchNormalization(name="bbn")(L.Conv2D(4, 3, padding="same", name="bconv")(bi))
    backbone = k.Model(bi, L.ReLU(name="brelu")(y), name="backbone")
    inp = k.Input((8, 8, 3), name="img")
    return k.Model(inp, L.Conv2D(5, 1, name="head")(backbone(inp)))


@pytest.mark.parametrize("flavour", flavours.FLAVOURS)
def test_nested_backbone_folds(tmp_path, flavour):
    path = flavours.build_and_save(_single_backbone, tmp_path, "m", (flavour,))[flavour]
    result = export(path, tmp_path / "out")
    layers = {e["name"]: e for e in result.manifest["layers"]}
    assert layers["backbone/bconv"]["folded"] == ["backbone/bbn"]
    assert layers["backbone/bconv"]["activation"] == {"type": "relu"}
    assert verify_export(path, tmp_path / "out").passed


def test_yolov2_passthrough(tmp_path):
    path = yolov2.build_and_save(tmp_path, input_size=128)["keras2-h5"]
    config = json.dumps(json.loads(__import__("h5py").File(path).attrs["model_config"]))
    assert "space_to_depth" in config and '"Lambda"' in config
    result = export(path, tmp_path / "out")
    layers = result.manifest["layers"]
    assert sum(e["type"] == "conv2d" for e in layers) == 23
    assert sum(len(e["folded"]) for e in layers) == 22
    s2d = next(e for e in layers if e["type"] == "space_to_depth")
    assert s2d["block_size"] == 2 and s2d["output_shape"] == [4, 4, 256]
    cat = next(e for e in layers if e["type"] == "concatenate")
    assert cat["inputs"] == [s2d["name"], "conv2d_20"] and cat["axis"] == 2
    report = verify_export(path, tmp_path / "out")
    assert report.passed and report.original == "rebuilt from the graph", report.text()
    assert "cannot load" in report.notes[0]
