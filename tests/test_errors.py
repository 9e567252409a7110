"""Bad input: exit code 2, exactly one line on stderr naming the file (and the layer where there is
one), no traceback, nothing on stdout, and OUT (holding a previous export) left byte for byte."""
import io
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from models import small

from conftest import run_module, snapshot


def _check(model, previous, *needles, layer=None):
    out, before = previous
    proc = run_module("kerasfold.yolo2metal", model, out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    assert line.startswith("kerasfold: error: ") and str(model) in line, line
    if layer is not None:
        assert f"layer '{layer}'" in line, line
    for needle in needles:
        assert needle in line, line
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []   # no staging left
    return line


def _edit_h5(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _edit_keras(src, dst, edit):
    """Copy a .keras archive, editing its model.weights.h5 with h5py."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        edit(f)
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return dst


def _replace(f, path, value_or_array):
    """Replace dataset ``path`` by an array (another shape allowed) or set one of its values."""
    if isinstance(value_or_array, np.ndarray):
        del f[path]
        f[path] = value_or_array
    else:
        arr = f[path][()]
        arr.flat[min(3, arr.size - 1)] = value_or_array
        f[path][...] = arr


def test_missing_file(tmp_path, previous):
    _check(tmp_path / "nope.h5", previous, "does not exist")


def test_directory_instead_of_a_file(tmp_path, previous):
    (tmp_path / "model.h5").mkdir()
    _check(tmp_path / "model.h5", previous, "directory")


@pytest.mark.parametrize("content", [b"", b"hello, not a model\n", b"\x89HDF"])
def test_not_hdf5_or_zip(tmp_path, previous, content):
    bad = tmp_path / "notes.h5"
    bad.write_bytes(content)
    _check(bad, previous, "HDF5", "zip")


@pytest.mark.parametrize("flavour", ["keras2-h5", "keras3-h5", "keras"])
def test_truncated(tiny_yolo, tmp_path, previous, flavour):
    data = tiny_yolo[flavour].read_bytes()
    bad = tmp_path / ("cut" + tiny_yolo[flavour].suffix)
    bad.write_bytes(data[: len(data) // 2])
    _check(bad, previous, "truncated")


def test_zip_that_is_not_a_keras_archive(tmp_path, previous):
    bad = tmp_path / "photos.keras"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("a.txt", "x")
    _check(bad, previous, "config.json")


def test_hdf5_that_is_not_a_model(tmp_path, previous):
    bad = tmp_path / "data.h5"
    with h5py.File(bad, "w") as f:
        f["x"] = np.zeros(3)
    _check(bad, previous, "model_config")


@pytest.mark.parametrize("how", ["keras3", "tf_keras"])
def test_weights_only(small_model, tmp_path, previous, how):
    model, _ = small_model(small.conv_bn_act)
    if how == "keras3":
        path = tmp_path / "only.weights.h5"
        model.save_weights(path)
    else:
        import tf_keras

        from models.flavours import copy_weights
        other = small.conv_bn_act(tf_keras)
        copy_weights(model, other)
        path = tmp_path / "only.h5"
        other.save_weights(str(path))
    _check(path, previous, "weights-only")


@pytest.mark.parametrize("layer,options,input_shape,flavour", [
    ("LayerNormalization", {}, (8, 3), "keras2-h5"),
    ("LayerNormalization", {}, (8, 3), "keras3-h5"),
    ("Conv3D", {"filters": 2, "kernel_size": 3}, (6, 6, 6, 3), "keras3-h5"),
    ("Conv3D", {"filters": 2, "kernel_size": 3}, (6, 6, 6, 3), "keras"),
    ("Embedding", {"input_dim": 5, "output_dim": 2}, (4,), "keras3-h5"),
])
def test_layer_with_unknown_weights(small_model, previous, layer, options, input_shape, flavour):
    _, path = small_model(small.with_layer, flavour, layer=layer, options=options, input_shape=input_shape)
    line = _check(path, previous, layer, "Conv2D", "BatchNormalization", layer="odd")
    assert "supports" in line


def test_kernel_shape_disagrees_h5(tiny_yolo, tmp_path, previous):
    bad = _edit_h5(tiny_yolo["keras2-h5"], tmp_path / "shape.h5",
                   lambda f: _replace(f, "model_weights/conv2d_3/conv2d_3/kernel:0", np.zeros((3, 3, 32, 60), np.float32)))
    _check(bad, previous, "(3, 3, 32, 64)", "(3, 3, 32, 60)", layer="conv2d_3")


def test_kernel_shape_disagrees_keras(small_model, tmp_path, previous):
    _, path = small_model(small.conv_bn_act)
    bad = _edit_keras(path, tmp_path / "shape.keras",
                      lambda f: _replace(f, "layers/conv2d/vars/0", np.zeros((3, 3, 3, 7), np.float32)))
    _check(bad, previous, "(3, 3, 3, 8)", "(3, 3, 3, 7)", layer="conv")


@pytest.mark.parametrize("dataset,value,needle", [
    ("conv2d_2/conv2d_2/kernel:0", np.nan, "NaN/Inf"),
    ("conv2d_2/conv2d_2/kernel:0", np.inf, "NaN/Inf"),
    ("conv2d_9/conv2d_9/bias:0", -np.inf, "NaN/Inf"),
    ("batch_normalization_4/batch_normalization_4/moving_mean:0", np.nan, "NaN/Inf"),
    ("batch_normalization_4/batch_normalization_4/moving_variance:0", np.nan, "NaN/Inf"),
    ("batch_normalization_5/batch_normalization_5/gamma:0", np.inf, "NaN/Inf"),
    ("batch_normalization_4/batch_normalization_4/moving_variance:0", -0.5, "moving_variance >= 0"),
])
def test_bad_values_h5(tiny_yolo, tmp_path, previous, dataset, value, needle):
    bad = _edit_h5(tiny_yolo["keras2-h5"], tmp_path / "values.h5",
                   lambda f: _replace(f, "model_weights/" + dataset, value))
    _check(bad, previous, needle, layer=dataset.split("/")[0])


@pytest.mark.parametrize("var,value,needle", [(2, np.nan, "NaN/Inf"), (3, -1.0, "moving_variance >= 0")])
def test_bad_bn_statistics_keras(small_model, tmp_path, previous, var, value, needle):
    _, path = small_model(small.conv_bn_act)
    bad = _edit_keras(path, tmp_path / "stats.keras",
                      lambda f: _replace(f, f"layers/batch_normalization/vars/{var}", value))
    _check(bad, previous, needle, layer="bn")


def test_bn_over_a_spatial_axis(small_model, previous):
    _, path = small_model(small.conv_bn_act, "keras3-h5", bn_axis=1, size=8, channels=8)
    _check(path, previous, "channel axis", layer="bn")


@pytest.mark.parametrize("where", ["parent_is_a_file", "proc"])
def test_out_cannot_be_written(small_model, tmp_path, where):
    _, model = small_model(small.conv_bn_act)
    if where == "proc":
        if not Path("/proc/self").exists():
            pytest.skip("no /proc")
        out = Path("/proc/kerasfold-cannot-write-here")
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    proc = run_module("kerasfold.yolo2metal", model, out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(out) in lines[0] and "writable" in lines[0]
    assert not out.exists()
    if where == "parent_is_a_file":
        assert (tmp_path / "file").read_text() == "x"
