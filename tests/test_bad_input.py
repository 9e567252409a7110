"""Bad input, case by case: every damaged model file, config, weight set and OUT is exit 2 with
exactly one stderr line naming the file (and the layer and config field where there is one), no
traceback, and OUT byte-identical to the export it held before.

Each case writes a damaged copy of the real-world-style seed (``models.small.mixed``) and runs the
command line's ``main`` in this process (stderr captured at the file descriptor).
"""
import json
import os
import signal
import time
import shutil
import struct
import zipfile

import h5py
import numpy as np
import pytest

from conftest import copy_tree, snapshot
from kerasfold.yolo2metal import main
from models.mutants import rewrite_zip
from models.small import mixed

# -- damaging a copy of the seed ----------------------------------------------------------------------


def _h5_config(edit):
    """A legacy .h5 whose model_config went through ``edit(config)`` (which may return a new one)."""
    def make(seeds, path):
        shutil.copyfile(seeds["keras2-h5"], path)
        with h5py.File(path, "r+") as f:
            config = json.loads(f.attrs["model_config"])
            config = edit(config) or config
            f.attrs["model_config"] = config if isinstance(config, str) else json.dumps(config)
        return path
    return make


def _layer(config, name):
    return next(spec for spec in config["config"]["layers"] if spec["name"] == name)


def _set(name, key, value):
    """One config field of layer ``name`` set to ``value``."""
    return _h5_config(lambda c: _layer(c, name)["config"].__setitem__(key, value))


def _drop(name, key):
    return _h5_config(lambda c: _layer(c, name)["config"].__delitem__(key))


def _h5_weights(edit):
    """A legacy .h5 whose weights went through ``edit(model_weights group)``."""
    def make(seeds, path):
        shutil.copyfile(seeds["keras2-h5"], path)
        with h5py.File(path, "r+") as f:
            edit(f["model_weights"])
        return path
    return make


def _replace(dataset, value_of):
    """``model_weights/<dataset>`` replaced by ``value_of(old array)``."""
    def edit(group):
        old = np.asarray(group[dataset][()])
        del group[dataset]
        group[dataset] = value_of(old)
    return _h5_weights(edit)


def _keras_member(member, change):
    """The .keras seed with ``member`` replaced by ``change(bytes)`` (None: dropped)."""
    def make(seeds, path):
        rewrite_zip(seeds["keras"], path, lambda name, data: change(data) if name == member else data)
        return path
    return make


def _central_header(field_offset, value, member="config.json"):
    """The .keras seed with a 2-byte field of ``member``'s central directory header overwritten
    (zipfile takes the flags and the compression method from there)."""
    def make(seeds, path):
        data = bytearray(seeds["keras"].read_bytes())
        at = data.find(b"PK\x01\x02")
        while at >= 0:
            size = struct.unpack_from("<H", data, at + 28)[0]
            if data[at + 46:at + 46 + size] == member.encode():
                struct.pack_into("<H", data, at + field_offset, value)
                break
            at = data.find(b"PK\x01\x02", at + 1)
        assert at >= 0, member
        path.write_bytes(bytes(data))
        return path
    return make


def _keras_deflate_damaged(seeds, path):
    """config.json deflated, then bytes in the middle of its compressed stream overwritten."""
    rewrite_zip(seeds["keras"], path, lambda name, data: data)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("config.json")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 5:start + 25] = b"\xff" * 20
    path.write_bytes(bytes(data))
    return path


def _bytes(make_bytes):
    def make(seeds, path):
        path.write_bytes(make_bytes(seeds))
        return path
    return make


def _truncated(flavour, fraction):
    return _bytes(lambda seeds: seeds[flavour].read_bytes()[:int(len(seeds[flavour].read_bytes()) * fraction)])


def _signature_broken(signature):
    """Every HDF5 structure with this signature (TREE: B-trees, HEAP: local heaps, SNOD: symbol
    nodes, OHDR/OCHK: v2 object headers) damaged: corrupt internals, not a truncation."""
    return _bytes(lambda seeds: seeds["keras2-h5"].read_bytes().replace(signature, b"XXXX"))


