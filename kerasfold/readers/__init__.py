"""Model files -> graph: legacy ``.h5`` (Keras 2 or 3) and ``.keras`` (Keras 3 zip).

h5py and json only: no TensorFlow, no Keras, nothing from the file is executed.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import mmap
import os
import re
import threading
import zipfile
import zlib
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, TypeVar

import numpy as np

from ..deferred import Deferred
from ..digest import file_sha256
from ..errors import ExportError
from ..forked import Pending, can_fork
from ..graph import SourceInfo
from .layers import Layer as Node, Model
from .config import MODEL_CLASSES, class_of, name_of, parse_model_config
from .hdf5 import ReadBeside, probe, raised_by_h5py
from .variables import canonical_name

if TYPE_CHECKING:
    import h5py

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
T = TypeVar("T")
ZIP_MAGIC = b"PK\x03\x04"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _json(raw: Any, what: str) -> Any:
    try:
        return json.loads(_text(raw))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ExportError(f"expected {what} as JSON, received invalid JSON ({type(err).__name__})") from None


def _check_arrays(nodes: list[Node]) -> None:
    for n in nodes:
        for key, arr in n.weights.items():
            if not np.issubdtype(arr.dtype, np.floating) and not (key == "count" and n.kind == "Normalization"):
                raise ExportError(f"expected floating-point weights, received {arr.dtype} in "
                                  f"'{key}'", layer=n.name)


@contextmanager
def damaged_file_errors() -> Iterator[None]:
    """Errors of reading a damaged file (from the OS, zipfile or h5py) as :class:`ExportError`;
    anything else raised is a bug of ours and goes through."""
    try:
        yield
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ExportError(f"expected a readable model file, received a damaged or truncated "
                          f"one ({type(err).__name__}: {err})") from err
    except (RuntimeError, KeyError, ValueError, TypeError, UnicodeError) as err:
        if not raised_by_h5py(err):
            raise                                # a bug of ours: exit 3 with the trace
        raise ExportError(f"expected a readable HDF5 file, received damaged HDF5 structures "
                          f"({type(err).__name__}: {err})") from err


# Weights a plain export leaves in the file until it writes them (read_model(lazy=True)): the
# kernels (what kinds and passes only reshape, transpose and scale), from this size on. Small:
# a kernel read at its offset when written costs less than one read by the reading child and
# sent here through its pipe (tiny-yolo-voc's 0.9 MB of kernels under 1 MiB: ~25 ms more).
DEFERRED = frozenset({"kernel", "depthwise_kernel", "pointwise_kernel"})
DEFERRED_MIN_BYTES = 1 << 12


def _reading(path: str, call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, a damaged file's errors as the read's (:func:`damaged_file_errors`, naming
    ``path``): for what reads the model after :func:`read_model` (deferred weights, the hash)."""
    try:
        with damaged_file_errors():
            return call(*args)
    except ExportError as err:
        raise err.at(file=path)


def open_h5(file: Path | BinaryIO) -> h5py.File:
    """``file`` opened read-only with h5py, imported here: a plain export's process never imports
    it (~60 ms) when every kernel it reads lies plainly in the file (its read runs in a child)."""
    import h5py
    return h5py.File(file, "r")


def _stored(dataset: h5py.Dataset) -> np.ndarray:
    return np.asarray(dataset[()])


@dataclasses.dataclass(frozen=True)
class Stored:
    """A weight left in the file by a lazy read: its dataset's path, shape and dtype, and where
    its bytes lie when the file holds them as they are (``offset``; else None: read through
    h5py). Picklable (a read in a child process sends it); :class:`Kernels` reads it."""
    dataset: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int | None = None


def _raw_offset(dataset: h5py.Dataset) -> int | None:
    """Where ``dataset``'s values lie in the file as numpy's bytes of its dtype: contiguous
    storage in the file itself, of the standard type of that dtype, all of it allocated. Else
    None (chunked, compressed, external, or a type the library converts on reading)."""
    import h5py
    plist = dataset.id.get_create_plist()
    if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_external_count():
        return None
    if not dataset.id.get_type().equal(h5py.h5t.py_create(dataset.dtype)):
        return None
    offset = dataset.id.get_offset()
    if offset is None or dataset.id.get_storage_size() != dataset.size * dataset.dtype.itemsize:
        return None
    return int(offset)


