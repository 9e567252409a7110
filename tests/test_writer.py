"""kerasfold.targets.mps.writer (and atomic): safe file names, hashes, byte-identical re-runs, Forge names,
and OUT replaced as a whole or not at all."""
import hashlib
import os
import re
import stat

import numpy as np
import pytest

from kerasfold.targets.mps.entries import Entry, Tensor
from kerasfold.pipeline import export
from kerasfold.graph import Graph, SourceInfo
from kerasfold.targets.mps.writer import safe_name, write_export
from kerasfold.yolo2metal import main as export_main
from models import small

from conftest import copy_tree, read_manifest, run_module, snapshot

SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def _files(out):
    return sorted(p.name for p in out.iterdir())


def test_safe_name_rules():
    taken = set()
    assert safe_name("a/b", taken) == "a_b"
    assert safe_name("a_b", taken) == "a_b_2"                  # collides with the first
    assert safe_name("..", taken) not in ("..", ".")
    assert safe_name(".", taken) not in ("..", ".")
    assert safe_name(".hidden", taken) == "_hidden"
    assert safe_name("", taken) not in ("", ".")
    assert safe_name("Conv", taken) == "Conv"
    assert safe_name("conv", taken) not in ("conv", "Conv")     # case-only collision (APFS, HFS+)
    assert safe_name("café", taken) == "caf_"
    assert safe_name("../../etc/passwd", taken) == "_._.._etc_passwd"
    stems = {safe_name(n, taken) for n in ("卷积", "层一")}
    assert len(stems) == 2
    assert all(SAFE.match(t) and not t.startswith(".") for t in taken)
    assert len({t.casefold() for t in taken}) == len(taken)


def _graph():
    return Graph(inputs={"image": (1, 1, 2)}, nodes={}, outputs=[],
                 source=SourceInfo(file="m.h5", digest="0" * 64, keras_version="3", flavour="keras3-h5"))


NASTY = ["a/b", "a_b", "..", ".", "Conv", "conv", "CONV", "café", "卷积", "层一", "../../escape", "/abs", ""]


def test_nasty_names_get_distinct_safe_files_inside_out(tmp_path):
    rng = np.random.default_rng(0)
    entries, arrays = [], {}
    for i, name in enumerate(NASTY):
        w, b = rng.normal(size=(3, 1, 1, 2)).astype(np.float32), rng.normal(size=3).astype(np.float32)
        arrays[name] = (w, b)
        entries.append(Entry({"name": name, "type": "conv2d", "inputs": ["image"]},
                             {"weights": Tensor(w, "OHWI"), "bias": Tensor(b)}))
    out = tmp_path / "deep" / "out"
    manifest = write_export(out, _graph(), entries)
    assert _files(tmp_path) == ["deep"] and _files(tmp_path / "deep") == ["out"]   # nothing escaped
    files = [e[k]["file"] for e in manifest["layers"] for k in ("weights", "bias")]
    assert len(set(files)) == len(files) == 2 * len(NASTY)
    assert len({f.casefold() for f in files}) == len(files)
    assert sorted(files + ["manifest.json"]) == _files(out)
    for e in manifest["layers"]:
        w, b = arrays[e["name"]]
        assert SAFE.match(e["weights"]["file"]) and e["weights"]["file"].endswith("_W.bin")
        assert e["bias"]["file"] == e["weights"]["file"][:-6] + "_b.bin"
        np.testing.assert_array_equal(np.fromfile(out / e["weights"]["file"], "<f4").reshape(w.shape), w)
        np.testing.assert_array_equal(np.fromfile(out / e["bias"]["file"], "<f4"), b)
    assert [e["name"] for e in manifest["layers"]] == NASTY and read_manifest(out) == manifest


def test_keras_names_end_to_end(small_model, tmp_path):
    names = ("Conv", "conv", "..", ".", "café", "a.b")
    _, path = small_model(small.named, "keras", names=names)
    manifest = export(path, tmp_path / "out").manifest
    assert [e["name"] for e in manifest["layers"]] == list(names)
    files = [e[k]["file"] for e in manifest["layers"] for k in ("weights", "bias")]
    assert len({f.casefold() for f in files}) == len(files) == 12
    assert sorted(files + ["manifest.json"]) == _files(tmp_path / "out")
    assert manifest["layers"][-1]["weights"]["file"] == "a.b_W.bin"


def test_sha256_and_nothing_else_in_out(tiny_yolo_export):
    m = read_manifest(tiny_yolo_export)
    listed = set()
    for e in m["layers"]:
        for key in ("weights", "bias"):
            if key in e:
                data = (tiny_yolo_export / e[key]["file"]).read_bytes()
                assert hashlib.sha256(data).hexdigest() == e[key]["sha256"]
                assert len(data) == 4 * int(np.prod(e[key]["shape"]))
                listed.add(e[key]["file"])
    assert set(_files(tiny_yolo_export)) == listed | {"manifest.json"}
    assert len(listed) == 18


