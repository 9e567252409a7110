"""Issue 11: a plain export streams. A legacy .h5's kernels stay in the file (kerasfold.deferred)
until the writer reads, folds, lays out and rounds each in one tiled pass; the files must be the
bytes the whole-model export writes, bad weights must give the same one line, and memory must
hold about one layer, not the model."""
import gc
import hashlib
import json
import os
import tracemalloc

import h5py
import numpy as np
import pytest

import kerasfold.readers as readers
from conftest import ROOT, run_module, snapshot
from kerasfold.deferred import Deferred, checked, multiply64
from kerasfold.errors import ExportError
from kerasfold.pipeline import ExportOptions, export
from kerasfold.readers import read_model
from models.small import build, conv1d_bn, conv_bn_act, shared_conv

RNG = np.random.default_rng(11)


def _depthwise(k):
    x = inp = k.Input((9, 9, 4))
    x = k.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = k.layers.BatchNormalization(name="bn")(x)
    return k.Model(inp, k.layers.ReLU(6.0)(x))


def _separable(k):
    x = inp = k.Input((10, 10, 3))
    x = k.layers.SeparableConv2D(5, 3, strides=2, padding="same", depth_multiplier=2, name="sep")(x)
    x = k.layers.BatchNormalization(name="bn")(x)
    return k.Model(inp, k.layers.LeakyReLU(0.2)(x))


def _dense(k):
    x = inp = k.Input((4, 4, 3))
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(7, use_bias=False, name="fc")(x)
    x = k.layers.BatchNormalization(name="bn")(x)
    return k.Model(inp, k.layers.Activation("sigmoid")(x))


def _transpose(k):
    x = inp = k.Input((5, 5, 3))
    x = k.layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")(x)
    x = k.layers.BatchNormalization(name="bn")(x)
    return k.Model(inp, k.layers.ReLU()(x))


def _bn_first(k):                      # BN before a valid conv: folded forward (the kernel is read whole)
    x = inp = k.Input((6, 6, 3))
    x = k.layers.BatchNormalization(name="bn")(x)
    x = k.layers.Conv2D(4, 3, padding="valid", name="conv")(x)
    return k.Model(inp, x)


def _grouped(k):
    x = inp = k.Input((8, 8, 4))
    x = k.layers.Conv2D(6, 3, padding="same", groups=2, dilation_rate=2, use_bias=False, name="conv")(x)
    x = k.layers.BatchNormalization(name="bn")(x)
    return k.Model(inp, k.layers.LeakyReLU(0.1)(x))


ARCHS = {"conv_bn_act": conv_bn_act, "conv1d_bn": conv1d_bn, "shared_conv": shared_conv, "depthwise": _depthwise,
         "separable": _separable, "dense": _dense, "transpose": _transpose, "bn_first": _bn_first,
         "grouped": _grouped}


def _save(arch, path, seed=0):
    model = build(arch, seed)
    model.save(path)                                   # Keras 3's legacy .h5
    return model


def _deferred(path):
    model = read_model(path, lazy=True)
    try:
        return sum(isinstance(w, Deferred) for layer in model for w in layer.weights.values())
    finally:
        model.close()


def _export_files(path, out, dtype, min_bytes, monkeypatch):
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", min_bytes)
    result = export(path, out, ExportOptions(dtype=dtype))
    return snapshot(out), result


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_streamed_files_are_the_whole_model_exports_bytes(name, dtype, tmp_path, monkeypatch):
    path = tmp_path / "m.h5"
    _save(ARCHS[name], path)
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", 0)
    assert _deferred(path) > 0                         # every kernel deferred: the path under test runs
    whole, whole_result = _export_files(path, tmp_path / "whole", dtype, 1 << 62, monkeypatch)
    streamed, streamed_result = _export_files(path, tmp_path / "streamed", dtype, 0, monkeypatch)
    assert streamed == whole
    assert json.loads(streamed["manifest.json"])["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [h.line() for h in streamed_result.half] == [h.line() for h in whole_result.half]
    if dtype == "float16":
        assert streamed_result.half                    # float16 stats were computed for the deferred ones


def test_the_model_file_is_closed_after_an_export(tmp_path, monkeypatch):
    path = tmp_path / "m.h5"
    _save(conv_bn_act, path)
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", 0)
    export(path, tmp_path / "out")
    with pytest.raises(ExportError):
        export(path, path)                             # OUT is a file: refused after the read
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
             if os.path.exists(f"/proc/self/fd/{fd}")]
    assert str(path) not in links


