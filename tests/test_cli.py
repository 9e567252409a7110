"""End to end on tiny-yolo-voc: the CLI, the files it writes, and the parity check."""
import hashlib
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from kerasfold.verify import main as verify_main
from kerasfold.yolo2metal import main as export_main

from conftest import ROOT


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def _h5_weights(path):
    """Every weight of a legacy h5, read independently of kerasfold: {layer: {var: array}}."""
    out = {}
    with h5py.File(path) as f:
        g = f["model_weights"]
        for layer in g:
            names = [n.decode() if isinstance(n, bytes) else n for n in g[layer].attrs.get("weight_names", [])]
            out[layer] = {n.split("/")[-1].split(":")[0]: g[layer][n][()] for n in names}
    return out


@pytest.mark.parametrize("flavour", ["keras2-h5", "keras3-h5", "keras"])
def test_export_structure_all_flavours(tiny_yolo, tmp_path, flavour):
    out = tmp_path / "out"
    assert export_main([str(tiny_yolo[flavour]), str(out), "-q"]) == 0
    m = _manifest(out)
    convs = [e for e in m["layers"] if e["type"] == "conv2d"]
    assert len(convs) == 9
    assert [e["type"] for e in m["layers"]].count("max_pool2d") == 6
    assert not any(e["keras_class"] in ("BatchNormalization", "LeakyReLU") for e in m["layers"])
    for i, e in enumerate(convs[:8], start=1):
        assert e["folded"] == [f"batch_normalization_{i}"]
        assert e["activation"] == {"type": "leaky_relu", "alpha": 0.1}
    last = convs[8]
    assert last["folded"] == [] and last["activation"] == {"type": "linear"} and "bias" in last
    assert m["outputs"] == ["conv2d_9"] and m["inputs"] == [{"name": "input_1", "shape": [416, 416, 3]}]
    assert m["source"]["flavour"] == flavour
    pools = {e["name"]: e["pad"] for e in m["layers"] if e["type"] == "max_pool2d"}
    assert pools["max_pooling2d_6"] == [0, 1, 0, 1]          # 2x2 stride 1: odd pixel bottom/right
    assert all(p == [0, 0, 0, 0] for n, p in pools.items() if n != "max_pooling2d_6")
    assert all(e["pad"] == [1, 1, 1, 1] for e in convs[:8]) and last["pad"] == [0, 0, 0, 0]
    assert convs[-1]["output_shape"] == [13, 13, 125]