def _weight(dataset: h5py.Dataset, name: str, lazy: bool) -> np.ndarray | Stored:
    if lazy and _deferrable(name, dataset.dtype, dataset.shape):
        return Stored(dataset.name, tuple(dataset.shape), np.dtype(dataset.dtype), _raw_offset(dataset))
    return _stored(dataset)


_SEEK = threading.Lock()


def _read_at(f: BinaryIO, memory: memoryview, offset: int) -> int:
    """Read into ``memory`` from ``offset`` of ``f`` without moving a shared offset (threads of
    one process, or processes sharing the file, read at once); how many bytes came."""
    if hasattr(os, "preadv"):
        return os.preadv(f.fileno(), [memory], offset)
    if hasattr(os, "pread"):
        data = os.pread(f.fileno(), len(memory), offset)
        memory[:len(data)] = data
        return len(data)
    with _SEEK:                                          # Windows: no positional read
        f.seek(offset)
        return f.readinto(memory) or 0


class Kernels:
    """Where a lazy read's :class:`Stored` weights are read from when a target needs them: the
    file's bytes at their offset (no HDF5 library call), else through h5py, the file opened on
    first use once ``ready()`` has returned (a read in a child: the file's walk has ended well)."""

    def __init__(self, path: Path, ready: Callable[[], None] = lambda: None) -> None:
        self.path, self.ready = path, ready
        self._raw: BinaryIO | None = None
        self._h5: h5py.File | None = None
        self._pid = self._reader = os.getpid()

    def _own(self) -> None:
        """Handles of this process only: a second writing process (forked) opens its own."""
        if self._pid != os.getpid():
            self._raw = self._h5 = None
            self._pid = os.getpid()

    def _file(self) -> BinaryIO:
        """The model file, unbuffered, opened once by this process."""
        self._own()
        if self._raw is None:
            self._raw = open(self.path, "rb", buffering=0)
        return self._raw

    def mapped(self, stored: Stored) -> np.ndarray | None:
        """The stored array as a read-only view of the file mapped into memory: no copy, and no
        fresh memory to fault in (on a VM, zeroing it cost more than the copy). Only in a process
        forked from the one that read the model (a second writer): a file cut short while mapped
        ends the process by SIGBUS, and the exporting process then writes its share itself, with
        plain reads, which say so in one line. None elsewhere, for a weight read through h5py, one
        the file no longer holds whole (the plain read reports it), or where the file cannot be
        mapped."""
        if stored.offset is None or os.getpid() == self._reader:
            return None
        raw = self._file()
        count = int(np.prod(stored.shape, dtype=np.int64))
        start = stored.offset - stored.offset % mmap.ALLOCATIONGRANULARITY
        length = stored.offset + count * stored.dtype.itemsize - start
        if start + length > os.fstat(raw.fileno()).st_size:
            return None
        # this kernel's pages only, unmapped with the last view of them: the file's pages a writer
        # has read do not stay in its memory
        try:
            pages = mmap.mmap(raw.fileno(), length, access=mmap.ACCESS_READ, offset=start)
        except OSError:                                  # a file system that cannot map: read it
            return None
        return np.frombuffer(pages, stored.dtype, count, stored.offset - start).reshape(stored.shape)

    def into(self, stored: Stored, out: np.ndarray) -> None:
        self._own()
        if stored.offset is None:
            if self._h5 is None:
                self.ready()
                self._h5 = open_h5(self.path)
            self._h5[stored.dataset].read_direct(out)
            return
        if not out.flags.c_contiguous:                  # reshape would copy: the bytes would go there
            raise ValueError(f"expected a C-contiguous array to read {stored.dataset} into")
        raw = self._file()
        memory = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(memory):                       # positional reads: no shared file offset
            got = _read_at(raw, memory[done:], stored.offset + done)
            if not got:
                raise EOFError(f"{stored.dataset} holds {done} of its {len(memory)} bytes")
            done += got

    def value(self, stored: Stored) -> np.ndarray:
        out = np.empty(stored.shape, stored.dtype)
        self.into(stored, out)
        return out

    def deferred(self, nodes: list[Node]) -> bool:
        """Each :class:`Stored` weight of ``nodes`` as a :class:`Deferred` read from here; whether
        there was any. Shared weight dicts are replaced once."""
        path, found = str(self.path), False
        for weights in {id(n.weights): n.weights for n in nodes}.values():
            for key, w in weights.items():
                if isinstance(w, Stored):
                    weights[key] = Deferred(functools.partial(_reading, path, self.value, w), w.shape, w.dtype,
                                            read_into=functools.partial(_reading, path, self.into, w),
                                            mapped=functools.partial(_reading, path, self.mapped, w),
                                            through_library=w.offset is None)
                    found = True
        return found

    def close(self) -> None:
        for f in (self._raw, self._h5):
            if f is not None:
                f.close()
        self._raw = self._h5 = None


