"""Entries -> ``<name>_W.bin`` / ``<name>_b.bin`` + ``manifest.json`` (FORMAT.md), written atomically."""
from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ... import FORMAT_NAME, FORMAT_VERSION, __version__
from ...deferred import Deferred, Scratch
from ...errors import ExportError
from ...forked import Pending, beside, can_fork
from ...graph import Graph
from .atomic import staged_directory
from .entries import Entry
from .out_dir import check_out_dir, confirm, start_out_check, target
from .schema import MANIFEST
from .files import TensorFiles
from .stream import FileTensor

Progress = Callable[[int, int, int], None]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_STEM = 120                                  # + "_W.bin" and a "_k" suffix, far below 255 bytes


def safe_name(name: str, taken: set[str]) -> str:
    """A file-name stem from a layer name: only ``A-Z a-z 0-9 . _ -``, not hidden, not ``.``/``..``,
    at most :data:`MAX_STEM` characters (a longer name keeps its start and gets a hash of the whole
    name), distinct from every stem in ``taken`` even on a case-insensitive file system."""
    stem = _UNSAFE.sub("_", name) or "_"
    if stem.startswith("."):
        stem = "_" + stem[1:]
    if len(stem) > MAX_STEM:                    # file systems allow 255 bytes: shorten, keep it unique
        stem = f"{stem[:MAX_STEM - 13]}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
    candidate, k = stem, 1
    while candidate.casefold() in taken:
        k += 1
        candidate = f"{stem}_{k}"
    taken.add(candidate.casefold())
    return candidate


def file_stems(entries: list[Entry], forge_names: bool) -> dict[str, str]:
    """Layer name -> file stem. With ``forge_names`` the conv2d entries are conv1..convN in graph
    order (Forge's YOLO example), claimed before any other name."""
    taken: set[str] = set()
    stems: dict[str, str] = {}
    weighted = [e for e in entries if e.tensors]
    if forge_names:
        for i, e in enumerate((e for e in weighted if e.meta["type"] == "conv2d"), start=1):
            stems[e.name] = safe_name(f"conv{i}", taken)
    for e in weighted:
        if e.name not in stems:
            stems[e.name] = safe_name(e.name, taken)
    return stems


def build_manifest(graph: Graph, layers: list[dict[str, Any]], dtype: str) -> dict[str, Any]:
    src = graph.source
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "dtype": dtype,
        "generator": f"kerasfold {__version__}",
        "source": {"file": src.file, "sha256": src.sha256, "keras_version": src.keras_version,
                   "flavour": src.flavour},
        "inputs": [{"name": n, "shape": list(shape or [])} for n, shape in graph.inputs.items()],
        "outputs": list(graph.outputs),
        "layers": layers,
    }


SPLIT_MIN_BYTES = 8 << 20          # below this, a second writing process costs more than it gives


def _bytes(e: Entry, dtype: str) -> int:
    return sum(int(np.prod(t.array.shape, dtype=np.int64)) * (np.dtype(dtype).itemsize if key == "weights" else 4)
               for key, t in e.tensors.items())


def _through_library(e: Entry) -> bool:
    return any(isinstance(t.array, Deferred) and t.array.through_library for t in e.tensors.values())


def _halves(sizes: list[int]) -> tuple[list[int], list[int]]:
    """Entry indices for this process and for a second one, of about the same bytes (``sizes``:
    each entry's; largest first, each to the lighter side, the second one first: it maps the
    model file, which makes a byte cheaper there, see ``readers.Kernels.mapped``; an entry
    without tensors stays here), both in entry order."""
    sides: tuple[list[int], list[int]] = ([], [])
    load = [0, 0]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        side = 1 if load[1] <= load[0] and sizes[i] else 0
        sides[side].append(i)
        load[side] += sizes[i]
    return sorted(sides[0]), sorted(sides[1])


def _write_share(stage: Path, entries: list[Entry], share: list[int], stems: dict[str, str],
                 dtype: str) -> dict[int, tuple[dict[str, Any], Any]]:
    """(A second process.) The entries ``share`` names, written; entry index -> (its manifest
    layer, hashes done; its float16 stats)."""
    with TensorFiles() as files:
        metas = _write_entries(stage, entries, stems, dtype, files, None, share)
    return {i: (_hashed(meta), entries[i].half) for i, meta in metas.items()}


