"""An export's lazy read of a legacy .h5 runs in a forked child (readers.start_read,
hdf5.ReadBeside): the child walks the file as the probe does, reads the model with its kernels
left in the file, and hashes the file; this process only opens the file for the kernels. What it
gives must be what the read here gives, and every way the child can fail must end as the read here
would (the same error line, or the work done here)."""
from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import numpy as np
import pytest

from kerasfold import forked, readers
from kerasfold.deferred import Deferred
from kerasfold.errors import ExportError
from kerasfold.readers import hdf5
from models import small


@pytest.fixture
def beside(monkeypatch):
    """The child path, whatever threads the session runs; every kernel deferred."""
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    monkeypatch.setattr(forked, "can_fork", lambda: True)
    monkeypatch.setattr(readers, "can_fork", lambda: True)
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", 0)


def _here(path, monkeypatch):
    monkeypatch.setattr(readers, "can_fork", lambda: False)
    reading = readers.start_read(path, lazy=True)
    assert type(reading) is readers.Reading
    model = reading.result()
    monkeypatch.setattr(readers, "can_fork", lambda: True)
    return model


def _in_child(path):
    reading = readers.start_read(path, lazy=True)
    assert isinstance(reading, readers._ReadingBeside)
    return reading, reading.result()


def _values(model):
    return {(n.name, key): np.asarray(w) for n in model for key, w in n.weights.items()}


@pytest.mark.parametrize("case", ["tiny-yolo keras2-h5", "tiny-yolo keras3-h5", "shared conv"])
def test_the_childs_read_is_the_read_here(case, beside, tiny_yolo, small_model, monkeypatch):
    path = (tiny_yolo[case.split()[1]] if case.startswith("tiny") else small_model(small.shared_conv, "keras3-h5")[1])
    here = _here(path, monkeypatch)
    reading, child = _in_child(path)
    try:
        assert [(n.name, n.kind, n.config, n.inputs, n.layer) for n in child] == \
            [(n.name, n.kind, n.config, n.inputs, n.layer) for n in here]
        assert (child.inputs, child.outputs) == (here.inputs, here.outputs)
        deferred = [(n.name, k) for n in child for k, w in n.weights.items() if isinstance(w, Deferred)]
        assert deferred and deferred == [(n.name, k) for n in here for k, w in n.weights.items()
                                         if isinstance(w, Deferred)]
        got, want = _values(child), _values(here)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        shared = [n for n in child if n.name != n.layer]             # a layer called twice
        assert all(n.weights is child[n.layer].weights for n in shared)
        assert (child.source.file, child.source.keras_version, child.source.flavour) == \
            (here.source.file, here.source.keras_version, here.source.flavour)
        assert child.source.sha256 == here.source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        child.close()
        here.close()


def test_this_process_walks_and_reads_no_hdf5_structure(beside, tiny_yolo, monkeypatch):
    parent = os.getpid()
    real_structure, real_walk = readers.h5_structure, hdf5._walk

    def only_in_the_child(real):
        def call(*args, **kwargs):
            assert os.getpid() != parent, "the parent walked or read the file's structure"
            return real(*args, **kwargs)
        return call
    monkeypatch.setattr(readers, "h5_structure", only_in_the_child(real_structure))
    monkeypatch.setattr(hdf5, "_walk", only_in_the_child(real_walk))
    threads = threading.active_count()
    reading, model = _in_child(tiny_yolo["keras2-h5"])
    assert threading.active_count() == threads                      # no hashing thread: the child hashes
    assert model.source.sha256 == hashlib.sha256(tiny_yolo["keras2-h5"].read_bytes()).hexdigest()
    model.close()


def test_an_error_of_the_childs_read_is_the_line_of_the_read_here(beside, tmp_path, monkeypatch):
    import h5py
    path = tmp_path / "weights-only.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.zeros((256, 1024), np.float32)
    lines = []
    for fork in (False, True):
        monkeypatch.setattr(readers, "can_fork", lambda fork=fork: fork)
        with pytest.raises(ExportError, match="weights-only") as caught:
            readers.read_model(path, lazy=True)
        lines.append(str(caught.value))
    assert lines[0] == lines[1] and lines[0].startswith(str(path))


def test_a_read_that_hangs_in_the_child_is_refused_after_the_deadline(beside, tiny_yolo, monkeypatch):
    monkeypatch.setattr(hdf5, "PROBE_SECONDS", 0.3)
    monkeypatch.setattr(readers, "h5_structure", lambda f, lazy: time.sleep(60))
    start = time.monotonic()
    with pytest.raises(ExportError, match="reading does not end"):
        readers.read_model(tiny_yolo["keras2-h5"], lazy=True)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("how", ["hangs", "crashes"])
