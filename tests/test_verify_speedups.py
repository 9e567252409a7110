"""The verifier's shortcuts compute what the straightforward steps computed: the original loaded in
float64 directly (keras_env.load_h5_in) against load_model + with_dtype, the rebuilt layers created
holding the files' weights (rebuild.filled) against the weights as decoded, the numpy check on one
BLAS thread (blas.limited), the files decoded beside TensorFlow's import; and a broken export
still fails or is refused."""
import hashlib
import json

import numpy as np
import pytest
from conftest import copy_tree, read_manifest

from models import small

FLAVOURS_H5 = ("keras2-h5", "keras3-h5")


def _weights(model):
    """Every weight of every weighted layer, by layer name (input layers' names differ)."""
    return {layer.name: [np.asarray(w.numpy()) for w in layer.weights] for layer in model.layers if layer.weights}


@pytest.mark.parametrize("builder", [small.conv_bn_act, small.conv1d_bn, small.mixed])
@pytest.mark.parametrize("flavour", FLAVOURS_H5)
def test_h5_loaded_in_float64_equals_load_then_clone(small_model, builder, flavour):
    import keras

    from kerasfold.verify.keras_env import floatx, load_h5_in, with_dtype
    _, path = small_model(builder, flavour)
    with floatx("float64"):
        direct = load_h5_in(path, "float64")
        try:
            loaded = keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception:                 # Keras 3 refuses Keras 2's DepthwiseConv2D 'groups'
            assert direct is None         # then so does the direct load: the graph rebuild follows
            return
        assert direct is not None
        cloned = with_dtype(loaded, "float64")
    a, b = _weights(direct), _weights(cloned)
    assert a.keys() == b.keys() and a
    for name in a:
        assert len(a[name]) == len(b[name])
        for x, y in zip(a[name], b[name]):
            assert x.dtype == y.dtype == np.float64
            np.testing.assert_array_equal(x, y)
    x = np.random.default_rng(1).random((2, *direct.inputs[0].shape[1:]))
    np.testing.assert_array_equal(np.asarray(direct(x, training=False)), np.asarray(cloned(x, training=False)))


@pytest.mark.parametrize("flavour", FLAVOURS_H5)
def test_h5_sequential_loaded_in_float64_holds_the_saved_weights(small_model, flavour):
    """(load_model + with_dtype cannot clone a loaded Sequential: the direct load can.)"""
    from kerasfold.verify.keras_env import floatx, load_h5_in
    saved, path = small_model(small.sequential, flavour)
    with floatx("float64"):
        direct = load_h5_in(path, "float64")
    assert direct is not None
    want = _weights(saved)
    got = {name: ws for name, ws in _weights(direct).items()}
    assert sorted(len(w) for w in got.values()) == sorted(len(w) for w in want.values())
    for (_, a), (_, b) in zip(sorted(got.items()), sorted(want.items())):
        for x, y in zip(a, b):
            assert x.dtype == np.float64
            np.testing.assert_array_equal(x, y.astype(np.float64))


def test_h5_fast_load_declines_what_it_does_not_handle(small_model, tmp_path):
    from kerasfold.verify.keras_env import load_h5_in
    _, keras_file = small_model(small.conv_bn_act, "keras")
    assert load_h5_in(keras_file, "float64") is None                 # .keras: the public loader
    _, h5 = small_model(small.conv_bn_act, "keras2-h5")
    broken = tmp_path / "broken.h5"
    broken.write_bytes(h5.read_bytes()[:4096])
    assert load_h5_in(broken, "float64") is None                     # the caller's loader says why


def test_retyped_config_reaches_nested_layers():
    from kerasfold.verify.keras_env import retyped_config
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "Conv2D", "config": {"dtype": "float32", "kernel_initializer": {"class_name": "GlorotUniform"},
                                           "bias_initializer": None, "filters": 3}},
        {"class_name": "Sequential", "config": {"dtype": {"class_name": "DTypePolicy", "config": {"name": "float32"}},
                                                "layers": [{"class_name": "Dense", "config": {
                                                    "dtype": "float32", "kernel_initializer": "glorot_uniform"}}]}}]}}
    out = retyped_config(config, "float64")
    conv, seq = out["config"]["layers"]
    assert conv["config"] == {"dtype": "float64", "kernel_initializer": "zeros", "bias_initializer": None, "filters": 3}
    assert seq["config"]["dtype"] == "float64"
    assert seq["config"]["layers"][0]["config"] == {"dtype": "float64", "kernel_initializer": "zeros"}
    assert config["config"]["layers"][0]["config"]["dtype"] == "float32"          # the input is not changed