def test_bins_equal_float64_fold_rounded_once(tiny_yolo, tiny_yolo_export):
    weights = _h5_weights(tiny_yolo["keras2-h5"])
    m = _manifest(tiny_yolo_export)
    config = json.loads(h5py.File(tiny_yolo["keras2-h5"]).attrs["model_config"])
    eps = {l["name"]: l["config"]["epsilon"] for l in config["config"]["layers"] if l["class_name"] == "BatchNormalization"}
    for e in (e for e in m["layers"] if e["type"] == "conv2d"):
        w = weights[e["name"]]
        kernel = w["kernel"].astype(np.float64)
        bias = w.get("bias", np.zeros(kernel.shape[-1])).astype(np.float64)
        if e["folded"]:
            bn = weights[e["folded"][0]]
            s = bn["gamma"].astype(np.float64) / np.sqrt(bn["moving_variance"].astype(np.float64) + eps[e["folded"][0]])
            kernel, bias = kernel * s, (bias - bn["moving_mean"]) * s + bn["beta"]
        got_w = np.fromfile(tiny_yolo_export / e["weights"]["file"], "<f4").reshape(e["weights"]["shape"])
        got_b = np.fromfile(tiny_yolo_export / e["bias"]["file"], "<f4")
        np.testing.assert_array_equal(got_w, kernel.astype(np.float32).transpose(3, 0, 1, 2))
        np.testing.assert_array_equal(got_b, bias.astype(np.float32))
        assert e["weights"]["layout"] == "OHWI"
        for key in ("weights", "bias"):
            data = (tiny_yolo_export / e[key]["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == e[key]["sha256"]


def test_export_then_verify_passes(tiny_yolo, tmp_path, capsys):
    out = tmp_path / "out"
    assert export_main([str(tiny_yolo["keras2-h5"]), str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "parity PASS" in text and "max abs error" in text and "max relative error" in text
    assert "tolerance 1e-05" in text


def test_graph_rebuild_original_passes(tiny_yolo, tiny_yolo_export, capsys):
    assert verify_main([str(tiny_yolo["keras"]), str(tiny_yolo_export), "--original", "graph"]) == 0
    assert "rebuilt from the graph" in capsys.readouterr().out


def test_tolerance_changes_the_verdict(tiny_yolo, tiny_yolo_export, capsys):
    assert verify_main([str(tiny_yolo["keras2-h5"]), str(tiny_yolo_export), "--tolerance", "1e-12"]) == 1
    assert "parity FAIL" in capsys.readouterr().out


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_tampered_bin_fails_parity(tiny_yolo, tiny_yolo_export, tmp_path, capsys):
    out = _copy(tiny_yolo_export, tmp_path / "tampered")
    m = _manifest(out)
    entry = next(e for e in m["layers"] if e["name"] == "conv2d_5")
    path = out / entry["weights"]["file"]
    w = np.fromfile(path, "<f4")
    w[::97] *= 1.01                                  # 1 % on about 1 % of one layer's weights
    w.astype("<f4").tofile(path)
    entry["weights"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()   # only parity can see it
    (out / "manifest.json").write_text(json.dumps(m))
    assert verify_main([str(tiny_yolo["keras2-h5"]), str(out)]) == 1
    text = capsys.readouterr().out
    assert "parity FAIL" in text and "sha256" not in text


def test_changed_bin_is_reported_by_hash(tiny_yolo, tiny_yolo_export, tmp_path, capsys):
    out = _copy(tiny_yolo_export, tmp_path / "changed")
    path = out / "conv2d_9_b.bin"
    b = np.fromfile(path, "<f4")
    b[0] = np.nextafter(b[0], np.float32(np.inf))    # one ulp: invisible to parity, not to sha256
    b.tofile(path)
    assert verify_main([str(tiny_yolo["keras2-h5"]), str(out)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().out


def test_forge_names(tiny_yolo, tmp_path):
    out = tmp_path / "forge"
    assert export_main([str(tiny_yolo["keras2-h5"]), str(out), "--forge-names", "-q"]) == 0
    convs = [e for e in _manifest(out)["layers"] if e["type"] == "conv2d"]
    assert [e["weights"]["file"] for e in convs] == [f"conv{i}_W.bin" for i in range(1, 10)]
    assert [e["bias"]["file"] for e in convs] == [f"conv{i}_b.bin" for i in range(1, 10)]
    assert [e["name"] for e in convs] == [f"conv2d_{i}" for i in range(1, 10)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [f"conv{i}_{s}.bin" for i in range(1, 10) for s in "Wb"])


def test_rerun_is_byte_identical(tiny_yolo, tiny_yolo_export, tmp_path):
    out = tmp_path / "again"
    assert export_main([str(tiny_yolo["keras2-h5"]), str(out), "-q"]) == 0
    first = {p.name: p.read_bytes() for p in tiny_yolo_export.iterdir()}
    second = {p.name: p.read_bytes() for p in out.iterdir()}
    assert first == second


def test_export_works_without_tensorflow(tiny_yolo, tmp_path):
    """Exporting in a process where TensorFlow and Keras cannot be imported."""
    out = tmp_path / "no-tf"
    code = (
        "import sys\n"
        "for m in ('tensorflow', 'keras', 'tf_keras', 'coremltools'): sys.modules[m] = None\n"
        "from kerasfold.yolo2metal import main\n"
        f"rc = main([{str(tiny_yolo['keras2-h5'])!r}, {str(out)!r}, '-q'])\n"
        "assert not [m for m in ('tensorflow', 'keras') if sys.modules.get(m) is not None]\n"
        "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(_manifest(out)["layers"]) == 15


def test_importing_the_export_path_imports_no_framework():
    code = ("import sys, kerasfold.yolo2metal, kerasfold.export, kerasfold.exported\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'coremltools') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_console_scripts_and_module_agree(tiny_yolo, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kerasfold.yolo2metal", str(tiny_yolo["keras"]), str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("exported 15 layers (9 conv2d, 6 max_pool2d); 8 BatchNormalization folded")


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