def test_a_walk_that_hangs_or_crashes_fails_the_hash_and_any_h5py_read(how, beside, tiny_yolo, monkeypatch):
    """When a kernel will be read through h5py, the child walks the file after sending the model:
    the walk's verdict comes with the hash (which the manifest needs), and before any kernel is
    read through the HDF5 library."""
    monkeypatch.setattr(hdf5, "PROBE_SECONDS", 0.3)
    if how == "hangs":
        monkeypatch.setattr(hdf5, "_walk", lambda f: time.sleep(60))
    else:
        monkeypatch.setattr(hdf5, "_walk", lambda f: os.kill(os.getpid(), signal.SIGSEGV))
    message = "reading does not end" if how == "hangs" else "crashes the HDF5 library"
    monkeypatch.setattr(readers, "_raw_offset", lambda dataset: None)   # as a chunked kernel: h5py reads it
    reading, model = _in_child(tiny_yolo["keras2-h5"])
    kernel = next(w for n in model for w in n.weights.values() if isinstance(w, Deferred))
    try:
        with pytest.raises(ExportError, match=message):
            kernel.read()
        with pytest.raises(ExportError, match=message) as caught:
            model.source.sha256
        assert str(caught.value).startswith(f"{tiny_yolo['keras2-h5']}: ")
    finally:
        model.close()


def test_a_file_read_as_bytes_is_not_walked(beside, tiny_yolo, monkeypatch):
    """Every kernel read at its offset: this process never calls the HDF5 library, so the child
    does not walk the file (a walk that would hang is never started); the hash is the file's."""
    path = tiny_yolo["keras2-h5"]
    monkeypatch.setattr(hdf5, "PROBE_SECONDS", 2.0)
    monkeypatch.setattr(hdf5, "_walk", lambda f: time.sleep(60))
    start = time.monotonic()
    reading, model = _in_child(path)
    try:
        kernel = next(w for n in model for w in n.weights.values() if isinstance(w, Deferred))
        assert kernel.read().shape == kernel.stored[0]
        assert model.source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        model.close()
    assert time.monotonic() - start < 2.0


def test_a_read_that_crashes_the_child_is_refused(beside, tiny_yolo, monkeypatch):
    parent = os.getpid()

    def crash(*args, **kwargs):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGSEGV)
    monkeypatch.setattr(readers, "h5_structure", crash)
    with pytest.raises(ExportError, match="crashes the HDF5 library"):
        readers.read_model(tiny_yolo["keras2-h5"], lazy=True)


def test_a_bug_in_the_childs_read_is_raised_here_with_its_trace(beside, tiny_yolo, monkeypatch):
    parent = os.getpid()

    def bug(*args, **kwargs):
        raise ValueError(f"a bug, raised in {'the child' if os.getpid() != parent else 'this process'}")
    monkeypatch.setattr(readers, "h5_structure", bug)
    with pytest.raises(ValueError, match="raised in this process"):
        readers.read_model(tiny_yolo["keras2-h5"], lazy=True)


def test_a_hash_the_child_could_not_send_is_computed_here(beside, tiny_yolo, monkeypatch):
    parent = os.getpid()
    real = readers._sha256_at

    def dies(path):
        if os.getpid() != parent:
            os._exit(3)
        return real(path)
    monkeypatch.setattr(readers, "_sha256_at", dies)
    reading, model = _in_child(tiny_yolo["keras2-h5"])
    assert model.source.sha256 == hashlib.sha256(tiny_yolo["keras2-h5"].read_bytes()).hexdigest()
    model.close()


def test_the_childs_hashing_error_names_the_file(beside, tiny_yolo, monkeypatch):
    parent = os.getpid()

    def damaged(path):
        assert os.getpid() != parent
        raise ExportError("expected a readable model file, received a damaged or truncated one (OSError: EIO)")
    monkeypatch.setattr(readers, "_sha256_at", damaged)
    reading, model = _in_child(tiny_yolo["keras2-h5"])
    with pytest.raises(ExportError) as caught:
        model.source.sha256
    assert str(caught.value) == (f"{tiny_yolo['keras2-h5']}: expected a readable model file, received a "
                                 "damaged or truncated one (OSError: EIO)")
    model.close()


