"""Issue 4: float16 export, the numpy reference as a second (or only) check, where a failure
starts, and MPS offsets in the manifest."""
import hashlib
import json
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, copy_tree, read_manifest
from kerasfold.errors import ExportError
from kerasfold.pipeline import ExportOptions, export, prepare
from kerasfold.targets.mps.offsets import offset_for
from kerasfold.targets.mps.read import Export, load_export
from kerasfold.verify import verify_export
from kerasfold.verify.check import by_origin, first_divergence, layer_errors
from kerasfold.verify.reference import run as run_reference
from kerasfold.yolo2metal import main as export_main


@pytest.fixture(scope="module")
def half_export(tiny_yolo, tmp_path_factory):
    out = tmp_path_factory.mktemp("half") / "out"
    result = export(tiny_yolo["keras2-h5"], out, ExportOptions(dtype="float16"))
    return out, result


def test_float16_files(tiny_yolo, tiny_yolo_export, half_export):
    """Each half weight is the exact (float64) fold rounded to float16 once, never through float32
    first; biases are the float32 export's. Rounding twice would differ on some weights (checked,
    so that this test can tell)."""
    from kerasfold.readers import read_model
    model = read_model(tiny_yolo["keras2-h5"])
    out, _ = half_export
    m, m32 = read_manifest(out), read_manifest(tiny_yolo_export)
    assert m["dtype"] == "float16"
    twice = 0
    for e, e32 in zip(m["layers"], m32["layers"]):
        if "weights" not in e:
            continue
        assert e["weights"]["dtype"] == "float16" and e["bias"]["dtype"] == "float32"
        w16 = np.fromfile(out / e["weights"]["file"], "<f2")
        kernel = model[e["name"]].weights["kernel"].astype(np.float64)        # HWIO
        for bn_name in e["folded"]:
            bn = model[bn_name]
            kernel = kernel * (bn.weights["gamma"].astype(np.float64)
                               / np.sqrt(bn.weights["moving_variance"].astype(np.float64) + bn.config["epsilon"]))
        exact = kernel.transpose(3, 0, 1, 2).reshape(-1)                      # OHWI
        np.testing.assert_array_equal(w16, exact.astype(np.float16))           # one IEEE rounding
        twice += int(np.count_nonzero(exact.astype(np.float32).astype(np.float16) != w16))
        assert (out / e["weights"]["file"]).stat().st_size == 2 * w16.size
        np.testing.assert_array_equal(np.fromfile(out / e["bias"]["file"], "<f4"),
                                      np.fromfile(tiny_yolo_export / e32["bias"]["file"], "<f4"))
        w32 = np.fromfile(tiny_yolo_export / e32["weights"]["file"], "<f4")
        flushed = int(np.count_nonzero((w32 != 0) & (w16 == 0)))
        subnormal = int(np.count_nonzero((w16 != 0) & (np.abs(w16) < np.finfo(np.float16).tiny)))
        assert e["float16"] == {"flushed_to_zero": flushed, "subnormal": subnormal}
    assert twice > 0


def test_float16_counts_reported(half_export):
    _, result = half_export
    lines = result.warnings()
    assert lines and all("in float16" in line for line in lines)
    assert any("conv2d_8" in line for line in lines)           # the widest layer has subnormals


def test_float16_verifies_with_its_own_tolerance(tiny_yolo, half_export):
    out, _ = half_export
    report = verify_export(tiny_yolo["keras2-h5"], out)
    assert report.passed, report.text()
    assert report.tolerance == 1e-2
    assert 1e-5 < report.max_rel < 1e-2                         # half rounding is visible, and bounded
    assert len(report.checks) == 2