def test_verify_loads_the_original_either_way(tiny_yolo, tiny_yolo_export, monkeypatch):
    """Without the direct float64 load the original is loaded, then cloned: the same figures."""
    from kerasfold.verify import blas, keras_env, verify_export
    threads = blas.threads()
    fast = verify_export(tiny_yolo["keras2-h5"], tiny_yolo_export)
    monkeypatch.setattr(keras_env, "load_h5_in", lambda *args: None)
    slow = verify_export(tiny_yolo["keras2-h5"], tiny_yolo_export)
    assert fast.passed and slow.passed and fast.original == slow.original
    assert fast.original.startswith("loaded by Keras")
    assert [(c.label, c.max_abs, c.max_rel) for c in fast.checks] == [(c.label, c.max_abs, c.max_rel) for c in slow.checks]
    assert blas.threads() == threads                 # the numpy check's one-thread limit is lifted


def test_rebuilt_layers_hold_the_files_weights(small_model, small_export):
    from kerasfold.targets.mps.read import load_export
    from kerasfold.verify.keras_env import floatx
    from kerasfold.verify.rebuild import from_export
    export = load_export(small_export)
    graph = export.graph()
    with floatx("float64"):
        model = from_export(export, graph=graph)
    convs = [n.op for n in graph if type(n.op).__name__ == "Conv2D"]
    layers = [layer for layer in model.layers if layer.weights]
    assert len(convs) == len(layers) == 2
    for op, layer in zip(convs, layers):
        kernel, bias = (np.asarray(w.numpy()) for w in layer.weights)
        assert kernel.dtype == np.float64
        np.testing.assert_array_equal(kernel, op.kernel.astype(np.float64))
        np.testing.assert_array_equal(bias, op.bias.astype(np.float64))


def test_filled_initialiser_refuses_another_shape():
    from kerasfold.verify.rebuild import filled
    init = filled(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert init((2, 3), dtype="float64").dtype == np.float64
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        init((3, 2), dtype="float64")


def test_rebuild_refuses_weights_that_do_not_fit_the_input(small_model, small_export, tmp_path):
    """A kernel whose input channels disagree with the tensor it reads fails the rebuild (as
    set_weights did), not silently."""
    import dataclasses

    from kerasfold.targets.mps.read import load_export
    from kerasfold.verify.keras_env import floatx
    from kerasfold.verify.rebuild import from_ops
    graph = load_export(small_export).graph()
    node = next(n for n in graph if type(n.op).__name__ == "Conv2D")
    node.op = dataclasses.replace(node.op, kernel=np.concatenate([node.op.kernel] * 2, axis=2))
    with floatx("float64"), pytest.raises(ValueError, match="shape"):
        from_ops(graph)


def test_blas_limit_is_restored():
    from kerasfold.verify import blas
    before = blas.threads()
    if before is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS whose thread count can be set")
    with blas.limited(1):
        assert blas.threads() == 1
        with blas.limited(1):
            assert blas.threads() == 1
        assert blas.threads() == 1                   # the outer block still holds the limit
    assert blas.threads() == before


def test_broken_files_are_refused_with_the_decoding_in_a_thread(small_model, small_export, tmp_path):
    """The files are decoded beside TensorFlow's import: a truncated weight file still ends the
    verification with the export's error, with or without Keras."""
    from kerasfold.errors import ExportError
    from kerasfold.verify import verify_export
    _, model = small_model(small.conv_bn_act)
    out = copy_tree(small_export, tmp_path / "broken")
    entry = next(e for e in read_manifest(out)["layers"] if "weights" in e)
    path = out / entry["weights"]["file"]
    path.write_bytes(path.read_bytes()[:-8])
    for use_keras in (True, False):
        with pytest.raises(ExportError):
            verify_export(model, out, use_keras=use_keras)


def test_tampered_weights_fail_both_checks(small_model, small_export, tmp_path):
    """Weights scaled and the hash updated to match: both checks fail, each naming the layer."""
    from kerasfold.verify import verify_export
    _, model = small_model(small.conv_bn_act, "keras2-h5")
    out = copy_tree(small_export, tmp_path / "tampered")
    m = read_manifest(out)
    entry = next(e for e in m["layers"] if "weights" in e)
    path = out / entry["weights"]["file"]
    w = np.fromfile(path, "<f4")
    w[::7] *= np.float32(1.01)
    w.tofile(path)
    entry["weights"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    report = verify_export(model, out)
    assert not report.passed and not report.hash_mismatches
    assert {c.label for c in report.checks} == {"parity", "reference"}
    for c in report.checks:
        assert c.max_rel > 1e-4 and c.divergence and f"layer '{entry['name']}'" in c.divergence