def test_closing_the_model_stops_and_reaps_the_child(beside, tiny_yolo, monkeypatch):
    monkeypatch.setattr(readers, "_sha256_at", lambda path: time.sleep(60))     # still hashing at close
    reading, model = _in_child(tiny_yolo["keras2-h5"])
    pid = reading.child._pid
    start = time.monotonic()
    model.close()
    assert time.monotonic() - start < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_read_given_up_before_its_result_reaps_the_child(beside, tiny_yolo):
    reading = readers.start_read(tiny_yolo["keras2-h5"], lazy=True)
    pid = reading.child._pid
    reading.cancel()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@pytest.mark.parametrize("storage", ["contiguous", "chunked", "compressed"])
def test_kernels_read_as_bytes_or_through_h5py_equal_h5pys_values(storage, tmp_path):
    """A contiguous kernel is read as the file's bytes at its offset; a chunked or compressed one
    (no offset) through h5py; both give what h5py gives."""
    import h5py
    path = tmp_path / "k.h5"
    values = np.random.default_rng(1).standard_normal((3, 3, 64, 128)).astype(np.float32)
    options = {"contiguous": {}, "chunked": {"chunks": (3, 3, 16, 32)},
               "compressed": {"chunks": (3, 3, 16, 32), "compression": "gzip"}}[storage]
    with h5py.File(path, "w") as f:
        f.create_dataset("g/kernel", data=values, **options)
        offset = readers._raw_offset(f["g/kernel"])
    assert (offset is not None) == (storage == "contiguous")
    kernels = readers.Kernels(path)
    try:
        got = kernels.value(readers.Stored("/g/kernel", values.shape, values.dtype, offset))
    finally:
        kernels.close()
    np.testing.assert_array_equal(got, values)


