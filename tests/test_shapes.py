"""kerasfold.shapes: output shapes and TensorFlow's SAME padding, written as explicit ``pad``s,
checked on a chain of convolutions and pools against Keras (parity from the written files)."""
import pytest

from kerasfold.pipeline import export
from kerasfold.kinds.base import axis_pad
from kerasfold.verify import verify_export
from models import small


@pytest.mark.parametrize("size,k,stride,dilation,padding,expected", [
    (416, 3, 1, 1, "same", (1, 1, 416)),
    (13, 2, 1, 1, "same", (0, 1, 13)),          # even kernel, stride 1: odd pixel after
    (26, 2, 2, 1, "same", (0, 0, 13)),
    (13, 3, 2, 1, "same", (1, 1, 7)),
    (12, 3, 2, 1, "same", (0, 1, 6)),
    (4, 1, 2, 1, "same", (0, 0, 2)),            # 1x1 stride 2 on an even input: no padding
    (9, 3, 1, 2, "same", (2, 2, 9)),            # dilated: effective kernel 5
    (15, 3, 1, 1, "valid", (0, 0, 13)),
    (None, 3, 1, 1, "same", (1, 1, None)),
    (None, 3, 2, 1, "same", (None, None, None)),
])
def test_axis_pad(size, k, stride, dilation, padding, expected):
    assert axis_pad(size, k, stride, dilation, padding) == expected


@pytest.mark.parametrize("flavour", ["keras2-h5", "keras"])
def test_pads_and_shapes_of_a_window_chain(small_model, tmp_path, flavour):
    _, path = small_model(small.windows, flavour)
    manifest = export(path, tmp_path / "out").manifest
    layers = {e["name"]: e for e in manifest["layers"]}
    assert {n: e["pad"] for n, e in layers.items()} == small.WINDOW_PADS
    sides = [13, 13, 7, 7, 7, 4, 2, 1]
    assert [e["output_shape"] for e in manifest["layers"]] == [[s, s, 4] for s in sides]
    assert layers["avg2s1"]["type"] == "avg_pool2d" and layers["max3s2_odd"]["type"] == "max_pool2d"
    report = verify_export(path, tmp_path / "out")
    assert report.passed and report.max_rel <= 1e-5, report.text()
