"""pipeline.read: the last model read is reused only for the same path and the same bytes (sha256),
never when the file changed, whatever its size and modification time say."""
import os
import shutil

import numpy as np
import pytest

from kerasfold.errors import ExportError
from kerasfold.pipeline import export, prepare, read
from kerasfold.verify import verify_export
from models.small import conv_bn_act


@pytest.fixture
def two_models(small_model, tmp_path):
    """A model file in tmp_path, and a file of the same network and size with other weights."""
    _, first = small_model(conv_bn_act, seed=0, flavour="keras2-h5")
    _, second = small_model(conv_bn_act, seed=1, flavour="keras2-h5")
    assert first.stat().st_size == second.stat().st_size and first.read_bytes() != second.read_bytes()
    path = tmp_path / first.name
    shutil.copyfile(first, path)
    return path, second


def kernels(model):
    return [w for layer in model for k, w in sorted(layer.weights.items()) if k == "kernel"]


def replace_keeping_stat(path, source):
    """Overwrite ``path`` with ``source``'s bytes (same size), its modification time restored."""
    stat = path.stat()
    shutil.copyfile(source, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_same_bytes_are_read_once(two_models):
    path, _ = two_models
    first = read(path, remember=True)
    assert read(path, reuse=True) is first
    assert read(path) is not first                     # without reuse: always a new read


def test_a_plain_read_is_not_remembered(two_models):
    """A plain export keeps no raw weights alive after lowering (YOLOv2: 203 MB)."""
    import gc
    import weakref
    path, _ = two_models
    first = weakref.ref(read(path))
    gc.collect()
    assert first() is None
    assert read(path, reuse=True) is not None


def test_changed_file_is_read_again(two_models):
    path, other = two_models
    first = read(path, remember=True)
    replace_keeping_stat(path, other)
    again = read(path, reuse=True)
    assert again is not first
    assert again.source.sha256 != first.source.sha256
    assert not all(np.array_equal(a, b) for a, b in zip(kernels(again), kernels(first)))


def test_another_path_is_not_reused(two_models, tmp_path):
    path, _ = two_models
    twin = tmp_path / "twin.h5"
    shutil.copyfile(path, twin)
    first = read(path, remember=True)
    assert read(twin, reuse=True) is not first


def test_a_missing_file_is_an_export_error(two_models):
    path, _ = two_models
    read(path, remember=True)
    path.unlink()
    with pytest.raises(ExportError, match="does not exist"):
        read(path, reuse=True)


def test_shared_weights_are_read_only_and_unchanged_by_folding(two_models):
    path, _ = two_models
    raw = read(path, remember=True)
    before = [w.copy() for w in kernels(raw)]
    prepare(path, reuse=True)                          # folds BN: new arrays, the read untouched
    assert all(not w.flags.writeable for w in kernels(raw))
    assert all(np.array_equal(a, b) for a, b in zip(kernels(raw), before))
    with pytest.raises(ValueError):
        kernels(raw)[0][...] = 0


def test_verify_sees_a_model_changed_after_its_export(two_models, tmp_path):
    """Export, change the model file (same size and time), verify: the reference check compares
    with the file as it is now, so it fails; a cached read of the old bytes would pass it."""
    path, other = two_models
    export(path, tmp_path / "out")
    assert verify_export(path, tmp_path / "out", use_keras=False).passed
    replace_keeping_stat(path, other)
    report = verify_export(path, tmp_path / "out", use_keras=False)
    assert not report.passed and report.checks[0].label == "reference"
