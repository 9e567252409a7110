"""End to end on tiny-yolo-voc: the command lines, the files they write (against weights read here
with h5py, independently of kerasfold), and the parity check passing and failing."""
import hashlib
import io
import json
import re
import zipfile

import h5py
import numpy as np
import pytest

from kerasfold.verify import main as verify_main
from kerasfold.yolo2metal import main as export_main

from models import small

from conftest import copy_tree, read_manifest, run_module

FLAVOURS = ("keras2-h5", "keras3-h5", "keras")
FIGURES = re.compile(r"max abs error ([0-9.e+-]+), max relative error ([0-9.e+-]+)")
SIDES = [416, 208, 104, 52, 26, 13, 13, 13, 13]          # input side of conv2d_1 .. conv2d_9


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _original(path):
    """{layer: {variable: float64 array}} and {BN layer: epsilon}, read straight from the file."""
    weights, eps = {}, {}
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            with h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
                stored = {_text(g["vars"].attrs["name"]): [g["vars"][str(i)][()] for i in range(len(g["vars"]))]
                          for g in f["layers"].values()}
        for spec in config["config"]["layers"]:
            name, arrays = spec["config"]["name"], stored.get(spec["config"]["name"], [])
            if spec["class_name"] == "Conv2D":
                weights[name] = dict(zip(["kernel", "bias"], arrays))
            elif spec["class_name"] == "BatchNormalization":
                assert len(arrays) == 4
                weights[name] = dict(zip(["gamma", "beta", "moving_mean", "moving_variance"], arrays))
    else:
        with h5py.File(path) as f:
            config = json.loads(_text(f.attrs["model_config"]))
            for name, group in f["model_weights"].items():
                names = [_text(n) for n in group.attrs.get("weight_names", [])]
                weights[name] = {n.split("/")[-1].split(":")[0]: group[n][()] for n in names}
    for spec in config["config"]["layers"]:
        if spec["class_name"] == "BatchNormalization":
            eps[spec["config"]["name"]] = spec["config"]["epsilon"]
    return ({k: {n: a.astype(np.float64) for n, a in v.items()} for k, v in weights.items() if v}, eps)


