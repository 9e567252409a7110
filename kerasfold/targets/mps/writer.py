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
from ...deferred import Scratch
from ...errors import ExportError
from ...forked import Pending
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


def _write_entries(stage: Path, entries: list[Entry], stems: dict[str, str], dtype: str,
                   files: TensorFiles, progress: Progress | None) -> list[dict[str, Any]]:
    """Every entry's tensors into ``stage``; the manifest's layers, their hashes still futures."""
    layers = []
    written = 0
    scratch = Scratch(t.array for e in entries for t in e.tensors.values())   # every kernel read into it
    for i, e in enumerate(entries):
        meta = dict(e.meta)
        for key, tensor in e.tensors.items():
            suffix, kind = ("_W", dtype) if key == "weights" else ("_b", "float32")
            data = FileTensor(tensor.array, kind, e.name, scratch)
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
        layers.append(meta)
        if progress is not None:
            progress(i + 1, len(entries), written)
    return layers


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
            with TensorFiles() as files:
                layers = _write_entries(stage, entries, stems, dtype, files, progress)
            for meta in layers:                                   # the hashes, in entry order
                for key in ("weights", "bias"):
                    if key in meta:
                        meta[key] = {**meta[key], "sha256": meta[key]["sha256"].result()}
            manifest = build_manifest(graph, layers, dtype)
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    except OSError as err:
        raise ExportError(f"expected a writable output directory, received {err.strerror or err}",
                          file=str(out)) from err
    finally:
        if checked is not None:
            checked.cancel()
    return manifest
