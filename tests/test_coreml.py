"""The Core ML target: ``python -m kerasfold.coreml SOURCE OUT.mlpackage``, what the package holds,
and the command's contract (exit codes, one line, OUT untouched, no TensorFlow)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, snapshot

pytest.importorskip("coremltools")


def coreml(*args):
    from kerasfold.coreml import main
    return main([str(a) for a in args])


def spec_of(package):
    from kerasfold.targets.coreml.ct_env import import_coremltools
    ct = import_coremltools()
    return ct.models.MLModel(str(package), skip_model_load=True).get_spec()


def program_of(package):
    from kerasfold.verify.mlprogram import load_program
    return load_program(package)


def constants(program):
    from kerasfold.verify.coreml import constants
    return constants(program)


def precision(program):
    from kerasfold.verify.coreml import precision
    return precision(program)


@pytest.fixture(scope="module")
def tiny_package(tiny_yolo, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml") / "tiny.mlpackage"
    assert coreml(tiny_yolo["keras2-h5"], out, "-q") == 0
    return out


def test_package_holds_the_mps_files_weights_exactly(tiny_package, tiny_yolo_export):
    """(a) Every float32 weight tensor in the package is the MPS export's file, value for value."""
    from kerasfold.targets.mps.read import load_export
    from kerasfold.verify.coreml import weights_match
    program = program_of(tiny_package)
    assert weights_match(program, tiny_yolo_export) == []
    export = load_export(tiny_yolo_export)
    entries = [e for e in export.layers if "weights" in e]
    consts = [np.asarray(c) for c in constants(program) if np.asarray(c).size > 1]
    for e in entries:                                      # and with the same layout rule: OHWI -> OIHW
        w = export.tensor(e, "weights")                    # (O, H, W, I)
        assert any(c.shape == (w.shape[0], w.shape[3], w.shape[1], w.shape[2])
                   and np.array_equal(c.view(np.uint32), w.transpose(0, 3, 1, 2).astype(np.float32).view(np.uint32))
                   for c in consts), e["name"]


def test_from_an_export_directory(tiny_yolo_export, tmp_path, capsys):
    out = tmp_path / "from-dir.mlpackage"
    assert coreml(tiny_yolo_export, out) == 0
    assert capsys.readouterr().out.startswith(f"built {out} (9 conv, 8 leaky_relu, 6 max_pool")
    from kerasfold.verify.coreml import weights_match
    assert weights_match(program_of(out), tiny_yolo_export) == []


def test_changed_export_file_is_refused(tiny_yolo_export, tmp_path, capsys):
    export = tmp_path / "export"
    import shutil
    shutil.copytree(tiny_yolo_export, export)
    target = export / "conv2d_2_W.bin"
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    assert coreml(export, tmp_path / "x.mlpackage") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "sha256" in err[0] and "conv2d_2_W.bin" in err[0]
    assert not (tmp_path / "x.mlpackage").exists()


def test_names_shapes_and_metadata(tiny_package, tiny_yolo):
    spec = spec_of(tiny_package)
    (inp,), (out,) = spec.description.input, spec.description.output
    assert inp.name == "input_1" and list(inp.type.multiArrayType.shape) == [1, 416, 416, 3]
    assert out.name == "conv2d_9" and list(out.type.multiArrayType.shape) == [1, 13, 13, 125]   # NHWC
    meta = spec.description.metadata
    assert meta.author.startswith("kerasfold ") and "tiny-yolo-voc.h5" in meta.shortDescription
    import hashlib
    assert meta.userDefined["source_sha256"] == hashlib.sha256(tiny_yolo["keras2-h5"].read_bytes()).hexdigest()
    assert spec.specificationVersion == 6                  # iOS 15 / macOS 12: the first ML Programs