def test_tiny_variance_fails_float16_naming_the_layer(tmp_path):
    from models.small import build, conv_bn_act
    model = build(conv_bn_act, epsilon=1e-12)
    bn = model.get_layer("bn")
    weights = {v.path.split("/")[-1]: v for v in bn.weights}
    var = np.asarray(weights["moving_variance"]).copy()
    var[2] = 1e-12
    weights["moving_variance"].assign(var)
    path = tmp_path / "tiny.keras"
    model.save(path)
    assert export(path, tmp_path / "f32").manifest["dtype"] == "float32"      # fine in float32
    proc = subprocess.run([sys.executable, "-m", "kerasfold.yolo2metal", str(path), str(tmp_path / "f16"),
                           "--dtype", "float16"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "layer 'conv'" in line and "largest |w| =" in line
    assert "float16" in line and not (tmp_path / "f16").exists()
    if importlib.util.find_spec("coremltools"):               # the Core ML target checks the same range
        proc = subprocess.run([sys.executable, "-m", "kerasfold.coreml", str(path), str(tmp_path / "h.mlpackage"),
                               "--dtype", "float16"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.strip() == line.replace("kerasfold:", "kerasfold-coreml:")
        assert not (tmp_path / "h.mlpackage").exists()


def test_no_fold_export_keeps_bn_and_activations(tiny_yolo, tmp_path):
    assert export_main([str(tiny_yolo["keras2-h5"]), str(tmp_path / "plain"), "--no-fold", "-q"]) == 0
    kinds = [e["keras_class"] for e in read_manifest(tmp_path / "plain")["layers"]]
    assert kinds.count("BatchNormalization") == 8 and kinds.count("LeakyReLU") == 8
    assert verify_export(tiny_yolo["keras2-h5"], tmp_path / "plain").passed


def _tamper(src, dst, layer):
    out = copy_tree(src, dst)
    m = read_manifest(out)
    entry = next(e for e in m["layers"] if e["name"] == layer)
    path = out / entry["weights"]["file"]
    w = np.fromfile(path, "<f4")
    w[::97] *= 1.01
    w.astype("<f4").tofile(path)
    entry["weights"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def test_failure_names_the_first_diverging_layer(tiny_yolo, tiny_yolo_export, tmp_path):
    out = _tamper(tiny_yolo_export, tmp_path / "t", "conv2d_5")
    report = verify_export(tiny_yolo["keras2-h5"], out)
    assert not report.passed
    assert [c.label for c in report.checks] == ["parity", "reference"]
    for check in report.checks:
        assert check.divergence.startswith("layer 'conv2d_5' (reproduces 'leaky_re_lu_5')"), check.divergence
    assert "first divergence: layer 'conv2d_5'" in report.text()


def test_layer_errors_matches_entries_by_output_of():
    """One row per entry that can be compared, in manifest order, with errors' figures; entries
    without an original (synthetic), without an output, or whose original is unknown or shaped
    differently are left out. first_divergence reports the first row above the tolerance."""
    layers = [{"name": "a", "output_of": "a_act"}, {"name": "synthetic", "output_of": None},
              {"name": "b", "output_of": "b"}, {"name": "unknown", "output_of": "nowhere"},
              {"name": "reshaped", "output_of": "r"}, {"name": "not_run", "output_of": "a_act"},
              {"name": "c", "output_of": "c_bn"}]
    export_ = Export(root=ROOT, manifest={"layers": layers})
    want = {"a_act": np.array([1.0, -4.0]), "b": np.array([2.0, 2.0]), "r": np.zeros(3),
            "c_bn": np.array([10.0, 0.0])}
    got = {"a": np.array([1.0, -4.0], np.float32), "synthetic": np.zeros(2), "b": np.array([2.0, 1.0]),
           "unknown": np.zeros(2), "reshaped": np.zeros(4), "c": np.array([10.0, 0.001])}
    rows = layer_errors(export_, got, want.get)
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert rows[0][1:] == (0.0, 0.0) and rows[1][1:] == (1.0, 0.5)
    assert rows[2][1] == pytest.approx(1e-3) and rows[2][2] == pytest.approx(1e-4)
    assert first_divergence(export_, got, want.get, 0.1) == "layer 'b': max abs error 1, max relative error 0.5"
    assert first_divergence(export_, got, want.get, 1e-5).startswith("layer 'b'")
    assert first_divergence(export_, got, want.get, 0.5) is None
    got["b"] = want["b"]
    assert first_divergence(export_, got, want.get, 1e-5) == ("layer 'c' (reproduces 'c_bn'): max abs "
                                                             "error 0.001, max relative error 0.0001")


def test_layer_errors_on_a_tampered_export_rise_where_it_was_changed(tiny_yolo, tiny_yolo_export, tmp_path):
    """The reference executor layer by layer: a float32 export stays within 1e-5 at every layer until
    the tampered conv2d_5, and is off there and after (the notebook's plot of the same rows)."""
    out = _tamper(tiny_yolo_export, tmp_path / "t", "conv2d_5")
    plain = prepare(tiny_yolo["keras2-h5"], fold=False)
    x = np.random.default_rng(0).random((1, 416, 416, 3), dtype=np.float32)
    want = by_origin(plain, [x], "float64")
    for tampered, source in ((False, tiny_yolo_export), (True, out)):
        export_ = load_export(source)
        rows = layer_errors(export_, run_reference(export_, [x], dtype="float64", keep=True), want)
        names = [n for n, _, _ in rows]
        assert names == [e["name"] for e in export_.layers] and len(names) == 15
        at = names.index("conv2d_5")
        assert max(rel for _, _, rel in rows[:at]) <= 1e-5
        late = [rel for _, _, rel in rows[at:]]
        assert min(late) > 1e-4 if tampered else max(late) <= 1e-5


def _verify_without_tensorflow(model, out):
    code = ("import sys\n"
            "for m in ('tensorflow', 'keras', 'tf_keras'): sys.modules[m] = None\n"
            "from kerasfold.verify import main\n"
            f"rc = main([{str(model)!r}, {str(out)!r}])\n"
            "assert not [m for m in ('tensorflow', 'keras') if sys.modules.get(m) is not None]\n"
            "sys.exit(rc)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def test_verify_without_tensorflow_uses_the_reference(tiny_yolo, tiny_yolo_export, tmp_path):
    proc = _verify_without_tensorflow(tiny_yolo["keras2-h5"], tiny_yolo_export)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "TensorFlow is not installed" in proc.stdout and "reference PASS" in proc.stdout
    assert "parity" not in proc.stdout.replace("parity check", "")
    bad = _tamper(tiny_yolo_export, tmp_path / "t", "conv2d_3")
    proc = _verify_without_tensorflow(tiny_yolo["keras2-h5"], bad)
    assert proc.returncode == 1 and "reference FAIL" in proc.stdout
    assert "first divergence: layer 'conv2d_3'" in proc.stdout


def test_manifest_offsets(tiny_yolo_export):
    from kerasfold.targets.mps.offsets import mps_offset
    layers = read_manifest(tiny_yolo_export)["layers"]
    for e in layers:
        assert e["offset"] == offset_for(e)
    by_name = {e["name"]: e for e in layers}
    assert by_name["conv2d_1"]["offset"] == {"x": 0, "y": 0}             # 3x3, pad 1: centred
    assert by_name["conv2d_9"]["offset"] == {"x": 0, "y": 0}             # 1x1, no pad
    assert by_name["max_pooling2d_1"]["offset"] == {"x": 1, "y": 1}      # 2x2 stride 2, pad 0
    assert by_name["max_pooling2d_6"]["offset"] == {"x": 1, "y": 1}      # 2x2 stride 1, pad 0/1
    assert mps_offset(3, 2, 1, 0) == 1 and mps_offset(1, 2, 1, 0) == 0 and mps_offset(4, 1, 1, 1) == 1


def test_reference_offset_mode_agrees_with_pad_mode(tiny_yolo_export):
    from kerasfold.targets.mps.read import load_export
    from kerasfold.verify.reference import run
    export_ = load_export(tiny_yolo_export)
    x = np.random.default_rng(3).random((1, 416, 416, 3), dtype=np.float32)
    a = run(export_, [x], padding="pad")
    b = run(export_, [x], padding="offset")
    np.testing.assert_array_equal(a["conv2d_9"], b["conv2d_9"])


def test_verify_input_size_must_match_the_export(tiny_yolo, tiny_yolo_export, capsys):
    from kerasfold.verify import main
    assert main([str(tiny_yolo["keras2-h5"]), str(tiny_yolo_export), "--input-size", "320x320"]) == 2
    err = capsys.readouterr().err
    assert "expected --input-size 416x416" in err and "received 320x320" in err
