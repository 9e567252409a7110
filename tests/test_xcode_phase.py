"""export/ios_build_step.sh run exactly as Xcode runs a Run Script phase: ``/bin/sh`` with Xcode's
environment (and nothing else but PATH, HOME and TMPDIR, each inside the test's folder)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, snapshot

SCRIPT = ROOT / "export" / "ios_build_step.sh"


class Xcode:
    """A project folder with Models/yolo.h5, and Xcode's settings for one app target."""

    def __init__(self, tmp: Path, model: Path):
        self.tmp = tmp
        self.src = tmp / "MyApp"
        self.model = self.src / "Models" / "yolo.h5"
        self.out = self.src / "Weights"
        self.derived = tmp / "DerivedData" / "MyApp.build" / "DerivedSources"
        self.products = tmp / "DerivedData" / "Build" / "Products" / "Debug-iphoneos"
        self.bundle = self.products / "MyApp.app" / "Weights"
        self.stamp = self.derived / "kerasfold-Weights.stamp.json"
        self.model.parent.mkdir(parents=True)
        shutil.copyfile(model, self.model)
        for d in ("home", "tmp"):
            (tmp / d).mkdir()
        self.env = {
            "PATH": os.environ["PATH"], "HOME": str(tmp / "home"), "TMPDIR": str(tmp / "tmp"),
            "SRCROOT": str(self.src), "PROJECT_DIR": str(self.src), "CONFIGURATION": "Debug",
            "TARGET_BUILD_DIR": str(self.products), "UNLOCALIZED_RESOURCES_FOLDER_PATH": "MyApp.app",
            "DERIVED_FILE_DIR": str(self.derived),
            "SCRIPT_INPUT_FILE_COUNT": "1", "SCRIPT_INPUT_FILE_0": str(self.model),
            "SCRIPT_OUTPUT_FILE_COUNT": "2", "SCRIPT_OUTPUT_FILE_0": str(self.out / "manifest.json"),
            "SCRIPT_OUTPUT_FILE_1": str(self.stamp),
            "ENABLE_USER_SCRIPT_SANDBOXING": "YES",
            "KERASFOLD_PYTHON": sys.executable,
        }

    def build(self, **extra: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in {**self.env, **extra}.items() if v is not None}
        return subprocess.run(["/bin/sh", str(SCRIPT)], env=env, cwd=self.src, capture_output=True, text=True)

    def mtimes(self) -> dict:
        """Every path under the test folder -> mtime_ns (what "writes nothing" is checked against)."""
        return {str(p.relative_to(self.tmp)): p.stat().st_mtime_ns for p in sorted(self.tmp.rglob("*"))}

    def manifest(self) -> dict:
        return json.loads((self.out / "manifest.json").read_text())


@pytest.fixture
def xcode(tiny_yolo, tmp_path):
    return Xcode(tmp_path, tiny_yolo["keras2-h5"])


def exported(result) -> bool:
    return result.stdout.startswith("exported ")


def test_first_build_exports_and_an_unchanged_build_writes_nothing(xcode):
    first = xcode.build()
    assert first.returncode == 0, first.stderr
    assert exported(first) and first.stderr == ""
    from kerasfold.targets.mps.read import load_export
    export = load_export(xcode.out)
    assert not export.hash_mismatches and export.manifest["source"]["file"] == "yolo.h5"
    assert json.loads(xcode.stamp.read_text())["source"]["sha256"] == export.manifest["source"]["sha256"]
    before = xcode.mtimes()

    second = xcode.build()
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    assert xcode.mtimes() == before                      # OUT, the stamp, everything: untouched