def test_image_input_labels_target_and_float16(tiny_yolo, tmp_path, capsys):
    labels = tmp_path / "voc.txt"
    names = ["aeroplane", "bicycle", "bird", "boat"]
    labels.write_text("\n".join(names) + "\n")
    out = tmp_path / "img.mlpackage"
    assert coreml(tiny_yolo["keras2-h5"], out, "--image-input", "--scale", 1 / 255, "--bias", "0",
                  "--color-layout", "BGR", "--labels", labels, "--dtype", "float16",
                  "--minimum-deployment-target", "ios16", "--author", "Me", "-q") == 0
    warnings = capsys.readouterr().err.splitlines()
    assert warnings and all(w.startswith("kerasfold-coreml: warning: layer '") for w in warnings)
    spec = spec_of(out)
    image = spec.description.input[0].type.imageType
    assert (image.width, image.height) == (416, 416) and image.colorSpace == image.BGR
    assert spec.specificationVersion == 7
    meta = spec.description.metadata
    assert json.loads(meta.userDefined["labels"]) == names and meta.author == "Me"
    program = program_of(out)
    assert precision(program) == "float16"
    halves = [np.asarray(c) for c in constants(program) if np.asarray(c).dtype == np.float16 and np.asarray(c).ndim == 4]
    assert len(halves) == 9                                # every conv's weights stored as half


def test_float16_weights_are_the_correctly_rounded_exact_fold(tiny_yolo, tiny_yolo_export, tmp_path):
    """Half weights from the float64 fold rounded once (as the MPS float16 files), not float32 twice."""
    from kerasfold.pipeline import prepare
    from kerasfold import ops
    out = tmp_path / "half.mlpackage"
    assert coreml(tiny_yolo["keras2-h5"], out, "--dtype", "float16", "-q") == 0
    consts = [np.asarray(c) for c in constants(program_of(out)) if np.asarray(c).dtype == np.float16]
    graph = prepare(tiny_yolo["keras2-h5"])
    for node in graph:
        if isinstance(node.op, ops.Conv2D):
            exact = np.asarray(node.op.kernel, np.float64)
            assert exact.dtype == np.float64
            want = np.sort(exact.astype(np.float16).ravel().view(np.uint16))
            assert any(c.size == want.size and np.array_equal(np.sort(c.ravel().view(np.uint16)), want) for c in consts), node.name