def _deferrable(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """A weight a target reads only when it writes it: a float kernel of DEFERRED_MIN_BYTES or more."""
    return (name in DEFERRED and dtype.kind == "f" and len(shape) >= 2
            and int(np.prod(shape, dtype=np.int64)) * dtype.itemsize >= DEFERRED_MIN_BYTES)


def _same(array: np.ndarray) -> np.ndarray:
    return array


def with_deferred_kernels(model: Model) -> Model:
    """``model`` with its large kernels in memory (a ``.keras`` read, or a read kept for a
    verification) as :class:`Deferred` views of the same arrays, as a lazy read gives them: the
    target then folds, lays out and rounds each in its tiled pass, with no whole float64 copy. A
    shallow copy (``model`` is unchanged); layer calls sharing weights still share them."""
    copies: dict[int, dict[str, Any]] = {}
    nodes = {}
    for name, layer in model.nodes.items():
        if id(layer.weights) not in copies:
            copies[id(layer.weights)] = {
                key: Deferred(functools.partial(_same, array), tuple(array.shape), array.dtype)
                if isinstance(array, np.ndarray) and _deferrable(key, array.dtype, array.shape) else array
                for key, array in layer.weights.items()}
        nodes[name] = dataclasses.replace(layer, weights=copies[id(layer.weights)])
    return dataclasses.replace(model, nodes=nodes)


def _legacy_weights(f: h5py.File, nodes: list[Node], lazy: bool = False) -> None:
    """Weights of a legacy h5: ``model_weights/<layer>`` lists its datasets in ``weight_names``.
    A nested model's group holds all its layers' weights, named ``<inner layer>/<var>``."""
    import h5py
    root = f["model_weights"] if "model_weights" in f else f
    for n in nodes:
        top, *inner = n.layer.split("/")
        if n.layer != n.name or top not in root:        # later calls share the first call's arrays
            continue
        group = root[top]
        stored_names = group.attrs.get("weight_names", [])
        if isinstance(stored_names, (str, bytes)) or not hasattr(stored_names, "__iter__"):
            raise ExportError(f"expected weight_names as a list of names, received {stored_names!r:.60}",
                              layer=n.name)
        for stored in stored_names:
            stored = _text(stored)
            parts = stored.split("/")
            if inner and (len(parts) < 2 or parts[-2] != inner[-1]):
                continue
            dataset = group.get(stored)
            if not isinstance(dataset, h5py.Dataset):
                raise ExportError(f"expected dataset '{stored}' named in weight_names, received "
                                  + ("none" if dataset is None else "a group"), layer=n.name)
            name = canonical_name(n.kind, stored)
            n.weights[name] = _weight(dataset, name, lazy)
    _share_weights(nodes)


def _keras_vars(layers: h5py.Group, prefix: str = "") -> dict[str, h5py.Group]:
    """Layer path (``backbone/conv``) -> its ``vars`` group. Keras names the groups after the
    class (``conv2d_1``); ``vars`` carries the layer's own name."""
    import h5py
    found = {}
    for group in layers.values():
        if not isinstance(group, h5py.Group) or "vars" not in group:
            continue
        name = prefix + _text(group["vars"].attrs.get("name", ""))
        found[name] = group["vars"]
        if "layers" in group:
            found.update(_keras_vars(group["layers"], name + "/"))
    return found


def _snake(name: str) -> str:
    """Keras' ``to_snake_case``: ``BatchNormalization`` -> ``batch_normalization``."""
    name = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_group_paths(config: Any, group: str = "layers", scope: str = "") -> dict[str, str]:
    """Layer path -> h5 group, as Keras' own loader names them: snake_case class name plus a
    counter, in the config's layer order (for files whose ``vars`` carry no layer name)."""
    inner = config.get("config", {}) if isinstance(config, dict) else config
    layers = inner.get("layers", []) if isinstance(inner, dict) else inner
    used: dict[str, int] = {}
    paths = {}
    for spec in layers if isinstance(layers, list) else []:
        base = _snake(class_of(spec))
        used[base] = used.get(base, -1) + 1
        path = f"{group}/{base}" + (f"_{used[base]}" if used[base] else "")
        name = scope + name_of(spec)
        paths[name] = path
        if spec["class_name"] in MODEL_CLASSES:
            paths.update(_keras_group_paths(spec, path + "/layers", name + "/"))
    return paths


def _keras_weights(f: h5py.File, nodes: list[Node], config: Any) -> None:
    """Weights of a ``.keras`` archive: ``layers/<path>/vars/<i>`` in creation order."""
    by_layer = _keras_vars(f["layers"]) if "layers" in f else {}
    for layer, path in _keras_group_paths(config).items():
        if layer not in by_layer and f"{path}/vars" in f:
            by_layer[layer] = f[f"{path}/vars"]
    for n in nodes:
        if n.layer != n.name or n.layer not in by_layer:
            continue
        group = by_layer[n.layer]
        if any(str(i) not in group for i in range(len(group))):
            raise ExportError(f"expected variables 0..{len(group) - 1}, received {sorted(group)[:5]}",
                              layer=n.name)
        arrays = [np.asarray(group[str(i)][()]) for i in range(len(group))]
        from ..kinds import variable_names             # the kinds know each class's creation order
        try:
            names = variable_names(n.kind, n.config, len(arrays), n.layer)
        except ExportError as err:
            raise err.at(layer=n.name)
        n.weights = dict(zip(names, arrays))
    _share_weights(nodes)


def _share_weights(nodes: list[Node]) -> None:
    first = {n.layer: n for n in reversed(nodes)}
    for n in nodes:
        if n.name != n.layer:
            n.weights = first[n.layer].weights


Probed = Callable[[], None]


def _nothing() -> None:
    pass


Read = tuple[Any, str, str, list[Node], list[str], list[str], Callable[[], None]]


H5Read = tuple[Any, str, str, list[Node], list[str], list[str]]


def h5_structure(f: h5py.File, lazy: bool) -> H5Read:
    """A legacy ``.h5``'s (config, keras version, flavour, layer calls, inputs, outputs); with
    ``lazy``, its large kernels are :class:`Stored` references (the rest is read)."""
    if "model_config" not in f.attrs:
        raise ExportError("expected a whole model (attribute 'model_config'), received a "
                          "weights-only file; save it with model.save(), not save_weights()")
    config = _json(f.attrs["model_config"], "model_config")
    version = _text(f.attrs.get("keras_version", f["model_weights"].attrs.get("keras_version", "")
                                if "model_weights" in f else ""))
    nodes, ins, outs = parse_model_config(config)
    _legacy_weights(f, nodes, lazy)
    return config, version, "keras3-h5" if version.startswith("3") else "keras2-h5", nodes, ins, outs


def _read_h5(path: Path, probed: Probed, lazy: bool) -> Read:
    probe(functools.partial(open_h5, path), forked=probed)
    with open_h5(path) as f:
        config, version, flavour, nodes, ins, outs = h5_structure(f, lazy)
    kernels = Kernels(path)
    return config, version, flavour, nodes, ins, outs, (kernels.close if kernels.deferred(nodes) else _nothing)


def _member(z: zipfile.ZipFile, name: str) -> bytes:
    """One member of a ``.keras`` zip; a damaged, encrypted or oddly compressed one is bad input."""
    try:
        return z.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise ExportError(f"expected {name} readable in the .keras zip, received a damaged member "
                          f"({type(err).__name__}: {err})") from err
    except NotImplementedError as err:           # an unknown compression method
        raise ExportError(f"expected {name} stored or deflated, received {err}") from err
    except RuntimeError as err:                  # the encrypted flag: a password is required
        raise ExportError(f"expected {name} unencrypted, received {err}") from err


def _read_keras(path: Path, probed: Probed, lazy: bool) -> Read:
    """A ``.keras`` zip; its weights are always read at once (``lazy`` is for legacy ``.h5``)."""
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        for needed in ("config.json", "model.weights.h5"):
            if needed not in names:
                raise ExportError(f"expected a .keras archive with {needed}, received a zip "
                                  f"holding {sorted(names)[:5]}")
        config = _json(_member(z, "config.json"), "config.json")
        meta = _json(_member(z, "metadata.json"), "metadata.json") if "metadata.json" in names else {}
        if not isinstance(meta, dict):
            raise ExportError(f"expected metadata.json as an object, received {type(meta).__name__}")
        weights = _member(z, "model.weights.h5")
    nodes, ins, outs = parse_model_config(config)
    probe(functools.partial(open_h5, io.BytesIO(weights)), forked=probed)
    with open_h5(io.BytesIO(weights)) as f:
        _keras_weights(f, nodes, config)
    return config, str(meta.get("keras_version", "")), "keras", nodes, ins, outs, _nothing


def read_model(path: str | Path, lazy: bool = False) -> Model:
    """Read a Keras model file into a :class:`Model` of layer calls. Raises :class:`ExportError` on bad input.

    ``lazy``: a legacy ``.h5``'s kernels of :data:`DEFERRED_MIN_BYTES` or more stay in the file
    as :class:`~kerasfold.deferred.Deferred` weights, read when a target needs them; the file stays
    open until ``Model.close()``."""
    return start_read(path, lazy).result()


class Reading:
    """A read started by :func:`start_read`: :meth:`result` is the :class:`Model`."""

    def __init__(self, path: Path, reader: Callable[..., Read], lazy: bool) -> None:
        self.path, self.reader, self.lazy = path, reader, lazy

    def result(self) -> Model:
        return _read_here(self.path, self.reader, self.lazy)

    def cancel(self) -> None:
        """Give up the read (its child, if any, is stopped); harmless after :meth:`result`."""


def start_read(path: str | Path, lazy: bool = False, hashed: Pending | None = None) -> Reading:
    """:func:`read_model`, started: a lazy read of a legacy ``.h5`` runs in a forked child process
    (probe, read, hash: ``hdf5.ReadBeside``) while the caller goes on, when no other thread runs;
    any other read runs when its result is asked for. A file that is not a model is refused now.
    ``hashed``: the file's sha256 being computed already (the command line starts it before it
    imports numpy); the child then does not hash it."""
    path = Path(path)
    try:
        reader = _reader_for(path)
    except ExportError as err:
        raise err.at(file=str(path))
    if reader is _read_h5 and lazy and can_fork():
        return _ReadingBeside(path, hashed)
    return Reading(path, reader, lazy)


def _reader_for(path: Path) -> Callable[..., Read]:
    if not path.is_file():
        raise ExportError("expected a Keras model file, received a path that "
                          + ("is a directory" if path.is_dir() else "does not exist"))
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as err:                      # permissions, an I/O error: one line, not a trace
        raise ExportError(f"expected a readable model file, received one that cannot be read "
                          f"({type(err).__name__}: {err.strerror or err})") from err
    if head.startswith(HDF5_MAGIC):
        return _read_h5
    if head.startswith(ZIP_MAGIC):
        return _read_keras
    raise ExportError("expected an HDF5 (.h5) or zip (.keras) file, received "
                      + (f"a file starting with {head!r}" if head else "an empty file"))


def _read_here(path: Path, reader: Callable[..., Read], lazy: bool) -> Model:
    try:
        # The source's hash overlaps the probe and the read (hashlib releases the GIL). It starts
        # once the probe has forked: a process is never forked while this thread runs. A lazy read
        # leaves it running beside the export (the manifest asks for it last).
        worker = ThreadPoolExecutor(max_workers=1)
        digest: list[Future[str]] = []
        close: Callable[[], None] = _nothing
        try:
            with damaged_file_errors():
                _config, version, flavour, nodes, ins, outs, close = reader(
                    path, lambda: digest.append(worker.submit(file_sha256, path)), lazy)
            if not digest:
                digest.append(worker.submit(file_sha256, path))
            sha256: str | Callable[[], str] = functools.partial(_reading, str(path), Future.result, digest[0])
            if not lazy:
                sha256 = sha256()
            _check_arrays(nodes)
        except BaseException:
            close()
            worker.shutdown(wait=True)          # a failed read leaves no thread behind (a later read forks)
            raise
        worker.shutdown(wait=not lazy)
    except ExportError as err:
        raise err.at(file=str(path))
    source = SourceInfo(file=path.name, digest=sha256, keras_version=version, flavour=flavour)
    return Model(nodes={n.name: n for n in nodes}, inputs=ins, outputs=outs, source=source,
                 close=functools.partial(_close, close, digest[0]))


def _close(close: Callable[[], None], digest: Future[str]) -> None:
    """Close the file deferred weights read from, and let the source's hashing end (an export that
    failed early does not ask for it; no later read may fork while it runs)."""
    close()
    futures.wait([digest])


def _structure_at(path: Path) -> H5Read:
    with damaged_file_errors(), open_h5(path) as f:
        return h5_structure(f, lazy=True)


def _sha256_at(path: Path) -> str:
    with damaged_file_errors():
        return file_sha256(path)


def _read_through_h5py(read: H5Read) -> bool:
    """Whether the export will read a weight of this read through h5py (a :class:`Stored` with no
    offset: chunked, compressed, converted), so that the reading child must walk the file first."""
    return any(isinstance(w, Stored) and w.offset is None for n in read[3] for w in n.weights.values())


class _ReadingBeside(Reading):
    """A lazy legacy ``.h5`` read in a child (``hdf5.ReadBeside``); this process then only reads
    the kernels' bytes (:class:`Kernels`). The file's walk is waited for with its hash, or before
    a kernel is read through h5py. Whatever the child could not answer is done here, as
    :func:`read_model` would."""

    def __init__(self, path: Path, hashed: Pending | None = None) -> None:
        super().__init__(path, _read_h5, True)
        self.hashed = hashed
        self.child = ReadBeside(functools.partial(open_h5, path), functools.partial(_structure_at, path),
                                None if hashed is not None else functools.partial(_sha256_at, path),
                                needs_walk=_read_through_h5py)

    def result(self) -> Model:
        path = self.path
        try:
            answered, value = self.child.read()
        except ExportError as err:
            raise err.at(file=str(path))
        if not answered:
            return super().result()
        _config, version, flavour, nodes, ins, outs = value
        kernels = Kernels(path, ready=self._walked)
        kernels.deferred(nodes)
        close = kernels.close
        try:
            _check_arrays(nodes)
        except ExportError as err:
            self.child.cancel()
            raise err.at(file=str(path))
        source = SourceInfo(file=path.name, digest=self._sha256, keras_version=version, flavour=flavour)
        return Model(nodes={n.name: n for n in nodes}, inputs=ins, outputs=outs, source=source,
                     close=functools.partial(self._close, close))

    def _walked(self) -> None:
        try:
            self.child.walked()
        except ExportError as err:
            raise err.at(file=str(self.path))

    def _sha256(self) -> str:
        path = str(self.path)
        try:
            digest = self.child.digest()                 # after the walk's verdict
        except ExportError as err:
            raise err.at(file=path)
        if digest is None and self.hashed is not None:
            digest = _reading(path, self.hashed.result)  # a failed child's work is redone here
        return digest if digest is not None else _reading(path, file_sha256, self.path)

    def _close(self, close: Callable[[], None]) -> None:
        close()
        self.child.cancel()

    def cancel(self) -> None:
        self.child.cancel()