def test_a_kernel_cut_short_is_the_damaged_file_line(tiny_yolo, tmp_path, beside):
    """The file shrinks after the read (its kernels' bytes are read later): one line, exit 2's."""
    path = tmp_path / "m.h5"
    path.write_bytes(tiny_yolo["keras2-h5"].read_bytes())
    reading, model = _in_child(path)
    try:
        kernel = max((w for n in model for w in n.weights.values() if isinstance(w, Deferred)), key=lambda w: w.size)
        with open(path, "r+b") as f:
            f.truncate(kernel.stored[1].itemsize * kernel.size // 2)
        with pytest.raises(ExportError) as caught:
            kernel.read()
        assert str(caught.value).startswith(f"{path}: expected a readable model file, received a damaged or "
                                            "truncated one (EOFError: ")
    finally:
        model.close()


@pytest.mark.parametrize("hash_child", ["answers", "dies"])
def test_a_hash_started_before_the_read_is_the_sources(hash_child, beside, tiny_yolo, monkeypatch):
    """The command line hashes the model in a child of its own before it imports numpy; the
    reading child then does not hash it, and a hash child that died has its work done here."""
    from kerasfold.digest import file_sha256
    path = tiny_yolo["keras2-h5"]
    parent = os.getpid()

    def dies(p):
        if os.getpid() != parent:
            os._exit(3)
        return file_sha256(p)
    hashed = forked.beside(file_sha256 if hash_child == "answers" else dies, path)
    monkeypatch.setattr(readers, "_sha256_at", lambda p: "0" * 64)      # the reading child must not hash
    reading = readers.start_read(path, lazy=True, hashed=hashed)
    model = reading.result()
    try:
        assert model.source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        model.close()
        hashed.cancel()


def test_a_model_file_that_cannot_be_opened_is_one_line(tiny_yolo, monkeypatch):
    """An unreadable file (permissions, an I/O error) is bad input, not a bug (it was exit 3)."""
    from pathlib import Path
    path = tiny_yolo["keras2-h5"]
    real = Path.open

    def denied(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ExportError) as caught:
        readers.start_read(path, lazy=True)
    assert str(caught.value) == (f"{path}: expected a readable model file, received one that cannot be "
                                 "read (PermissionError: Permission denied)")


def _read_in_a_child(kernels, stored):
    value = kernels.value(stored)
    return value.tobytes(), kernels._pid == os.getpid()


def test_kernels_read_in_a_forked_writer_open_their_own_file(tmp_path, beside):
    """A second writing process reads kernels through the Kernels it inherited: with its own file
    handle, at positions (no file offset shared with this process)."""
    import h5py
    path = tmp_path / "k.h5"
    values = np.random.default_rng(2).standard_normal((3, 3, 64, 128)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("g/kernel", data=values)
        offset = readers._raw_offset(f["g/kernel"])
    stored = readers.Stored("/g/kernel", values.shape, values.dtype, offset)
    kernels = readers.Kernels(path)
    try:
        kernels.value(stored)                           # this process's handle is open
        got, own = forked.beside(_read_in_a_child, kernels, stored, nice=0).result()
    finally:
        kernels.close()
    assert got == values.tobytes() and own


def _mapped_in_a_child(kernels, stored, cut, unmappable=False):
    if cut:                                             # the file no longer holds the kernel whole
        os.truncate(kernels.path, stored.offset + 100)
    if unmappable:                                      # a file system that refuses mmap (ENODEV)
        import mmap

        def refuse(*args, **kwargs):
            raise OSError(19, "No such device")
        mmap.mmap = refuse
    view = kernels.mapped(stored)
    return None if view is None else (view.tobytes(), view.flags.owndata, view.flags.writeable)


def _kernel_file(path):
    import h5py
    values = np.random.default_rng(3).standard_normal((3, 3, 32, 64)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("g/kernel", data=values)
        offset = readers._raw_offset(f["g/kernel"])
    return values, readers.Stored("/g/kernel", values.shape, values.dtype, offset)


def test_a_forked_writer_maps_the_file_and_this_process_does_not(tmp_path, beside):
    """A second writer reads kernels as read-only views of the mapped file (no copy, no fresh
    memory); the process that read the model never maps it (a file cut short under a mapping
    ends the process by SIGBUS: only a child may risk it), nor does a child map a kernel the
    file no longer holds whole, or a file its file system will not map (it reads those)."""
    values, stored = _kernel_file(tmp_path / "k.h5")
    kernels = readers.Kernels(tmp_path / "k.h5")
    try:
        assert kernels.mapped(stored) is None
        got, owns, writeable = forked.beside(_mapped_in_a_child, kernels, stored, False, nice=0).result()
        assert got == values.tobytes() and not owns and not writeable
        assert forked.beside(_mapped_in_a_child, kernels, stored, False, True, nice=0).result() is None
        assert forked.beside(_mapped_in_a_child, kernels, stored, True, nice=0).result() is None
    finally:
        kernels.close()


def test_a_second_writer_killed_by_sigbus_has_its_share_written_here(tmp_path, monkeypatch):
    """A file cut short while a second writer reads it mapped kills that writer by SIGBUS: its
    share is then written by this process, with plain reads (here the file is whole again: the
    same files as one writer gives)."""
    from models.small import build
    from test_streaming import _split_export
    path = tmp_path / "m.h5"
    build(small.conv_bn_act, 0).save(path)
    monkeypatch.setattr(readers, "can_fork", lambda: True)
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", 0)
    one, _, _ = _split_export(path, tmp_path / "one", "float32", False, monkeypatch)
    real, reader, hit = readers.Kernels.mapped, os.getpid(), tmp_path / "sigbus"

    def mapped(self, stored):
        if os.getpid() != reader:
            hit.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGBUS)
        return real(self, stored)
    monkeypatch.setattr(readers.Kernels, "mapped", mapped)
    two, _, second_wrote = _split_export(path, tmp_path / "two", "float32", True, monkeypatch)
    assert hit.exists() and int(hit.read_text()) != reader
    assert not second_wrote and two == one                # its share written by this process


def test_the_exporting_process_never_imports_h5py(tiny_yolo, tmp_path):
    """The command line's process leaves h5py (~60 ms to import) to the reading child when every
    kernel lies plainly in the file; kernels stored chunked are read through h5py, imported then,
    to the same files."""
    import subprocess
    import sys
    from conftest import ROOT
    import h5py
    chunked = tmp_path / "chunked.h5"
    chunked.write_bytes(tiny_yolo["keras2-h5"].read_bytes())
    with h5py.File(chunked, "r+") as f:                   # every kernel rewritten chunked
        for group in f["model_weights"].values():
            for name in [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("weight_names", [])]:
                if "kernel" in name:
                    values = group[name][()]
                    del group[name]
                    group.create_dataset(name, data=values, chunks=tuple(max(1, d // 2) for d in values.shape))
    code = ("import sys\nfrom kerasfold.yolo2metal import main\n"
            "code = main([sys.argv[1], sys.argv[2], '-q'])\nprint(code, 'h5py' in sys.modules)\n")
    seen = {}
    for case, model in (("plain", tiny_yolo["keras2-h5"]), ("chunked", chunked)):
        done = subprocess.run([sys.executable, "-c", code, str(model), str(tmp_path / case)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0 and done.stderr == "", done.stderr
        seen[case] = done.stdout.split()
    assert seen == {"plain": ["0", "False"], "chunked": ["0", "True"]}
    files = sorted(p.name for p in (tmp_path / "plain").glob("*.bin"))
    assert "conv2d_8_W.bin" in files and files == sorted(p.name for p in (tmp_path / "chunked").glob("*.bin"))
    for file in files:
        assert (tmp_path / "plain" / file).read_bytes() == (tmp_path / "chunked" / file).read_bytes(), file
