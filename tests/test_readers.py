"""kerasfold.readers: the three file flavours read into one graph, with h5py and json only."""
import hashlib
import io
import json
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from kerasfold.readers import read_model
from kerasfold.kinds.base import pair
from models import small

from conftest import ROOT, read_manifest, snapshot

FLAVOURS = ("keras2-h5", "keras3-h5", "keras")
YOLO_KINDS = (["InputLayer"] + ["Conv2D", "BatchNormalization", "LeakyReLU", "MaxPooling2D"] * 6
              + ["Conv2D", "BatchNormalization", "LeakyReLU"] * 2 + ["Conv2D"])


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def test_three_flavours_read_into_one_graph(tiny_yolo):
    graphs = {f: read_model(p) for f, p in tiny_yolo.items()}
    ref = graphs["keras2-h5"]
    assert [n.kind for n in ref] == YOLO_KINDS
    assert list(ref.nodes)[:6] == ["input_1", "conv2d_1", "batch_normalization_1", "leaky_re_lu_1",
                                   "max_pooling2d_1", "conv2d_2"]
    assert ref["conv2d_2"].inputs == ["max_pooling2d_1"] and ref["conv2d_9"].inputs == ["leaky_re_lu_8"]
    for flavour, g in graphs.items():
        assert g.source.flavour == flavour
        assert g.source.file == tiny_yolo[flavour].name
        assert g.source.sha256 == hashlib.sha256(tiny_yolo[flavour].read_bytes()).hexdigest()
        assert list(g.nodes) == list(ref.nodes)
        assert [n.kind for n in g] == [n.kind for n in ref]
        assert [n.inputs for n in g] == [n.inputs for n in ref]
        assert g.inputs == ["input_1"] and g.outputs == ["conv2d_9"]
        assert g["input_1"].output_shape == (416, 416, 3)
        for n in g:
            assert sorted(n.weights) == sorted(ref[n.name].weights), (flavour, n.name)
            for k, w in n.weights.items():
                assert w.dtype == np.float32
                np.testing.assert_array_equal(w, ref[n.name].weights[k])
            if n.kind == "Conv2D":
                for key in ("kernel_size", "strides"):
                    assert pair(n.config[key]) == pair(ref[n.name].config[key])
                assert n.config["padding"] == "same" and n.config["filters"] == ref[n.name].config["filters"]
            if n.kind == "BatchNormalization":
                assert n.config["epsilon"] == pytest.approx(1e-3)
    assert graphs["keras2-h5"].source.keras_version.startswith("2.")
    assert graphs["keras3-h5"].source.keras_version.startswith("3.")
    assert graphs["keras"].source.keras_version.startswith("3.")
    assert sorted(ref["batch_normalization_1"].weights) == ["beta", "gamma", "moving_mean", "moving_variance"]
    assert sorted(ref["conv2d_1"].weights) == ["kernel"] and sorted(ref["conv2d_9"].weights) == ["bias", "kernel"]
    # non-identity statistics really are in the file
    bn = ref["batch_normalization_3"].weights
    assert np.ptp(bn["gamma"]) > 0.1 and np.ptp(bn["moving_variance"]) > 0 and np.any(bn["moving_mean"] != 0)


def test_weights_match_the_file_datasets(tiny_yolo):
    """Each weight is the dataset its name says, not a neighbour's (read back with h5py here)."""
    g = read_model(tiny_yolo["keras2-h5"])
    with h5py.File(tiny_yolo["keras2-h5"]) as f:
        for layer in ("conv2d_4", "batch_normalization_7", "conv2d_9"):
            group = f["model_weights"][layer]
            for stored in map(_text, group.attrs["weight_names"]):
                var = stored.split("/")[-1].split(":")[0]
                np.testing.assert_array_equal(g[layer].weights[var], group[stored][()])


def test_keras2_specifics(tiny_yolo):
    path = tiny_yolo["keras2-h5"]
    with h5py.File(path) as f:
        config = json.loads(_text(f.attrs["model_config"]))
        assert _text(f.attrs["keras_version"]).startswith("2.")
        names = [_text(n) for n in f["model_weights/conv2d_1"].attrs["weight_names"]]
    assert names == ["conv2d_1/kernel:0"]
    layers = {l["name"]: l for l in config["config"]["layers"]}
    leaky = layers["leaky_re_lu_1"]["config"]
    assert "alpha" in leaky and "negative_slope" not in leaky
    assert layers["input_1"]["config"]["batch_input_shape"] == [None, 416, 416, 3]
    assert "batch_shape" not in layers["input_1"]["config"]
    assert isinstance(layers["conv2d_1"]["inbound_nodes"][0], list)
    g = read_model(path)
    assert g["input_1"].output_shape == (416, 416, 3)                 # from batch_input_shape
    assert np.float32(g["leaky_re_lu_1"].config["alpha"]) == np.float32(0.1)
    manifest_alpha = read_manifest_alpha(path)
    assert manifest_alpha == 0.1