def _hashed(meta: dict[str, Any]) -> dict[str, Any]:
    for key in ("weights", "bias"):
        if key in meta:
            meta[key] = {**meta[key], "sha256": meta[key]["sha256"].result()}
    return meta


def _write_entries(stage: Path, entries: list[Entry], stems: dict[str, str], dtype: str,
                   files: TensorFiles, progress: Progress | None,
                   share: list[int] | None = None) -> dict[int, dict[str, Any]]:
    """The tensors of ``entries`` (those ``share`` names, else all) into ``stage``; entry index ->
    the manifest's layer, its hashes still futures."""
    layers = {}
    written = 0
    share = list(range(len(entries))) if share is None else share
    scratch = Scratch(t.array for i in share for t in entries[i].tensors.values())   # every kernel read into it
    for done, i in enumerate(share):
        e = entries[i]
        meta = dict(e.meta)
        for key, tensor in e.tensors.items():
            suffix, kind = ("_W", dtype) if key == "weights" else ("_b", "float32")
            data = FileTensor(tensor.array, kind, e.name, scratch, files.memory)
            try:
                info = files.write(stage / f"{stems[e.name]}{suffix}.bin", data.blocks(), data.shape, data.dtype)
            except ExportError as err:
                raise err.at(layer=e.name)
            if data.half is not None:           # a deferred weight's float16 stats, known once written
                e.half = data.half
                meta["float16"] = {"flushed_to_zero": data.half.flushed, "subnormal": data.half.subnormal}
            if tensor.layout:
                info = {**info, "layout": tensor.layout}
            meta[key] = info
            written += int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(kind).itemsize
        layers[i] = meta
        if progress is not None:
            progress(done + 1, len(entries), written)
    return layers


def _write_all(stage: Path, graph: Graph, entries: list[Entry], stems: dict[str, str], dtype: str,
               progress: Progress | None) -> list[dict[str, Any]]:
    """Every entry's tensors into ``stage``: the manifest's layers, in entry order. A large export
    is written by two processes, each reading, folding, hashing and writing about half the bytes
    (the fold pass and the hashing are CPU-bound: one core each). The second one forks only when
    no other thread runs (a read here hashes the source on a thread: ``graph.source.sha256`` waits
    for it). It never asks the reading child anything (this process does): when a kernel is read
    through h5py, which needs the file's walk first, the walk's verdict (with the hash) is waited
    for before the fork; kernels read as the file's bytes need none."""
    sizes = [_bytes(e, dtype) for e in entries]
    mine, theirs = list(range(len(entries))), []
    if sum(sizes) >= SPLIT_MIN_BYTES:
        if not can_fork() or any(_through_library(e) for e in entries):
            graph.source.sha256
        if can_fork():
            mine, theirs = _halves(sizes)
    other = beside(_write_share, stage, entries, theirs, stems, dtype, nice=0) if theirs else None
    try:
        with TensorFiles() as files:
            layers = _write_entries(stage, entries, stems, dtype, files, progress, mine)
        for meta in layers.values():
            _hashed(meta)
        if other is not None:
            for i, (meta, half) in other.result().items():
                layers[i] = meta
                entries[i].half = half
    finally:
        if other is not None:
            other.cancel()
    if progress is not None and theirs:
        progress(len(entries), len(entries), sum(sizes))
    return [layers[i] for i in range(len(entries))]


def write_export(out: Path, graph: Graph, entries: list[Entry], *, dtype: str = "float32",
                 forge_names: bool = False, progress: Progress | None = None,
                 out_check: Pending | None = None) -> dict[str, Any]:
    """Write every tensor and the manifest into a staged directory that then replaces ``out``.
    ``progress(entries done, entries, bytes written)`` is called after each entry; ``out_check``:
    :func:`start_out_check`'s for ``out``, when the caller started it earlier."""
    stems = file_stems(entries, forge_names)
    checked = out_check
    try:
        out = target(out)
        # OUT's check reads and validates a previous manifest beside the writing, and is
        # confirmed at the swap (start_out_check). What needs no manifest is refused now.
        check_out_dir(out, validate=False)
        checked = checked or start_out_check(out)
        with staged_directory(out, check=functools.partial(confirm, checked)) as stage:
            layers = _write_all(stage, graph, entries, stems, dtype, progress)
            manifest = build_manifest(graph, layers, dtype)
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    except OSError as err:
        raise ExportError(f"expected a writable output directory, received {err.strerror or err}",
                          file=str(out)) from err
    finally:
        if checked is not None:
            checked.cancel()
    return manifest
