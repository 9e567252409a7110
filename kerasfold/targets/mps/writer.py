"""Entries -> ``<name>_W.bin`` / ``<name>_b.bin`` + ``manifest.json`` (FORMAT.md), written atomically."""
from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ... import FORMAT_NAME, FORMAT_VERSION, __version__
from ...errors import ExportError
from ...graph import Graph
from .atomic import staged_directory
from .entries import Entry
from .schema import MANIFEST, read_manifest
from .strips import contiguous

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


def _sha256(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_tensor(path: Path, array: np.ndarray, dtype: str, hasher: ThreadPoolExecutor) -> dict[str, Any]:
    """Raw little-endian C-order bytes (float16 rounds to nearest even, once), written from the
    array's own buffer while a worker thread hashes the same buffer (hashlib releases the GIL)."""
    data = memoryview(contiguous(array, np.dtype(dtype).newbyteorder("<"))).cast("B")
    digest = hasher.submit(_sha256, data)
    with open(path, "wb") as f:
        f.write(data)
    return {"file": path.name, "shape": list(array.shape), "dtype": dtype, "sha256": digest}


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


def _export_files(out: Path) -> set[str] | None:
    """The file names of the kerasfold export in ``out`` (manifest included), or None when it
    holds no manifest.json. A manifest.json that is not a valid kerasfold manifest is refused."""
    if not (out / MANIFEST).exists() and not (out / MANIFEST).is_symlink():
        return None
    try:
        manifest = read_manifest(out)
    except ExportError as err:
        raise ExportError("expected OUT to be empty or a previous kerasfold export, received a "
                          f"manifest.json that is not kerasfold's ({err.message}); refusing to replace it",
                          file=str(out)) from err
    names = {MANIFEST}
    for layer in manifest["layers"]:
        names.update(layer[key]["file"] for key in ("weights", "bias") if key in layer)
    return names


def check_out_dir(out: Path) -> None:
    """Refuse to replace anything but an empty directory or exactly a previous export: a foreign
    manifest.json, or a user's file put inside an old export, would be deleted with it."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError("expected OUT to be a directory, received a file", file=str(out))
    present = {p.name for p in out.iterdir()}
    if not present:
        return
    known = _export_files(out)
    others = sorted(present - known) if known is not None else sorted(present)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ExportError("expected OUT to be empty or a previous kerasfold export, received a "
                          f"directory also holding {shown}; refusing to replace it", file=str(out))


def write_export(out: Path, graph: Graph, entries: list[Entry], *, dtype: str = "float32",
                 forge_names: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Write every tensor and the manifest into a staged directory that then replaces ``out``.
    ``progress(entries done, entries, bytes written)`` is called after each entry."""
    stems = file_stems(entries, forge_names)
    layers = []
    written = 0
    try:
        if out.is_symlink():                  # replace the link's target; the link stays a link
            out = out.resolve()
        check_out_dir(out)
        with staged_directory(out, check=lambda _: check_out_dir(out)) as stage, \
                ThreadPoolExecutor(max_workers=1) as hasher:                         # named as given
            for i, e in enumerate(entries):
                meta = dict(e.meta)
                for key, tensor in e.tensors.items():
                    suffix, kind = ("_W", dtype) if key == "weights" else ("_b", "float32")
                    info = _write_tensor(stage / f"{stems[e.name]}{suffix}.bin", tensor.array, kind, hasher)
                    if tensor.layout:
                        info = {**info, "layout": tensor.layout}
                    meta[key] = info
                    written += int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(kind).itemsize
                layers.append(meta)
                if progress is not None:
                    progress(i + 1, len(entries), written)
            for meta in layers:                                   # the hashes, in entry order
                for key in ("weights", "bias"):
                    if key in meta:
                        meta[key] = {**meta[key], "sha256": meta[key]["sha256"].result()}
            manifest = build_manifest(graph, layers, dtype)
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    except OSError as err:
        raise ExportError(f"expected a writable output directory, received {err.strerror or err}",
                          file=str(out)) from err
    return manifest