def read_manifest_alpha(path):
    """The slope the export writes for the first LeakyReLU (fused into conv2d_1)."""
    from kerasfold.pipeline import prepare
    return prepare(path)["conv2d_1"].op.activation["alpha"]


def test_keras3_leaky_relu_negative_slope(tiny_yolo):
    for flavour in ("keras3-h5", "keras"):
        g = read_model(tiny_yolo[flavour])
        config = g["leaky_re_lu_1"].config
        assert "negative_slope" in config and "alpha" not in config
        assert read_manifest_alpha(tiny_yolo[flavour]) == 0.1


def test_keras_zip_maps_groups_by_layer_name(tiny_yolo):
    """In the .keras weights, group ``conv2d`` holds layer ``conv2d_1`` and group ``conv2d_1``
    holds ``conv2d_2``: the reader follows the layer name, not the group name."""
    with zipfile.ZipFile(tiny_yolo["keras"]) as z:
        with h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
            assert _text(f["layers/conv2d/vars"].attrs["name"]) == "conv2d_1"
            assert _text(f["layers/conv2d_1/vars"].attrs["name"]) == "conv2d_2"
            first = f["layers/conv2d/vars/0"][()]
            second = f["layers/conv2d_1/vars/0"][()]
            last_bias = f["layers/conv2d_8/vars/1"][()]
    g = read_model(tiny_yolo["keras"])
    np.testing.assert_array_equal(g["conv2d_1"].weights["kernel"], first)
    np.testing.assert_array_equal(g["conv2d_2"].weights["kernel"], second)
    np.testing.assert_array_equal(g["conv2d_9"].weights["bias"], last_bias)
    assert g["conv2d_1"].weights["kernel"].shape == (3, 3, 3, 16)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_sequential(small_model, flavour):
    model, path = small_model(small.sequential, flavour)
    g = read_model(path)
    assert g.source.flavour == flavour
    assert [n.kind for n in g] == ["InputLayer", "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D", "Conv2D"]
    names = list(g.nodes)
    assert names[1:] == ["c1", "b1", "r1", "p1", "c2"]
    assert all(g[b].inputs == [a] for a, b in zip(names, names[1:]))
    assert g.inputs == [names[0]] and g.outputs == ["c2"]
    assert g[names[0]].output_shape == (10, 10, 3)
    np.testing.assert_array_equal(g["c1"].weights["kernel"], model.get_layer("c1").get_weights()[0])
    bn = {v.path.split("/")[-1]: np.asarray(v) for v in model.get_layer("b1").weights}
    assert sorted(g["b1"].weights) == sorted(bn)
    for key, value in bn.items():
        np.testing.assert_array_equal(g["b1"].weights[key], value)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bn_without_scale_and_center_read_by_name(small_model, flavour):
    """γ and β absent: the two remaining weights are the moving statistics, by name."""
    model, path = small_model(small.conv_bn_act, flavour, scale=False, center=False)
    g = read_model(path)
    bn = {v.path.split("/")[-1]: np.asarray(v) for v in model.get_layer("bn").weights}
    assert sorted(g["bn"].weights) == sorted(bn) == ["moving_mean", "moving_variance"]
    for key, value in bn.items():
        np.testing.assert_array_equal(g["bn"].weights[key], value)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_shared_layer_gives_one_node_per_call(small_model, flavour):
    model, path = small_model(small.shared_conv, flavour)
    g = read_model(path)
    assert g["conv"].inputs == ["image"] and g["conv@1"].inputs == ["r"]
    assert g["conv@1"].layer == "conv" and g["conv@1"].weights is g["conv"].weights
    assert sorted(g["sum"].inputs) == ["bn", "conv@1"]
    np.testing.assert_array_equal(g["conv"].weights["kernel"], model.get_layer("conv").get_weights()[0])