def test_bad_source_is_one_line_and_keeps_out(tiny_package, tmp_path, capsys):
    import shutil
    out = tmp_path / "kept.mlpackage"
    shutil.copytree(tiny_package, out)
    before = snapshot(out)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    for source in (bad, tmp_path / "missing.h5"):
        assert coreml(source, out) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"kerasfold-coreml: error: {source}"), err
        assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("name, make", [
    ("weights.bin", lambda p: p.write_bytes(b"x")),                       # OUT is a file
    ("folder.mlpackage", lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine"))),
    ("plain-folder", lambda p: None),                                      # not an .mlpackage name
])
def test_out_must_be_a_package(tiny_yolo_export, tmp_path, capsys, name, make):
    out = tmp_path / name
    make(out)
    before = snapshot(tmp_path)
    assert coreml(tiny_yolo_export, out) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "expected OUT" in err[0]
    assert snapshot(tmp_path) == before


def test_layer_core_ml_cannot_express_is_named(small_model, tmp_path, capsys):
    """An opaque entry (written with --allow-opaque) cannot become Core ML: exit 2 naming it."""
    from models.small import with_layer
    from kerasfold.yolo2metal import main as export_main
    _, path = small_model(with_layer, layer="Permute", options={"dims": (2, 1, 3)})
    export = tmp_path / "opaque"
    assert export_main([str(path), str(export), "--allow-opaque", "-q"]) == 0
    capsys.readouterr()
    assert coreml(export, tmp_path / "o.mlpackage") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "layer '" in err[0] and "Opaque 'Permute'" in err[0] and "Conv2D" in err[0], err


def test_no_tensorflow_imported(tiny_yolo, tmp_path):
    code = ("import sys\nfrom kerasfold.coreml import main\n"
            f"assert main([{str(tiny_yolo['keras2-h5'])!r}, {str(tmp_path / 'p.mlpackage')!r}, '-q']) == 0\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "[]", "")


def test_tiny_yolo_package_runs_like_keras(tiny_yolo, tmp_path):
    """(b) The saved program, run by the numpy evaluator, against Keras' own prediction."""
    import keras
    from kerasfold.verify.mlprogram import run
    out = tmp_path / "k.mlpackage"
    assert coreml(tiny_yolo["keras"], out, "-q") == 0
    model = keras.models.load_model(tiny_yolo["keras"], compile=False)
    x = np.random.default_rng(5).random((1, 416, 416, 3), dtype=np.float32)
    want = model.predict(x, verbose=0)
    for dtype, bound in (("float64", 1e-5), ("float32", 1e-5)):
        got = run(program_of(out), {"input_1": x}, dtype=dtype)["conv2d_9"]
        assert got.shape == want.shape == (1, 13, 13, 125)
        assert float(np.max(np.abs(got - want))) <= bound * float(np.max(np.abs(want))), dtype


def test_verify_option_float32_and_float16(tiny_yolo, tmp_path, capsys):
    assert coreml(tiny_yolo["keras2-h5"], tmp_path / "a.mlpackage", "--verify") == 0
    out = capsys.readouterr().out
    assert "coreml PASS" in out and "tolerance 1e-05" in out and "macOS only" in out
    assert coreml(tiny_yolo["keras2-h5"], tmp_path / "h.mlpackage", "--verify", "--dtype", "float16") == 0
    out = capsys.readouterr().out
    assert "coreml PASS" in out and "tolerance 0.01" in out
    assert coreml(tiny_yolo["keras2-h5"], tmp_path / "i.mlpackage", "--verify", "--image-input",
                  "--scale", 1 / 255, "--bias=-0.1,0,0.1") == 0              # whole pixels in, scaled inside
    assert "coreml PASS" in capsys.readouterr().out


def test_verify_fails_on_a_package_that_does_not_match(tiny_yolo, small_model, tmp_path, capsys):
    """--verify is a real check: a package built from other weights (another seed) fails it."""
    from kerasfold.verify.coreml import verify_package
    from models.small import conv_bn_act
    _, a = small_model(conv_bn_act, seed=0)
    _, b = small_model(conv_bn_act, seed=1)
    assert coreml(b, tmp_path / "b.mlpackage", "-q") == 0
    report = verify_package(a, tmp_path / "b.mlpackage")
    assert not report.passed and report.checks[0].max_rel > 1e-2


def test_yolov2_space_to_depth_passes(tmp_path, capsys):
    """YOLOv2 (YAD2K's space_to_depth Lambda, a route concatenation), at 128 x 128 for speed."""
    from models.yolov2 import build_and_save
    path = build_and_save(tmp_path, input_size=128)["keras2-h5"]
    assert coreml(path, tmp_path / "y.mlpackage", "--verify") == 0
    out = capsys.readouterr().out
    assert "coreml PASS" in out, out
    program = program_of(tmp_path / "y.mlpackage")
    kinds = [op.op_type for op in program.main.operations]
    assert "concat" in kinds and kinds.count("conv") == 23


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction runs on macOS only "
                    "(coremltools: 'Model prediction is only supported on macOS'); here the numpy "
                    "evaluator proves the package")
def test_core_ml_itself_agrees_on_macos(tiny_package, tiny_yolo):
    from kerasfold.verify.coreml import verify_package
    report = verify_package(tiny_yolo["keras2-h5"], tiny_package)
    assert [c.label for c in report.checks] == ["coreml", "core ml"] and report.passed, report.text()


def test_float16_warnings_count_weights_as_mps_does(tiny_yolo, tiny_yolo_export, tmp_path, capsys):
    from kerasfold.yolo2metal import main as export_main
    assert export_main([str(tiny_yolo["keras2-h5"]), str(tmp_path / "half"), "--dtype", "float16", "-q"]) == 0
    mps = sorted(line.split(": ", 2)[-1] for line in capsys.readouterr().err.splitlines())
    assert coreml(tiny_yolo["keras2-h5"], tmp_path / "h.mlpackage", "--dtype", "float16", "-q") == 0
    core_ml = sorted(line.split(": ", 2)[-1] for line in capsys.readouterr().err.splitlines())
    assert core_ml == mps and len(mps) == 7