def test_rerun_is_byte_identical(tiny_yolo, tiny_yolo_export, tmp_path):
    fresh = tmp_path / "again"
    assert export_main([str(tiny_yolo["keras2-h5"]), str(fresh), "-q"]) == 0
    first = snapshot(tiny_yolo_export)
    assert snapshot(fresh) == first
    assert export_main([str(tiny_yolo["keras2-h5"]), str(fresh), "-q"]) == 0    # replacing itself
    assert snapshot(fresh) == first


def test_forge_names(tiny_yolo, tmp_path):
    out = tmp_path / "forge"
    assert export_main([str(tiny_yolo["keras2-h5"]), str(out), "--forge-names", "-q"]) == 0
    layers = read_manifest(out)["layers"]
    convs = [e for e in layers if e["type"] == "conv2d"]
    assert [e["name"] for e in convs] == [f"conv2d_{i}" for i in range(1, 10)]
    assert [e["weights"]["file"] for e in convs] == [f"conv{i}_W.bin" for i in range(1, 10)]
    assert [e["bias"]["file"] for e in convs] == [f"conv{i}_b.bin" for i in range(1, 10)]
    assert _files(out) == sorted(["manifest.json"] + [f"conv{i}_{s}.bin" for i in range(1, 10) for s in "Wb"])


def test_forge_names_same_bytes_as_default(tiny_yolo, tiny_yolo_export, tmp_path):
    out = tmp_path / "forge"
    assert export_main([str(tiny_yolo["keras2-h5"]), str(out), "--forge-names", "-q"]) == 0
    for i in range(1, 10):
        for s in "Wb":
            assert (out / f"conv{i}_{s}.bin").read_bytes() == (tiny_yolo_export / f"conv2d_{i}_{s}.bin").read_bytes()


def test_successful_export_replaces_out_as_a_whole(tiny_yolo_export, small_model, tmp_path):
    """Files of the previous export that the new one does not write are gone."""
    out = copy_tree(tiny_yolo_export, tmp_path / "out")
    _, path = small_model(small.conv_bn_act)
    export(path, out)
    assert _files(out) == ["conv_W.bin", "conv_b.bin", "head_W.bin", "head_b.bin", "manifest.json"]
    assert _files(tmp_path) == ["out"]                                   # no staging left


@pytest.mark.parametrize("bad", ["truncated", "nan"])
def test_failed_export_leaves_previous_out(previous, tiny_yolo, tmp_path, bad):
    import h5py
    out, before = previous
    model = tmp_path / "bad.h5"
    data = tiny_yolo["keras2-h5"].read_bytes()
    if bad == "truncated":
        model.write_bytes(data[: len(data) // 2])
    else:
        model.write_bytes(data)
        with h5py.File(model, "r+") as f:
            d = f["model_weights/conv2d_9/conv2d_9/kernel:0"]
            arr = d[()]
            arr[0, 0, 7, 3] = np.nan
            d[...] = arr
    assert export_main([str(model), str(out), "-q"]) == 2
    assert snapshot(out) == before
    assert _files(tmp_path) == ["bad.h5", "out"]


def test_failure_while_writing_leaves_previous_out(previous, tiny_yolo, tmp_path, monkeypatch):
    """An error in the middle of writing files: OUT keeps the previous export, no staging left."""
    import kerasfold.targets.mps.files as files
    from kerasfold.errors import ExportError
    out, before = previous
    real, calls = files._put, []

    def failing(f, digest, data):                # the writing thread's fifth block
        calls.append(f.name)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(f, digest, data)
    monkeypatch.setattr(files, "_put", failing)
    with pytest.raises(ExportError, match="No space left"):
        export(tiny_yolo["keras2-h5"], out)
    assert len(calls) >= 5
    assert snapshot(out) == before
    assert _files(tmp_path) == ["out"]


def test_a_failed_sync_of_a_finished_file_fails_the_export(previous, tiny_yolo, tmp_path, monkeypatch):
    """Files are synced as they are finished, beside the export; an fsync error is reported once
    by the kernel, so that sync's error is the export's: OUT keeps the previous export."""
    import errno

    import kerasfold.targets.mps.files as files
    from kerasfold.errors import ExportError
    out, before = previous
    real, synced = files.os.fsync, []

    def fsync(fd):
        synced.append(fd)
        if len(synced) == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)
    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(ExportError, match="Input/output error"):
        export(tiny_yolo["keras2-h5"], out)
    assert len(synced) >= 3
    assert snapshot(out) == before
    assert _files(tmp_path) == ["out"]


def _refused(proc, out, before):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and str(out) in lines[0]
    assert snapshot(out) == before if out.is_dir() else out.read_bytes() == before


def test_out_with_other_files_is_refused(small_model, tmp_path):
    _, model = small_model(small.conv_bn_act)
    out = tmp_path / "project"
    (out / "src").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "src" / "main.swift").write_text("print(1)")
    before = snapshot(out)
    proc = run_module("kerasfold.yolo2metal", model, out)
    _refused(proc, out, before)
    assert "refusing to replace" in proc.stderr