def test_changed_model_reexports_and_touched_model_does_not(xcode, tiny_yolo):
    assert exported(xcode.build())
    out_before = snapshot(xcode.out)

    os.utime(xcode.model)                                # same bytes, new mtime: hashed, not exported
    touched = xcode.build()
    assert (touched.returncode, touched.stdout) == (0, "")
    assert snapshot(xcode.out) == out_before
    assert json.loads(xcode.stamp.read_text())["source"]["mtime_ns"] == xcode.model.stat().st_mtime_ns

    shutil.copyfile(tiny_yolo["keras3-h5"], xcode.model)   # other bytes: exported again
    changed = xcode.build()
    assert changed.returncode == 0 and exported(changed), changed.stderr
    assert xcode.manifest()["source"]["keras_version"] != json.loads(out_before["manifest.json"])["source"]["keras_version"]


def test_kerasfold_upgrade_and_changed_options_reexport(xcode):
    assert exported(xcode.build())
    stamp = json.loads(xcode.stamp.read_text())
    xcode.stamp.write_text(json.dumps({**stamp, "kerasfold": "0.0.9"}))   # written by an older kerasfold
    upgraded = xcode.build()
    assert upgraded.returncode == 0 and exported(upgraded)
    assert json.loads(xcode.stamp.read_text())["kerasfold"] == stamp["kerasfold"]

    half = xcode.build(KERASFOLD_ARGS="--dtype float16")
    assert half.returncode == 0 and exported(half)
    assert xcode.manifest()["dtype"] == "float16"
    warnings = half.stderr.splitlines()                  # tiny-yolo-voc's widest layers turn subnormal
    assert warnings and all(line.startswith(f"{xcode.model}: warning: ") for line in warnings), warnings
    assert any("subnormal" in line for line in warnings)
    assert xcode.build(KERASFOLD_ARGS="--dtype float16").stdout == ""


def test_changed_out_is_exported_again(xcode):
    assert exported(xcode.build())
    good = snapshot(xcode.out)
    weights = next(xcode.out.glob("conv2d_3_W.bin"))
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size, other bytes, new mtime
    (xcode.out / "notes.txt").write_text("mine")
    assert xcode.build().returncode == 2                 # a foreign file in OUT: refused, kept
    assert (xcode.out / "notes.txt").read_text() == "mine"
    (xcode.out / "notes.txt").unlink()
    repaired = xcode.build()
    assert repaired.returncode == 0 and exported(repaired)
    assert snapshot(xcode.out) == good


def test_bad_model_is_one_error_line_and_keeps_the_previous_out(xcode):
    assert exported(xcode.build())
    before, stamp = snapshot(xcode.out), xcode.stamp.read_bytes()
    data = bytearray(xcode.model.read_bytes())
    xcode.model.write_bytes(bytes(data[:4096]))          # truncated
    bad = xcode.build()
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{xcode.model}: error: expected "), lines
    assert snapshot(xcode.out) == before and xcode.stamp.read_bytes() == stamp
    assert [p.name for p in xcode.src.iterdir()] and not list(xcode.src.glob(".Weights.*"))

    xcode.model.unlink()
    missing = xcode.build()
    assert missing.returncode == 2
    assert re.fullmatch(rf"{re.escape(str(xcode.model))}: error: expected the Keras model file .*\n", missing.stderr)


@pytest.mark.parametrize("setting, value, expected", [
    ("KERASFOLD_ARGS", "--dtype float64", "expected KERASFOLD_ARGS to hold options of kerasfold"),
    ("KERASFOLD_ARGS", "--dtype 'float16", "expected KERASFOLD_ARGS to be shell words"),
    ("KERASFOLD_PYTHON", "/nonexistent/python3", "expected KERASFOLD_PYTHON to name a Python"),
    ("KERASFOLD_PYTHON", "/bin/true", "expected KERASFOLD_PYTHON to name a Python"),
])
def test_bad_settings_are_one_error_line(xcode, setting, value, expected):
    result = xcode.build(**{setting: value})
    lines = result.stderr.splitlines()
    assert result.returncode != 0 and len(lines) == 1, lines
    assert re.fullmatch(rf"\S.*: error: {re.escape(expected)}.*", lines[0]), lines
    assert not xcode.out.exists()