def _bin(out, info):
    assert info["dtype"] == "float32"
    return np.fromfile(out / info["file"], "<f4").reshape(info["shape"])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_structure(tiny_yolo_exports, flavour):
    m = read_manifest(tiny_yolo_exports[flavour])
    assert m["format"] == "kerasfold.metal" and m["version"] == 1 and m["dtype"] == "float32"
    assert m["source"]["flavour"] == flavour
    assert m["inputs"] == [{"name": "input_1", "shape": [416, 416, 3]}] and m["outputs"] == ["conv2d_9"]
    layers = m["layers"]
    assert [e["type"] for e in layers] == ["conv2d", "max_pool2d"] * 6 + ["conv2d"] * 3
    assert not any(e["keras_class"] in ("BatchNormalization", "LeakyReLU") for e in layers)
    convs = [e for e in layers if e["type"] == "conv2d"]
    assert [e["name"] for e in convs] == [f"conv2d_{i}" for i in range(1, 10)]
    for i, e in enumerate(convs[:8], start=1):
        assert e["folded"] == [f"batch_normalization_{i}"]
        assert e["activation"] == {"type": "leaky_relu", "alpha": 0.1}
        assert e["kernel"] == [3, 3] and e["strides"] == [1, 1] and e["dilation"] == [1, 1] and e["groups"] == 1
        assert e["padding"] == "same" and e["pad"] == [1, 1, 1, 1]
        assert e["weights"]["layout"] == "OHWI" and "bias" in e
    last = convs[8]
    assert last["folded"] == [] and last["activation"] == {"type": "linear"} and "bias" in last
    assert last["kernel"] == [1, 1] and last["pad"] == [0, 0, 0, 0]
    assert last["inputs"] == ["conv2d_8"] and last["output_shape"] == [13, 13, 125]
    for e, side in zip(convs, SIDES):
        assert e["output_shape"][:2] == [side, side]
    pools = [e for e in layers if e["type"] == "max_pool2d"]
    for i, p in enumerate(pools, start=1):
        assert p["name"] == f"max_pooling2d_{i}" and p["inputs"] == [f"conv2d_{i}"]
        assert p["pool_size"] == [2, 2] and p["activation"] == {"type": "linear"}
        if i < 6:                                        # stride 2 on an even input: no padding
            assert p["strides"] == [2, 2] and p["pad"] == [0, 0, 0, 0]
            assert p["output_shape"][:2] == [SIDES[i - 1] // 2] * 2
        else:                                            # 2x2 stride 1: odd pixel bottom/right
            assert p["strides"] == [1, 1] and p["pad"] == [0, 1, 0, 1]
            assert p["output_shape"] == [13, 13, 512]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bins_equal_float64_fold_rounded_once(tiny_yolo, tiny_yolo_exports, flavour):
    out = tiny_yolo_exports[flavour]
    weights, eps = _original(tiny_yolo[flavour])
    assert set(eps.values()) == {0.001}
    for e in (e for e in read_manifest(out)["layers"] if e["type"] == "conv2d"):
        w = weights[e["name"]]
        kernel = w["kernel"]
        bias = w.get("bias", np.zeros(kernel.shape[-1]))
        if e["folded"]:
            bn = weights[e["folded"][0]]
            s = bn["gamma"] / np.sqrt(bn["moving_variance"] + eps[e["folded"][0]])
            kernel, bias = kernel * s, (bias - bn["moving_mean"]) * s + bn["beta"]
        assert e["weights"]["shape"] == [kernel.shape[3], kernel.shape[0], kernel.shape[1], kernel.shape[2]]
        np.testing.assert_array_equal(_bin(out, e["weights"]), kernel.astype(np.float32).transpose(3, 0, 1, 2))
        np.testing.assert_array_equal(_bin(out, e["bias"]), bias.astype(np.float32))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_verify_option_passes_and_prints_the_figures(tiny_yolo, tmp_path, capsys, flavour):
    assert export_main([str(tiny_yolo[flavour]), str(tmp_path / "out"), "--verify"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("exported 15 layers (9 conv2d, 6 max_pool2d); 8 BatchNormalization folded")
    assert "parity PASS" in text and "tolerance 1e-05" in text
    max_abs, max_rel = map(float, FIGURES.search(text).groups())
    assert 0 < max_rel <= 1e-5 and 0 < max_abs


def test_verify_option_fails_below_the_tolerance_even_quiet(small_model, tmp_path, capsys):
    _, model = small_model(small.conv_bn_act, "keras2-h5")
    args = [str(model), str(tmp_path / "out"), "--verify", "--tolerance", "1e-9", "-q"]
    assert export_main(args) == 1
    text = capsys.readouterr().out
    assert text.startswith("parity FAIL") and "tolerance 1e-09" in text


def test_verify_bad_input_exits_2(tiny_yolo, tmp_path, capsys):
    assert verify_main([str(tiny_yolo["keras2-h5"]), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(tmp_path / "missing") in err and "manifest.json" in err


def test_graph_rebuilt_original_passes(tiny_yolo, tiny_yolo_export, capsys):
    assert verify_main([str(tiny_yolo["keras"]), str(tiny_yolo_export), "--original", "graph"]) == 0
    text = capsys.readouterr().out
    assert "parity PASS" in text and "original rebuilt from the graph" in text


def test_tolerance_changes_the_verdict(small_model, small_export, capsys):
    _, model = small_model(small.conv_bn_act)
    assert verify_main([str(model), str(small_export), "--tolerance", "1e-9"]) == 1
    text = capsys.readouterr().out
    assert "parity FAIL" in text and "tolerance 1e-09" in text
    assert 1e-9 < float(FIGURES.search(text).group(2)) <= 1e-5      # the default would have passed


def _tamper(src, dst, layer, rehash):
    """Scale 1 % of one layer's weights by 1.01; update the manifest's sha256 when ``rehash``."""
    out = copy_tree(src, dst)
    m = read_manifest(out)
    entry = next(e for e in m["layers"] if e["name"] == layer)
    path = out / entry["weights"]["file"]
    w = np.fromfile(path, "<f4")
    w[::97] *= np.float32(1.01)
    w.astype("<f4").tofile(path)
    if rehash:
        entry["weights"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (out / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    return out


def test_tampered_bin_fails_parity(small_model, small_export, tmp_path):
    """Weights changed and the hash updated to match: only the parity check can see it."""
    _, model = small_model(small.conv_bn_act)
    out = _tamper(small_export, tmp_path / "tampered", "conv", rehash=True)
    proc = run_module("kerasfold.verify", model, out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "parity FAIL" in proc.stdout and "sha256" not in proc.stdout
    assert float(FIGURES.search(proc.stdout).group(2)) > 1e-4        # far above the tolerance


def test_changed_bin_is_reported_by_hash(tiny_yolo, tiny_yolo_export, tmp_path, capsys):
    out = copy_tree(tiny_yolo_export, tmp_path / "changed")
    path = out / "conv2d_9_b.bin"
    b = np.fromfile(path, "<f4")
    b[0] = np.nextafter(b[0], np.float32(np.inf))    # one ulp: invisible to parity, not to sha256
    b.tofile(path)
    assert verify_main([str(tiny_yolo["keras2-h5"]), str(out)]) == 1
    text = capsys.readouterr().out
    assert "sha256 mismatch" in text and "conv2d_9_b.bin" in text and "parity FAIL" in text
    assert float(FIGURES.search(text).group(2)) <= 1e-5


def test_falls_back_to_graph_when_keras_cannot_load(tiny_yolo, tiny_yolo_export, monkeypatch):
    import keras

    from kerasfold.verify import verify_export

    def refuse(*args, **kwargs):
        raise ValueError("bad marshal data (unknown type code)")
    monkeypatch.setattr(keras.models, "load_model", refuse)
    report = verify_export(tiny_yolo["keras2-h5"], tiny_yolo_export)
    assert report.passed and report.original == "rebuilt from the graph"
    assert any("cannot load tiny-yolo-voc.h5 (bad marshal data" in n for n in report.notes)
    assert report.text().startswith("note: Keras")


def test_module_entry_point_prints_one_summary(tiny_yolo, tiny_yolo_exports, tmp_path):
    out = tmp_path / "o"
    proc = run_module("kerasfold.yolo2metal", tiny_yolo["keras"], out)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("exported 15 layers (9 conv2d, 6 max_pool2d); 8 BatchNormalization folded")
    assert len(proc.stdout.strip().splitlines()) == 1
    assert (out / "conv2d_7_W.bin").read_bytes() == (tiny_yolo_exports["keras"] / "conv2d_7_W.bin").read_bytes()