@pytest.mark.parametrize("case", ["foreign_manifest", "previous_export_plus_user_file"])
def test_out_holding_more_than_an_export_is_refused(small_model, small_export, tmp_path, case):
    """A manifest.json alone does not make a directory a previous export: a web project's
    manifest.json, or an export into which the user has put other files (the model itself, say),
    must not be replaced (deleted) as a whole."""
    _, model = small_model(small.conv_bn_act)
    if case == "foreign_manifest":
        out = tmp_path / "webapp"
        out.mkdir()
        (out / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
        (out / "index.html").write_text("<html></html>")
    else:
        out = copy_tree(small_export, tmp_path / "out")
        (out / "model.keras").write_bytes(model.read_bytes())
    before = snapshot(out)
    _refused(run_module("kerasfold.yolo2metal", model, out), out, before)


def test_out_that_is_a_file_is_refused(small_model, tmp_path):
    _, model = small_model(small.conv_bn_act)
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    proc = run_module("kerasfold.yolo2metal", model, out)
    _refused(proc, out, b"keep me")
    assert "directory" in proc.stderr


def test_out_in_an_unwritable_parent(previous, small_model, tmp_path):
    out, before = previous
    _, model = small_model(small.conv_bn_act)
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as a user that can write to a 0o500 directory (root)")
        proc = run_module("kerasfold.yolo2metal", model, out)
    finally:
        os.chmod(tmp_path, 0o700)
    _refused(proc, out, before)
    assert "writable" in proc.stderr


def test_out_permissions_follow_the_umask(small_model, tmp_path):
    """OUT is created as ``mkdir`` would create it (0o777 & ~umask), not with the staging
    directory's private 0o700: a loader, web server or CI uploader running as another user
    must be able to read the export."""
    _, model = small_model(small.conv_bn_act)
    umask = os.umask(0o022)
    os.umask(umask)
    out = tmp_path / "out"
    export(model, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask


def test_out_that_is_a_symlink_to_a_previous_export(small_model, small_export, tmp_path):
    """OUT a symlink to a previous export: either the export goes through the link (exit 0, the
    link still a link, its target holding the new export) or it is refused (exit 2) with the
    link and its target untouched. Never a half-done swap with litter left beside OUT."""
    _, model = small_model(small.conv_bn_act, channels=6)
    target = copy_tree(small_export, tmp_path / "real")
    link = tmp_path / "out"
    link.symlink_to(target, target_is_directory=True)
    before = snapshot(target)
    proc = run_module("kerasfold.yolo2metal", model, link)
    assert proc.returncode in (0, 2), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "real"]       # nothing left beside
    assert link.is_symlink() and link.resolve() == target.resolve()
    if proc.returncode == 0:
        assert read_manifest(target)["layers"][0]["weights"]["shape"][0] == 6
    else:
        assert snapshot(target) == before


def test_a_large_file_is_synced_while_it_is_written(tiny_yolo, tmp_path, monkeypatch):
    """A file's bytes so far are synced every SYNC_EVERY bytes, beside the writing, not all after
    its last block; the files are the same."""
    import kerasfold.targets.mps.files as files
    real, sizes = files._sync_early, []

    def sync_early(fd):
        sizes.append(os.fstat(fd).st_size)
        return real(fd)
    monkeypatch.setattr(files, "_sync_early", sync_early)
    monkeypatch.setattr(files, "SYNC_EVERY", 4 << 20)
    export(tiny_yolo["keras2-h5"], tmp_path / "early")
    largest = (tmp_path / "early" / "conv2d_8_W.bin").stat().st_size
    assert len(sizes) >= 5 and sum(0 < size < largest for size in sizes) >= 3
    monkeypatch.setattr(files, "SYNC_EVERY", 1 << 62)
    export(tiny_yolo["keras2-h5"], tmp_path / "late")
    assert snapshot(tmp_path / "early") == snapshot(tmp_path / "late")


def test_a_failed_early_sync_fails_the_export(previous, tiny_yolo, tmp_path, monkeypatch):
    import errno

    import kerasfold.targets.mps.files as files
    from kerasfold.errors import ExportError
    out, before = previous

    def fdatasync(fd):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(files.os, "fdatasync", fdatasync)
    with pytest.raises(ExportError, match="Input/output error"):
        export(tiny_yolo["keras2-h5"], out)
    assert snapshot(out) == before
    assert _files(tmp_path) == ["out"]