def test_file_lists_as_xcode_resolves_them(xcode):
    """The shipped .xcfilelist pair, with $(VAR) resolved as Xcode does, given as SCRIPT_*_FILE_LIST_0."""
    lists = {}
    for kind in ("inputs", "outputs"):
        text = (ROOT / "export" / f"kerasfold-{kind}.xcfilelist").read_text()
        resolved = re.sub(r"\$\((\w+)\)", lambda m: xcode.env[m.group(1)], text)
        lists[kind] = xcode.derived.parent / f"{kind}-resolved.xcfilelist"
        lists[kind].parent.mkdir(parents=True, exist_ok=True)
        lists[kind].write_text(resolved)
    settings = {k: None for k in ("SCRIPT_INPUT_FILE_0", "SCRIPT_OUTPUT_FILE_0", "SCRIPT_OUTPUT_FILE_1")}
    result = xcode.build(**settings, SCRIPT_INPUT_FILE_COUNT="0", SCRIPT_OUTPUT_FILE_COUNT="0",
                         SCRIPT_INPUT_FILE_LIST_COUNT="1", SCRIPT_INPUT_FILE_LIST_0=str(lists["inputs"]),
                         SCRIPT_OUTPUT_FILE_LIST_COUNT="1", SCRIPT_OUTPUT_FILE_LIST_0=str(lists["outputs"]))
    assert result.returncode == 0 and exported(result), result.stderr
    assert (xcode.out / "manifest.json").is_file() and xcode.stamp.is_file()
    declared = [Path(p) for p in lists["outputs"].read_text().split()]
    assert declared == [xcode.out / "manifest.json", xcode.stamp]


def test_bundle_copy(xcode):
    first = xcode.build(KERASFOLD_COPY_TO_BUNDLE="1")
    assert first.returncode == 0 and exported(first), first.stderr
    assert snapshot(xcode.bundle) == snapshot(xcode.out)
    before = xcode.mtimes()
    assert xcode.build(KERASFOLD_COPY_TO_BUNDLE="1").stdout == ""
    assert xcode.mtimes() == before

    shutil.rmtree(xcode.products)                        # Product > Clean: copied again, not exported
    out_mtimes = {p.name: p.stat().st_mtime_ns for p in xcode.out.iterdir()}
    again = xcode.build(KERASFOLD_COPY_TO_BUNDLE="1")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert snapshot(xcode.bundle) == snapshot(xcode.out)
    assert {p.name: p.stat().st_mtime_ns for p in xcode.out.iterdir()} == out_mtimes


def test_sandboxed_verify_writes_only_the_declared_outputs(xcode):
    """KERASFOLD_VERIFY=1 imports Keras and TensorFlow: nothing may land in HOME (~/.keras,
    ~/.cache), TMPDIR or the project beyond OUT, the stamp and the bundle copy."""
    before = set(xcode.mtimes())
    result = xcode.build(KERASFOLD_VERIFY="1", KERASFOLD_COPY_TO_BUNDLE="1")
    assert result.returncode == 0, result.stderr
    assert "parity PASS" in result.stdout and "reference PASS" in result.stdout
    declared = [xcode.out, xcode.stamp, xcode.bundle]
    created = sorted(set(xcode.mtimes()) - before)
    outside = [p for p in created
               if not any((xcode.tmp / p) == d or d in (xcode.tmp / p).parents or (xcode.tmp / p) in d.parents
                          for d in declared)]
    assert outside == [], outside
    assert not any((xcode.tmp / "home").iterdir()) and not any((xcode.tmp / "tmp").iterdir())
    assert json.loads(xcode.stamp.read_text())["verified"] is True

    again = xcode.build(KERASFOLD_VERIFY="1", KERASFOLD_COPY_TO_BUNDLE="1")   # verified: nothing to do
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_failed_verification_fails_the_build(xcode):
    result = xcode.build(KERASFOLD_VERIFY="1", KERASFOLD_ARGS="--tolerance 1e-12")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert errors == [line for line in result.stderr.splitlines()]
    assert len(errors) == 1 and errors[0].startswith(f"{xcode.model}: error: the export does not reproduce")
    assert not xcode.stamp.exists()                      # the next build tries again