def _weight_name(group, variable):
    """The dataset of ``group`` (a layer's in model_weights) whose name holds ``variable``."""
    names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
    return next(n for n in names if variable in n)


def _edit_kernel(path, layer, change):
    with h5py.File(path, "r+") as f:
        group = f["model_weights"][layer]
        name = _weight_name(group, "kernel")
        data = np.asarray(group[name][()])
        group[name][...] = change(data)


def _edit_bn(path, layer, variable, value):
    with h5py.File(path, "r+") as f:
        group = f["model_weights"][layer]
        group[_weight_name(group, variable)][...] = value


def _nan_kernel(path):
    _edit_kernel(path, "conv", lambda w: np.where(np.arange(w.size).reshape(w.shape) % 7 == 0, np.nan, w))


def _huge_fold(path):                                  # finite weights whose fold leaves float32
    _edit_kernel(path, "conv", lambda w: np.full_like(w, 3e38))
    _edit_bn(path, "bn", "gamma", 10.0)
    _edit_bn(path, "bn", "moving_variance", 0.0)


def _half_overflow(path):                              # within float32, beyond float16
    _edit_kernel(path, "conv", lambda w: w * 1e6)


@pytest.mark.parametrize("arch,damage,dtype", [
    (conv_bn_act, _nan_kernel, "float32"), (conv_bn_act, _nan_kernel, "float16"), (conv_bn_act, _huge_fold, "float32"),
    (conv_bn_act, _huge_fold, "float16"), (conv_bn_act, _half_overflow, "float16"),
    (_bn_first, _nan_kernel, "float32"),               # folded forward: the kernel is read by the pass
])
def test_bad_weights_give_the_whole_model_exports_error(arch, damage, dtype, tmp_path, monkeypatch, previous):
    path = tmp_path / "m.h5"
    _save(arch, path)
    damage(path)
    out, before = previous
    errors = []
    for min_bytes in (1 << 62, 0):
        monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", min_bytes)
        with pytest.raises(ExportError) as err:
            export(path, out, ExportOptions(dtype=dtype))
        errors.append(str(err.value))
        assert snapshot(out) == before                 # OUT as it was
    assert errors[1] == errors[0]
    assert str(path) in errors[0] and "layer '" in errors[0]
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []   # no staging left


