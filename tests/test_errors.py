"""Bad input: exit 2, one line on stderr naming the file (and layer), no traceback, OUT untouched."""
import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import ROOT


def _run(model, out):
    return subprocess.run([sys.executable, "-m", "kerasfold.yolo2metal", str(model), str(out)],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.fixture
def previous(tiny_yolo_export, tmp_path):
    """An OUT holding a previous export, and a snapshot of its bytes."""
    out = tmp_path / "out"
    shutil.copytree(tiny_yolo_export, out)
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def _check(proc, previous, *needles):
    out, before = previous
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]   # no staging left
    return lines[0]


def _h5_copy(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_missing_file(tmp_path, previous):
    _check(_run(tmp_path / "nope.h5", previous[0]), previous, "nope.h5", "does not exist")


def test_not_hdf5_or_zip(tmp_path, previous):
    bad = tmp_path / "notes.h5"
    bad.write_text("hello")
    _check(_run(bad, previous[0]), previous, "notes.h5", "HDF5", "zip")


@pytest.mark.parametrize("flavour", ["keras2-h5", "keras"])
def test_truncated(tiny_yolo, tmp_path, previous, flavour):
    data = tiny_yolo[flavour].read_bytes()
    bad = tmp_path / ("cut" + tiny_yolo[flavour].suffix)
    bad.write_bytes(data[: len(data) // 2])
    _check(_run(bad, previous[0]), previous, bad.name, "truncated")


def test_weights_only(tmp_path, previous):
    from models.small import sequential
    path = tmp_path / "only.weights.h5"
    sequential().save_weights(path)
    _check(_run(path, previous[0]), previous, "only.weights.h5", "weights-only")


def test_unknown_weighted_layer(tmp_path, previous):
    import keras
    from models.small import with_layer
    path = tmp_path / "conv3d.keras"
    inp = keras.Input((6, 6, 3, 2))
    keras.Model(inp, keras.layers.Conv3D(2, 3, name="vol")(inp)).save(path)
    line = _check(_run(path, previous[0]), previous, "conv3d.keras", "layer 'vol'", "Conv3D", "Conv2D")
    assert "supports" in line


def test_kernel_shape_disagrees(tiny_yolo, tmp_path, previous):
    def edit(f):
        g = f["model_weights/conv2d_3/conv2d_3"]
        del g["kernel:0"]
        g["kernel:0"] = np.zeros((3, 3, 32, 60), np.float32)
    bad = _h5_copy(tiny_yolo["keras2-h5"], tmp_path / "shape.h5", edit)
    _check(_run(bad, previous[0]), previous, "shape.h5", "layer 'conv2d_3'", "(3, 3, 32, 64)", "(3, 3, 32, 60)")


@pytest.mark.parametrize("dataset,value,needle", [
    ("conv2d_2/conv2d_2/kernel:0", np.nan, "NaN/Inf"),
    ("conv2d_2/conv2d_2/kernel:0", np.inf, "NaN/Inf"),
    ("batch_normalization_4/batch_normalization_4/moving_mean:0", np.nan, "NaN/Inf"),
    ("batch_normalization_4/batch_normalization_4/moving_variance:0", -0.5, "moving_variance >= 0"),
])
def test_bad_values(tiny_yolo, tmp_path, previous, dataset, value, needle):
    def edit(f):
        d = f["model_weights/" + dataset]
        arr = d[()]
        arr.flat[3] = value
        d[...] = arr
    bad = _h5_copy(tiny_yolo["keras2-h5"], tmp_path / "values.h5", edit)
    layer = dataset.split("/")[0]
    _check(_run(bad, previous[0]), previous, "values.h5", f"layer '{layer}'", needle)


def test_out_not_writable(tiny_yolo, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _run(tiny_yolo["keras2-h5"], blocker / "out")            # parent is a file
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "writable" in proc.stderr and "Traceback" not in proc.stderr


def test_out_is_a_file(tiny_yolo, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    proc = _run(tiny_yolo["keras2-h5"], out)
    assert proc.returncode == 2 and "directory" in proc.stderr
    assert out.read_text() == "keep me"


def test_out_with_other_files_is_refused(tiny_yolo, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = _run(tiny_yolo["keras2-h5"], out)
    assert proc.returncode == 2 and "refusing to replace" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_failed_export_mid_write_leaves_out(tiny_yolo, previous, monkeypatch):
    """An error while files are being written: OUT keeps the previous export, no staging left."""
    import kerasfold.writer as writer
    from kerasfold.errors import ExportError
    from kerasfold.export import export
    out, before = previous
    calls = []

    def failing(path, array, dtype):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(path, array, dtype)
    real = writer._write_tensor
    monkeypatch.setattr(writer, "_write_tensor", failing)
    with pytest.raises(ExportError, match="No space left"):
        export(tiny_yolo["keras2-h5"], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