def test_unchanged_size_and_mtime_are_not_hashed(tmp_path):
    """The up-to-date rule: the model is hashed only when its size, mtime or inode changed."""
    from kerasfold.digest import file_sha256
    from kerasfold.xcode import stamp
    model = tmp_path / "m.h5"
    model.write_bytes(b"a" * 100)
    first = stamp.source(model, None)
    assert first["sha256"] == file_sha256(model)
    st = model.stat()
    model.write_bytes(b"b" * 100)                        # other bytes, same size...
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and mtime put back: not hashed
    assert stamp.source(model, first)["sha256"] == first["sha256"]
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert stamp.source(model, first)["sha256"] == file_sha256(model) != first["sha256"]


def test_up_to_date_path_imports_neither_numpy_nor_h5py(xcode):
    assert exported(xcode.build())
    code = ("import sys\nfrom kerasfold.xcode.phase import main\nassert main() == 0\n"
            "print(sorted(m for m in ('numpy', 'h5py', 'tensorflow', 'argparse') if m in sys.modules))")
    env = {**xcode.env, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-B", "-c", code], env=env, capture_output=True, text=True)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "[]", "")


@pytest.mark.parametrize("env, model, out", [
    ({"SRCROOT": "/p"}, "/p/Models/yolo.h5", "/p/Weights"),
    ({"SRCROOT": "/p", "KERASFOLD_MODEL": "m/net.h5", "KERASFOLD_OUT": "/o/W"}, "/p/m/net.h5", "/o/W"),
    ({"SRCROOT": "/p", "SCRIPT_INPUT_FILE_0": "/a/x.keras", "KERASFOLD_MODEL": "/ignored.h5",
      "SCRIPT_OUTPUT_FILE_0": "/a/Out", "KERASFOLD_OUT": "/ignored"}, "/a/x.keras", "/a/Out"),
    ({"SRCROOT": "/p", "SCRIPT_OUTPUT_FILE_0": "/a/Out/manifest.json"}, "/p/Models/yolo.h5", "/a/Out"),
    ({"PROJECT_DIR": "/q", "SCRIPT_OUTPUT_FILE_0": "Gen/W/manifest.json"}, "/q/Models/yolo.h5", "/q/Gen/W"),
])
def test_settings_from_xcode_environment(env, model, out):
    from kerasfold.xcode.settings import settings
    s = settings(env)
    assert (str(s.model), str(s.out)) == (model, out)
    assert s.stamp == Path(out).parent / f".{Path(out).name}.kerasfold-stamp.json"   # outside Xcode: beside OUT
    assert settings({**env, "DERIVED_FILE_DIR": "/d"}).stamp == Path(f"/d/kerasfold-{Path(out).name}.stamp.json")
    assert (s.verify, s.bundle, s.args) == (False, None, ())


def test_settings_options_verify_and_bundle():
    from kerasfold.xcode.settings import SettingsError, settings
    env = {"SRCROOT": "/p", "KERASFOLD_ARGS": "--dtype float16 --input-size '416x416'", "KERASFOLD_VERIFY": "YES",
           "KERASFOLD_COPY_TO_BUNDLE": "1", "TARGET_BUILD_DIR": "/b", "UNLOCALIZED_RESOURCES_FOLDER_PATH": "A.app"}
    s = settings(env)
    assert s.args == ("--dtype", "float16", "--input-size", "416x416") and s.verify
    assert s.bundle == Path("/b/A.app/Weights")
    assert settings({"SRCROOT": "/p", "KERASFOLD_ARGS": "--verify"}).verify
    assert not settings({"SRCROOT": "/p", "KERASFOLD_VERIFY": "0"}).verify
    with pytest.raises(SettingsError, match="TARGET_BUILD_DIR"):
        settings({"SRCROOT": "/p", "KERASFOLD_COPY_TO_BUNDLE": "1"})