def test_a_kernel_damaged_on_disk_is_one_line_and_out_is_kept(tiny_yolo, tmp_path, previous):
    """A compressed kernel whose chunk is damaged reads only when written: exit 2, one line."""
    path = tmp_path / "damaged.h5"
    path.write_bytes(tiny_yolo["keras2-h5"].read_bytes())
    with h5py.File(path, "r+") as f:
        group = f["model_weights"]["conv2d_9"]
        name = next(n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"])
        kernel = np.asarray(group[name][()])
        del group[name]
        group.create_dataset(name, data=kernel, chunks=kernel.shape, compression="gzip")
        offset = group[name].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as f:
        f.seek(offset + 64)
        f.write(bytes(range(256)) * 16)
    out, before = previous
    proc = run_module("kerasfold.yolo2metal", str(path), str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "expected a readable" in lines[0] and str(path) in lines[0], proc.stderr
    assert snapshot(out) == before


def _big(k):
    x = inp = k.Input((2, 2, 1024))
    for i in range(6):
        x = k.layers.Conv2D(1024, 1, use_bias=False, name=f"conv{i}")(x)
        x = k.layers.BatchNormalization(name=f"bn{i}")(x)
        x = k.layers.LeakyReLU(0.1)(x)
    return k.Model(inp, x)


def _peak(path, out):
    gc.collect()
    tracemalloc.start()
    try:
        export(path, out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_streamed_export_holds_about_one_layer(tmp_path, monkeypatch):
    path = tmp_path / "big.h5"
    _save(_big, path)
    layer = 1024 * 1024 * 4                            # 4.2 MB a kernel, 25 MB the model
    streamed = _peak(path, tmp_path / "a")
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", 1 << 62)
    whole = _peak(path, tmp_path / "b")
    assert whole > 6 * layer                           # the measure sees every kernel held at once
    # the kernel being written, read whole, and a few blocks of 128 output channels (0.5 MB)
    assert streamed < 1.75 * layer, (streamed / layer, whole / layer)   # a whole laid-out copy: 2+


def test_deferred_steps_are_numpys():
    a = RNG.normal(size=(3, 2, 4, 5)).astype(np.float32)
    d = Deferred(lambda: a, a.shape, a.dtype)
    s = RNG.normal(size=5)
    cases = [
        (d.transpose(3, 0, 1, 2), a.transpose(3, 0, 1, 2)),
        (d.T, a.T),
        (d[None], a[None]),
        (d.reshape(3, 2, 20), a.reshape(3, 2, 20)),
        (multiply64(d, s.reshape(1, 1, 1, 5)).transpose(3, 0, 1, 2),
         np.multiply(a, s.reshape(1, 1, 1, 5), dtype=np.float64).transpose(3, 0, 1, 2)),
        (multiply64(d.reshape(3, 2, 20), np.arange(20.0)).reshape(3, 2, 4, 5).transpose(2, 3, 0, 1).reshape(20, 3, 2),
         np.multiply(a.reshape(3, 2, 20), np.arange(20.0), dtype=np.float64).reshape(3, 2, 4, 5)
         .transpose(2, 3, 0, 1).reshape(20, 3, 2)),
    ]
    for lazy, eager in cases:
        assert lazy.shape == eager.shape and lazy.dtype == eager.dtype
        got = np.asarray(lazy)
        assert got.dtype == eager.dtype and got.tobytes() == np.ascontiguousarray(eager).tobytes()
    with pytest.raises(TypeError):
        d[0]


def test_deferred_checks_run_where_they_were_recorded():
    a = np.array([[1.0, 2.0], [3.0, np.inf]], np.float32)
    seen = []
    d = checked(Deferred(lambda: a, a.shape, a.dtype), lambda v: seen.append(("raw", v.dtype.name, v.shape)))
    d = checked(multiply64(d, np.array([2.0, 0.0])).T, lambda v: seen.append(("folded", v.dtype.name, v.shape)))
    assert seen == []                                  # recorded, not run
    values = d.run_checks()
    assert seen == [("raw", "float32", (2, 2)), ("folded", "float64", (2, 2))]
    assert np.isnan(values[1, 1]) and values[0, 1] == 6.0
    eager = np.ones(2)
    assert checked(eager, lambda v: seen.append("now")) is eager and seen[-1] == "now"


@pytest.mark.parametrize("shape,axes", [((3, 3, 300, 257), (3, 0, 1, 2)), ((1, 1, 1024, 125), (3, 0, 1, 2)),
                                        ((700, 300), (1, 0)), ((0, 3, 3, 4), (3, 0, 1, 2)), ((5,), (0,))])
@pytest.mark.parametrize("dtype", ["<f4", "<f2"])
def test_blocks_are_the_whole_files_bytes(shape, axes, dtype):
    from kerasfold.targets.mps.strips import slabs
    a = RNG.normal(size=shape).astype(np.float32)
    s = RNG.normal(size=shape[-1])
    a.flat[::17] = 0.0
    view, factor = a.transpose(axes), np.broadcast_to(s, a.shape).transpose(axes)
    with np.errstate(over="ignore"):
        product = np.multiply(a, s, dtype=np.float64).transpose(axes)
        for got, want, nonzero in [(slabs(view, dtype, factor, count=True), product, np.count_nonzero(product)),
                                   (slabs(view, dtype, count=True), view, np.count_nonzero(a))]:
            blocks = list(got)
            assert all(b.flags.c_contiguous and b.dtype == np.dtype(dtype) for b, _ in blocks)
            assert b"".join(b.tobytes() for b, _ in blocks) == np.ascontiguousarray(want, dtype).tobytes()
            assert sum(n for _, n in blocks) == nonzero


def test_blocks_never_point_into_the_reused_read_memory():
    """Kernels are read into one reused block of memory; a block the writer still holds (a layout
    that is the identity gives the read itself) must not change when the next kernel is read."""
    from kerasfold.deferred import Scratch
    from kerasfold.targets.mps.stream import FileTensor
    scratch = Scratch()
    first, second = (RNG.normal(size=(300, 10)).astype(np.float32) for _ in range(2))

    def stored(a):
        return Deferred(lambda: a.copy(), a.shape, a.dtype, read_into=lambda out: np.copyto(out, a))
    held = list(FileTensor(stored(first), "float32", "a", scratch).blocks())
    again = list(FileTensor(stored(second), "float32", "b", scratch).blocks())
    assert b"".join(b.tobytes() for b in held) == first.tobytes()
    assert b"".join(b.tobytes() for b in again) == second.tobytes()


@pytest.mark.parametrize("how", ["keras", "kept for verify"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernels_read_whole_take_the_same_pass(how, dtype, tmp_path, monkeypatch):
    """A .keras zip, or a read kept for --verify, is read whole; its large kernels go through the
    writer's fused pass as Deferred views of the arrays: same bytes, and the kept read unchanged."""
    import kerasfold.pipeline as pipeline
    path = tmp_path / ("m.keras" if how == "keras" else "m.h5")
    _save(_separable, path)
    remember = how == "kept for verify"
    outs = []
    for min_bytes in (1 << 62, 0):
        monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", min_bytes)
        export(path, tmp_path / f"out{min_bytes}", ExportOptions(dtype=dtype), remember=remember)
        outs.append(snapshot(tmp_path / f"out{min_bytes}"))
        deferred = sum(isinstance(w, Deferred) for layer in readers.with_deferred_kernels(read_model(path))
                       for w in layer.weights.values())
        assert deferred == (2 if min_bytes == 0 else 0)                      # depthwise and pointwise
    assert outs[0] == outs[1]
    if remember:
        kept = pipeline.read(path, reuse=True)
        assert all(isinstance(w, np.ndarray) for layer in kept for w in layer.weights.values())


def test_the_read_memory_is_allocated_once_at_the_largest_kernels_size():
    """Every deferred kernel is read into one block sized for the largest at once: growing it
    layer by layer faulted in fresh pages at each step."""
    from kerasfold.deferred import Scratch

    def kernel(shape):
        return Deferred(lambda: np.zeros(shape, np.float32), shape, np.dtype(np.float32),
                        read_into=lambda out: None)
    small, large = kernel((3, 3, 16, 32)), kernel((3, 3, 64, 128))
    scratch = Scratch([small, np.zeros(10), large, small])
    memory = scratch._memory
    assert memory.nbytes == large.size * 4
    for k in (small, large, small):
        view = scratch.array(*k.stored)
        assert view.shape == k.shape and np.shares_memory(view, memory)
    assert scratch._memory is memory


def _split_export(path, out, dtype, split, monkeypatch):
    """An export written by one process, or by two (every export big enough to split)."""
    from kerasfold import forked
    from kerasfold.targets.mps import writer
    monkeypatch.setattr(writer, "SPLIT_MIN_BYTES", 0 if split else 1 << 62)
    monkeypatch.setattr(writer, "can_fork", lambda: True)
    monkeypatch.setattr(forked, "can_fork", lambda: True)
    marker = out.parent / f"{out.name}-second-writer"
    real = writer._write_share

    def share(*args):
        marker.write_text(str(os.getpid()))
        return real(*args)
    monkeypatch.setattr(writer, "_write_share", share)
    result = export(path, out, ExportOptions(dtype=dtype))
    return snapshot(out), result.warnings(), marker.exists() and marker.read_text() != str(os.getpid())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", ["conv_bn_act", "shared_conv", "separable", "conv1d_bn"])
def test_an_export_written_by_two_processes_is_one_processs_bytes(name, dtype, tmp_path, monkeypatch):
    """A large export is written by two processes, each about half the bytes: the same files,
    manifest (hashes, float16 counts) and warnings as one process writes."""
    path = tmp_path / "m.h5"
    _save(ARCHS[name], path)
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", 0)
    one, one_warnings, forked_one = _split_export(path, tmp_path / "one", dtype, False, monkeypatch)
    two, two_warnings, forked_two = _split_export(path, tmp_path / "two", dtype, True, monkeypatch)
    assert (forked_one, forked_two) == (False, True)      # the second process wrote its share
    assert two == one and two_warnings == one_warnings


@pytest.mark.parametrize("layer", ["conv", "head"])
def test_a_bad_kernel_in_either_writers_share_is_the_same_line(layer, tmp_path, monkeypatch, previous):
    path = tmp_path / "m.h5"
    _save(conv_bn_act, path)
    _edit_kernel(path, layer, lambda w: np.where(np.arange(w.size).reshape(w.shape) % 7 == 0, np.nan, w))
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", 0)
    out, before = previous
    lines = []
    for split in (False, True):
        with pytest.raises(ExportError) as err:
            _split_export(path, out, "float32", split, monkeypatch)
        lines.append(str(err.value))
        assert snapshot(out) == before
    assert lines[1] == lines[0] and f"layer '{layer}'" in lines[0]
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []   # no staging left


def _chunk_kernel(path, layer):
    """``layer``'s kernel stored chunked: read through h5py, not as the file's bytes."""
    with h5py.File(path, "r+") as f:
        group = f["model_weights"][layer]
        name = _weight_name(group, "kernel")
        data = np.asarray(group[name][()])
        del group[name]
        group.create_dataset(name, data=data, chunks=tuple(max(1, d // 2) for d in data.shape))


@pytest.mark.parametrize("storage", ["plain", "chunked"])
def test_the_second_writer_waits_for_the_walk_only_for_a_kernel_read_through_h5py(storage, tmp_path, monkeypatch):
    """Kernels read as the file's bytes need no verdict on the file's walk: the second writer forks
    at once. A kernel read through h5py needs it, and a forked writer cannot ask the reading child:
    the walk is waited for first. Either way, the same files."""
    from kerasfold.readers import hdf5
    from kerasfold.targets.mps import writer
    path = tmp_path / "m.h5"
    _save(conv_bn_act, path)
    if storage == "chunked":
        _chunk_kernel(path, "head")
    monkeypatch.setattr(readers, "can_fork", lambda: True)
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", 0)
    events, real_walked, real_beside = [], hdf5.ReadBeside.walked, writer.beside

    def walked(self):
        events.append("walked")
        return real_walked(self)

    def beside(*args, **kwargs):
        events.append("fork")
        return real_beside(*args, **kwargs)
    monkeypatch.setattr(hdf5.ReadBeside, "walked", walked)
    monkeypatch.setattr(writer, "beside", beside)
    two, _, second_wrote = _split_export(path, tmp_path / "two", "float32", True, monkeypatch)
    one, _, _ = _split_export(path, tmp_path / "one", "float32", False, monkeypatch)
    assert second_wrote and two == one
    first = events.index("fork") < events.index("walked")
    assert first == (storage == "plain"), events


@pytest.mark.parametrize("how", ["hangs", "crashes"])
def test_a_walk_that_fails_keeps_out(how, tmp_path, monkeypatch, previous):
    """A kernel read through h5py makes the child walk the file: a file whose walk hangs or
    crashes is refused before OUT is touched, with the probe's line, no staging left. Read as
    bytes only, the same file is not walked, and exports."""
    import signal
    import time

    from kerasfold.readers import hdf5
    path = tmp_path / "m.h5"
    _save(conv_bn_act, path)
    monkeypatch.setattr(readers, "can_fork", lambda: True)
    monkeypatch.setattr(readers, "DEFERRED_MIN_BYTES", 0)
    monkeypatch.setattr(hdf5, "PROBE_SECONDS", 0.5)
    if how == "hangs":
        monkeypatch.setattr(hdf5, "_walk", lambda f: time.sleep(60))
    else:
        monkeypatch.setattr(hdf5, "_walk", lambda f: os.kill(os.getpid(), signal.SIGSEGV))
    files, _, _ = _split_export(path, tmp_path / "plain", "float32", True, monkeypatch)
    assert "manifest.json" in files
    _chunk_kernel(path, "head")
    out, before = previous
    with pytest.raises(ExportError, match="reading does not end" if how == "hangs" else "crashes the HDF5"):
        _split_export(path, out, "float32", True, monkeypatch)
    assert snapshot(out) == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_blocks_are_computed_into_reused_memory_and_written_intact(tmp_path, monkeypatch):
    """A file's blocks are computed into TensorFiles' MAX_IN_FLIGHT + 1 buffers in turn, not
    fresh memory each; with a slow writing thread (every block still in flight that may be), no
    block is overwritten before it is written."""
    import time

    from kerasfold.targets.mps import files
    from kerasfold.targets.mps.stream import FileTensor
    kernel = RNG.standard_normal((3, 3, 64, 700)).astype(np.float32)         # 700 outputs: 6 blocks
    factor = RNG.uniform(0.5, 2, 700)
    weight = Deferred(lambda: kernel, kernel.shape, kernel.dtype).transpose(3, 0, 1, 2).scaled(factor[:, None, None, None])
    expected = np.multiply(kernel.transpose(3, 0, 1, 2), factor[:, None, None, None], dtype=np.float64).astype("<f4")
    real_put = files._put

    def slow_put(f, digest, data):
        time.sleep(0.02)
        return real_put(f, digest, data)
    monkeypatch.setattr(files, "_put", slow_put)
    given = []
    with files.TensorFiles() as tensor_files:
        def memory(shape, dtype):
            given.append(tensor_files.memory(shape, dtype))
            return given[-1]
        for name in ("a.bin", "b.bin"):
            tensor_files.write(tmp_path / name, FileTensor(weight, "float32", "w", memory=memory).blocks(),
                               expected.shape, np.dtype("<f4"))
    for name in ("a.bin", "b.bin"):
        assert (tmp_path / name).read_bytes() == expected.tobytes()
    addresses = [array.__array_interface__["data"][0] for array in given]
    assert len(given) == 12 and len(set(addresses)) == files.MAX_IN_FLIGHT + 1