def test_importing_the_export_path_imports_no_framework():
    code = ("import sys, kerasfold.yolo2metal, kerasfold.pipeline, kerasfold.readers, kerasfold.verify\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'jax', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_export_works_with_tensorflow_and_keras_unimportable(tiny_yolo, tiny_yolo_exports, tmp_path):
    """All three flavours export in a process where importing TensorFlow or Keras fails, and give
    the same bytes as an export from a process where they are importable."""
    outs = {f: tmp_path / f for f in FLAVOURS}
    code = (
        "import sys\n"
        "for m in ('tensorflow', 'keras', 'tf_keras'): sys.modules[m] = None   # import -> ImportError\n"
        "from kerasfold.yolo2metal import main\n"
        f"jobs = {[(str(tiny_yolo[f]), str(outs[f])) for f in FLAVOURS]!r}\n"
        "codes = [main([model, out, '-q']) for model, out in jobs]\n"
        "assert not [m for m in ('tensorflow', 'keras', 'tf_keras') if sys.modules.get(m) is not None]\n"
        "try:\n"
        "    import tensorflow\n"
        "    sys.exit('tensorflow was importable')\n"
        "except ImportError:\n"
        "    pass\n"
        "sys.exit(max(codes))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for flavour in FLAVOURS:
        assert snapshot(outs[flavour]) == snapshot(tiny_yolo_exports[flavour]), flavour
        assert len(read_manifest(outs[flavour])["layers"]) == 15


def test_keras_zip_without_layer_names_in_vars(tiny_yolo, tmp_path):
    """Keras 3 releases before ``_save_state`` passed ``metadata={"name": ...}`` wrote ``vars``
    groups without a ``name`` attribute; the groups are still named as Keras' loader walks the
    model (snake_case class name + counter, in layer order), so the weights can be found."""
    with zipfile.ZipFile(tiny_yolo["keras"]) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        groups = [f["vars"]] + [g for g in f["layers"].values() if "vars" in g]
        for g in groups:
            vars_ = g if g.name == "/vars" else g["vars"]
            if "name" in vars_.attrs:
                del vars_.attrs["name"]
    members["model.weights.h5"] = buffer.getvalue()
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(old, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    g, ref = read_model(old), read_model(tiny_yolo["keras2-h5"])
    for n in ref:
        assert sorted(g[n.name].weights) == sorted(n.weights), n.name
        for k, w in n.weights.items():
            np.testing.assert_array_equal(g[n.name].weights[k], w)


def test_the_source_is_hashed_beside_the_probe_and_never_while_forking(tiny_yolo, monkeypatch):
    """The source's sha256 starts once the probe's child is forked (so it overlaps the child's walk),
    and no thread of ours runs while the probe forks."""
    import os
    import threading
    import time

    import kerasfold.readers as readers
    from kerasfold.readers import hdf5
    events, threads_at_fork = [], []
    real_fork, real_hash, real_probe = os.fork, readers.file_sha256, readers.probe

    def fork():
        threads_at_fork.append(threading.active_count())
        return real_fork()

    def file_sha256(path):
        events.append(("hash starts", time.perf_counter()))
        return real_hash(path)

    def probe(*args, **kwargs):
        real_probe(*args, **kwargs)
        events.append(("probe returns", time.perf_counter()))
    monkeypatch.setattr(hdf5.os, "fork", fork)
    monkeypatch.setattr(readers, "file_sha256", file_sha256)
    monkeypatch.setattr(readers, "probe", probe)
    before = threading.active_count()
    model = readers.read_model(tiny_yolo["keras2-h5"])
    model.close()
    assert len(threads_at_fork) == 1 and threads_at_fork[0] <= before      # none started by the read yet
    assert [name for name, _ in sorted(events, key=lambda e: e[1])] == ["hash starts", "probe returns"]
    assert model.source.sha256 == hashlib.sha256(tiny_yolo["keras2-h5"].read_bytes()).hexdigest()


def test_a_failed_lazy_read_leaves_no_thread_behind(tmp_path):
    """The source's hash starts beside the probe; a read that then fails waits for it, so that
    the next read never forks while it runs."""
    import threading

    from kerasfold.errors import ExportError
    path = tmp_path / "weights-only.h5"
    with h5py.File(path, "w") as f:                    # no model_config: refused after the probe
        f["w"] = np.zeros((256, 1024), np.float32)
    before = threading.active_count()
    with pytest.raises(ExportError, match="weights-only"):
        read_model(path, lazy=True)
    assert threading.active_count() <= before