def _nested_models(config):
    """Sequential models nested 300 deep (each would be inlined)."""
    spec = {"class_name": "Sequential", "config": {"name": "s", "layers": config["config"]["layers"][:3]}}
    for k in range(300):
        spec = {"class_name": "Sequential", "config": {"name": f"s{k}", "layers": [spec]}}
    return spec


def _renamed(old, new):
    def edit(config):
        text = json.dumps(config).replace(f'"{old}"', json.dumps(new))
        return json.loads(text)
    return _h5_config(edit)


def _newline_name(seeds, path):
    """A layer whose name holds a newline, and a bad field: the error line names it escaped."""
    _renamed("conv_1", "conv\nnext line")(seeds, path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        _layer(config, "conv\nnext line")["config"]["strides"] = [0, 0]
        f.attrs["model_config"] = json.dumps(config)
    return path


def _weights_only(seeds, path):
    shutil.copyfile(seeds["keras2-h5"], path)
    with h5py.File(path, "r+") as f:
        del f.attrs["model_config"]
    return path


def _lambda_before_conv(config):
    """A Keras 2 Lambda (marshalled bytecode of ``def shift(x)``) between the pool and the
    depthwise conv: unrecognised, refused by its function's name."""
    layers = config["config"]["layers"]
    code = ("4wEAAAAAAAAAAAAAAAIAAAADAAAA8wwAAACXAHwAZAF6AAAAUwApAk7pAQAAAKkAKQHaAXhzAQAAACD6CHNo"
            "aWZ0LnB52gVzaGlmdHIGAAAAAQAAAHMLAAAAgADYCwyIcYk1gEzzAAAAAA==")
    spec = {"class_name": "Lambda", "name": "shifted", "inbound_nodes": [[["pool_1", 0, 0, {}]]],
            "config": {"name": "shifted", "function": [code, None, None], "function_type": "lambda",
                       "module": "__main__", "output_shape": None, "arguments": {}}}
    layers.insert(next(i for i, s in enumerate(layers) if s["name"] == "dw_2"), spec)
    _layer(config, "dw_2")["inbound_nodes"] = [[["shifted", 0, 0, {}]]]
    _layer(config, "residual")["inbound_nodes"] = [[["shifted", 0, 0, {}], ["bn_3", 0, 0, {}]]]


def _permute_before_conv(config):
    layers = config["config"]["layers"]
    spec = {"class_name": "Permute", "name": "perm", "inbound_nodes": [[["pool_1", 0, 0, {}]]],
            "config": {"name": "perm", "dims": [2, 1, 3]}}
    layers.insert(next(i for i, s in enumerate(layers) if s["name"] == "dw_2"), spec)
    _layer(config, "dw_2")["inbound_nodes"] = [[["perm", 0, 0, {}]]]


def _class(name, class_name):
    return _h5_config(lambda c: _layer(c, name).__setitem__("class_name", class_name))


def _bn_zero_variance_eps(eps):
    """BN 'bn_1' with epsilon ``eps`` and one zero moving variance: var + eps <= 0."""
    def make(seeds, path):
        _set("bn_1", "epsilon", eps)(seeds, path)
        with h5py.File(path, "r+") as f:
            var = f["model_weights/bn_1/bn_1/moving_variance:0"]
            values = var[()]
            values[0] = 0.0
            var[...] = values
        return path
    return make


# name -> (make(seeds, path) -> model path, fragments the one error line must hold besides the path)
CASES = {
    # the file itself
    "zero_bytes": (_bytes(lambda s: b""), ["an empty file"]),
    "random_bytes": (_bytes(lambda s: np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()),
                     ["expected an HDF5 (.h5) or zip (.keras) file"]),
    "text_file": (_bytes(lambda s: b'{"class_name": "Functional"}'), ["expected an HDF5"]),
    "hdf5_magic_then_garbage": (_bytes(lambda s: b"\x89HDF\r\n\x1a\n" + b"\x00" * 2000), ["damaged"]),
    "zip_magic_then_garbage": (_bytes(lambda s: b"PK\x03\x04" + b"\x01" * 2000), ["damaged or truncated"]),
    **{f"h5_truncated_{int(f * 100)}pct": (_truncated("keras2-h5", f), ["damaged"])
       for f in (0.01, 0.05, 0.25, 0.5, 0.75, 0.9, 0.99)},
    "h5_truncated_8_bytes": (_bytes(lambda s: s["keras2-h5"].read_bytes()[:8]), ["damaged"]),
    **{f"keras_truncated_{int(f * 100)}pct": (_truncated("keras", f), ["damaged or truncated"])
       for f in (0.1, 0.5, 0.9)},
    "h5_btrees_damaged": (_signature_broken(b"TREE"), ["HDF5"]),
    "h5_local_heaps_damaged": (_signature_broken(b"HEAP"), ["HDF5"]),
    "h5_symbol_nodes_damaged": (_signature_broken(b"SNOD"), ["HDF5"]),
    "weights_only_h5": (_weights_only, ["weights-only"]),
    # the .keras zip
    "keras_without_config": (_keras_member("config.json", lambda d: None), ["config.json"]),
    "keras_without_weights": (_keras_member("model.weights.h5", lambda d: None), ["model.weights.h5"]),
    "keras_config_invalid_json": (_keras_member("config.json", lambda d: d[:-7]), ["config.json", "invalid JSON"]),
    "keras_metadata_a_list": (_keras_member("metadata.json", lambda d: b"[1, 2]"), ["metadata.json", "list"]),
    "keras_metadata_invalid_json": (_keras_member("metadata.json", lambda d: b"{"), ["metadata.json"]),
    "keras_weights_not_hdf5": (_keras_member("model.weights.h5", lambda d: b"not hdf5" * 100), ["damaged"]),
    "keras_deflate_damaged": (_keras_deflate_damaged, ["config.json"]),
    "keras_unknown_compression": (_central_header(10, 99), ["config.json", "compression"]),
    "keras_encrypted_flag": (_central_header(8, 1), ["config.json", "unencrypted"]),
    # the model config
    "config_invalid_json": (_h5_config(lambda c: '{"class_name": '), ["model_config", "invalid JSON"]),
    "config_a_list": (_h5_config(lambda c: [1, 2, 3]), ["expected a layer as an object"]),
    "config_layers_not_a_list": (_h5_config(lambda c: c["config"].__setitem__("layers", {"a": 1})), ["layers"]),
    "config_layer_a_string": (_h5_config(lambda c: c["config"]["layers"].__setitem__(3, "leaky_1")), ["layer"]),
    "config_models_nested_300_deep": (_h5_config(_nested_models), ["nested at most"]),
    "config_json_nested_100k_deep": (_h5_config(lambda c: "[" * 100000 + "]" * 100000), ["invalid JSON"]),
    "strides_zero": (_set("conv_1", "strides", [0, 0]), ["layer 'conv_1'", "strides"]),
    "dilation_2_to_40": (_set("conv_1", "dilation_rate", [2 ** 40, 1]), ["layer 'conv_1'", "dilation_rate"]),
    "units_2_to_31": (_set("classes", "units", 2 ** 31), ["layer 'classes'", "units"]),
    "strides_string": (_set("conv_1", "strides", "two"), ["layer 'conv_1'", "strides"]),
    "kernel_size_missing": (_drop("conv_1", "kernel_size"), ["layer 'conv_1'", "kernel_size"]),
    "kernel_size_nan": (_set("conv_1", "kernel_size", [float("nan"), 3]), ["layer 'conv_1'", "kernel_size"]),
    "filters_negative": (_set("conv_1", "filters", -8), ["layer 'conv_1'", "filters"]),
    "padding_unknown": (_set("conv_1", "padding", "middle"), ["layer 'conv_1'", "padding"]),
    "activation_unknown": (_set("conv_4", "activation", "mystery"), ["layer 'conv_4'", "activation"]),
    "bn_axis_out_of_range": (_set("bn_1", "axis", 7), ["layer 'bn_1'", "axis"]),
    "leaky_alpha_string": (_set("leaky_1", "alpha", "x"), ["layer 'leaky_1'", "alpha"]),
    "pool_size_zero": (_set("pool_1", "pool_size", [0, 0]), ["layer 'pool_1'", "pool_size"]),
    "zero_padding_negative": (_set("pad", "padding", [[-1, 1], [1, 1]]), ["layer 'pad'", "padding"]),
    "upsampling_interpolation_unknown": (_set("up", "interpolation", "cubic"), ["layer 'up'", "interpolation"]),
    "concatenate_axis_out_of_range": (_set("route", "axis", 9), ["layer 'route'", "axis"]),
    "depth_multiplier_zero": (_set("dw_2", "depth_multiplier", 0), ["layer 'dw_2'", "depth_multiplier"]),
    "input_shape_negative": (_set("image", "batch_input_shape", [None, -16, 16, 3]), ["image"]),
    "input_shape_missing": (_drop("image", "batch_input_shape"), ["image"]),
    "inbound_unknown_layer": (_h5_config(lambda c: _layer(c, "pool_1").__setitem__(
        "inbound_nodes", [[["nowhere", 0, 0, {}]]])), ["layer 'pool_1'", "nowhere"]),
    "inbound_none": (_h5_config(lambda c: _layer(c, "pool_1").__setitem__("inbound_nodes", [])), ["pool_1"]),
    "output_unknown_layer": (_h5_config(lambda c: c["config"].__setitem__("output_layers", [["ghost", 0, 0]])),
                             ["ghost"]),
    "duplicate_layer_names": (_renamed("pool_1", "leaky_1"), ["layer 'leaky_1'", "unique"]),
    "layer_name_with_newline": (_newline_name, ["layer 'conv\\nnext line'", "strides"]),
    # layers kerasfold cannot run
    "unknown_weighted_layer": (_class("conv_1", "Conv3D"), ["layer 'conv_1'", "Conv3D", "Conv2D, "]),
    "unknown_weightless_layer": (_h5_config(_permute_before_conv), ["layer 'perm'", "Permute", "--allow-opaque"]),
    "unrecognised_lambda": (_h5_config(_lambda_before_conv), ["layer 'shifted'", "Lambda 'shift'", "--allow-opaque"]),
    # weights
    "nan_kernel": (_replace("conv_1/conv_1/kernel:0", lambda w: np.where(w == w.flat[0], np.nan, w)),
                   ["layer 'conv_1'", "NaN"]),
    "inf_gamma": (_replace("bn_1/bn_1/gamma:0", lambda w: np.full_like(w, np.inf)), ["layer 'bn_1'", "gamma"]),
    "gamma_3e38_overflows_the_fold": (_replace("bn_1/bn_1/gamma:0", lambda w: np.full_like(w, 3e38)),
                                      ["layer 'bn_1'", "finite", "conv_1"]),
    "negative_variance": (_replace("bn_2/bn_2/moving_variance:0", lambda w: -np.abs(w)),
                          ["layer 'bn_2'", "moving_variance"]),
    "zero_variance_negative_epsilon": (_bn_zero_variance_eps(-1e-3), ["layer 'bn_1'", "epsilon"]),
    "zero_variance_zero_epsilon": (_bn_zero_variance_eps(0.0), ["layer 'bn_1'", "epsilon"]),
    "wrong_kernel_shape": (_replace("conv_4/conv_4/kernel:0", lambda w: np.zeros((3, 3, 7, 12), np.float32)),
                           ["layer 'conv_4'", "kernel", "shape"]),
    "integer_weights": (_replace("classes/classes/kernel:0", lambda w: w.astype(np.int32)), ["layer 'classes'"]),
    "weights_missing_dataset": (_h5_weights(lambda g: g["conv_1/conv_1"].__delitem__("kernel:0")),
                                ["layer 'conv_1'", "kernel"]),
    "weight_names_a_scalar": (_h5_weights(lambda g: g["conv_1"].attrs.__setitem__("weight_names", 3)),
                              ["layer 'conv_1'", "weight_names"]),
    "weight_dataset_a_group": (_h5_weights(lambda g: (g["conv_1/conv_1"].__delitem__("kernel:0"),
                                                      g["conv_1/conv_1"].create_group("kernel:0"))),
                               ["layer 'conv_1'", "group"]),
}


@pytest.fixture(scope="module")
def seeds(small_model):
    """The seed model in each flavour."""
    return {flavour: small_model(mixed, flavour=flavour)[1] for flavour in ("keras2-h5", "keras")}


@pytest.fixture(scope="module")
def clean_export(seeds, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    assert main([str(seeds["keras2-h5"]), str(out), "-q"]) == 0
    return out


def refused(capfd, model, out, *options):
    """Run the exporter; assert the bad-input contract; return the one error line."""
    before = snapshot(out)
    capfd.readouterr()
    code = main([str(model), str(out), "-q", *options])
    stdout, stderr = capfd.readouterr()
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kerasfold: error: "), stderr
    assert stdout == ""
    assert snapshot(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]   # no staging left
    return lines[0]


def test_at_least_sixty_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_model_is_one_line_exit_2_and_out_untouched(name, seeds, clean_export, tmp_path, capfd):
    make, fragments = CASES[name]
    model = make(seeds, tmp_path / ("model.keras" if name.startswith("keras_") else "model.h5"))
    out = copy_tree(clean_export, tmp_path / "out")
    line = refused(capfd, model, out)
    assert str(model) in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_a_directory_as_model(clean_export, tmp_path, capfd):
    out = copy_tree(clean_export, tmp_path / "out")
    assert "is a directory" in refused(capfd, tmp_path, out)


def test_a_missing_model(clean_export, tmp_path, capfd):
    out = copy_tree(clean_export, tmp_path / "out")
    assert "does not exist" in refused(capfd, tmp_path / "nowhere.h5", out)


def test_out_is_a_file(seeds, tmp_path, capfd):
    out = tmp_path / "out"
    out.write_bytes(b"keep me")
    capfd.readouterr()
    assert main([str(seeds["keras2-h5"]), str(out), "-q"]) == 2
    assert len(capfd.readouterr().err.splitlines()) == 1 and out.read_bytes() == b"keep me"


def test_out_holding_other_files(seeds, clean_export, tmp_path, capfd):
    out = copy_tree(clean_export, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    assert "notes.txt" in refused(capfd, seeds["keras2-h5"], out)


def test_allow_opaque_writes_the_lambda_then_fails_on_the_unknown_shape(seeds, clean_export, tmp_path, capfd):
    """With --allow-opaque the Lambda is let through, but the depthwise conv after it needs a shape
    no rule gives: still one line and exit 2, never the crash it was."""
    model = _h5_config(_lambda_before_conv)(seeds, tmp_path / "m.h5")
    out = copy_tree(clean_export, tmp_path / "out")
    line = refused(capfd, model, out, "--allow-opaque")
    assert "layer 'dw_2'" in line and "unknown" in line


def test_long_layer_names_get_short_file_names(small_model, tmp_path, capfd):
    """A 300-character layer name: a file stem shortened with a hash; the manifest keeps the name."""
    from models.small import named
    long = "conv_" + "x" * 295
    _, model = small_model(named, flavour="keras2-h5", names=(long, long[:-1] + "y"))
    out = tmp_path / "out"
    assert main([str(model), str(out), "-q"]) == 0, capfd.readouterr().err
    layers = {e["name"]: e for e in json.loads((out / "manifest.json").read_text())["layers"]}
    files = [layers[name]["weights"]["file"] for name in (long, long[:-1] + "y")]
    assert files[0] != files[1] and all(len(f) < 140 and f.startswith("conv_xxx") for f in files)
    assert all((out / f).is_file() for f in files)


def test_probe_refuses_an_hdf5_library_that_hangs_or_crashes():
    """The HDF5 C library can spin forever or crash on a damaged header; the probe's child takes it."""
    from kerasfold.errors import ExportError
    from kerasfold.readers.hdf5 import probe
    with pytest.raises(ExportError, match="reading does not end"):
        probe(lambda: time.sleep(60), seconds=0.3)
    with pytest.raises(ExportError, match="crashes the HDF5 library"):
        probe(lambda: os.kill(os.getpid(), signal.SIGSEGV), seconds=10)


def test_export_reads_through_the_probe(seeds, clean_export, tmp_path, capfd, monkeypatch):
    """A model whose structure never reads to the end is refused after the deadline (h5 and
    .keras): the walk of the probe, or the read in the reading child, hangs."""
    from kerasfold import readers
    from kerasfold.readers import hdf5
    monkeypatch.setattr(hdf5, "PROBE_SECONDS", 0.3)
    monkeypatch.setattr(hdf5, "_walk", lambda f: time.sleep(60))
    monkeypatch.setattr(readers, "h5_structure", lambda f, lazy: time.sleep(60))
    for flavour in ("keras2-h5", "keras"):
        out = copy_tree(clean_export, tmp_path / flavour)
        assert "reading does not end" in refused(capfd, seeds[flavour], out)
