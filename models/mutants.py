"""Mutated copies of a model file or an export folder: the fuzz harness's corpus.

Every mutation is a pure function of the source and a seeded ``numpy.random.Generator``, so a case
is reproduced from its number alone. Families:

- ``bytes``: bit flips, a span overwritten with random bytes, or truncation, of the whole file or
  (``.keras``) of one member of the zip, rewritten with a valid CRC so that the damage gets past
  the zip layer;
- ``config``: one value of the model config (JSON) replaced by a value of another type, or deleted;
- ``weights``: one weight dataset replaced by non-finite, huge, reshaped, integer or empty values;
- ``manifest``: one value of an export's ``manifest.json`` replaced or deleted (the verifier's input).
"""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

FAMILIES = ("bytes", "config", "weights")

# Values of every JSON type, including the awkward ones (negative, zero, huge, NaN, empty).
REPLACEMENTS: list[Any] = [None, True, False, 0, -1, 1, 3, 2 ** 40, -(2 ** 63), 0.5, -2.5, 1e308,
                           float("nan"), float("inf"), "", "x", "same", "valid", "relu", "Conv2D",
                           "../../etc/hostname", "a\nb", [], [0], [1, 1], [-1, 3], [[1]], [None, None],
                           {}, {"class_name": "Lambda", "config": {}}, {"x": 1}]


# -- JSON trees ------------------------------------------------------------------------------------

def paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) to a value of ``tree``, the root excluded."""
    found = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        found.append(prefix + (key,))
        found.extend(paths(value, prefix + (key,)))
    return found


def mutate_json(tree: Any, rng: np.random.Generator) -> tuple[Any, str]:
    """A copy of ``tree`` with one value replaced by another type's (or deleted); what changed."""
    tree = json.loads(json.dumps(tree))
    where = paths(tree)
    if not where:
        return REPLACEMENTS[rng.integers(len(REPLACEMENTS))], "root replaced"
    path = where[rng.integers(len(where))]
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if rng.random() < 0.2:
        del parent[key]
        return tree, f"deleted {'/'.join(map(str, path))}"
    old = parent[key]
    choices = [v for v in REPLACEMENTS if type(v) is not type(old) or v != old]
    new = choices[rng.integers(len(choices))]
    parent[key] = new
    return tree, f"{'/'.join(map(str, path))} = {json.dumps(new)[:40]}"


# -- bytes -----------------------------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Bit flips, a random span, or truncation."""
    buf = bytearray(data)
    if not buf:
        return bytes(rng.integers(0, 256, 16, dtype=np.uint8)), "random bytes"
    how = rng.integers(3)
    if how == 0:
        flips = int(rng.integers(1, 9))
        for _ in range(flips):
            i = int(rng.integers(len(buf)))
            buf[i] ^= 1 << int(rng.integers(8))
        return bytes(buf), f"{flips} bit flips"
    if how == 1:
        start = int(rng.integers(len(buf)))
        span = int(rng.integers(1, 65))
        buf[start:start + span] = rng.integers(0, 256, min(span, len(buf) - start), dtype=np.uint8).tobytes()
        return bytes(buf), f"span of {span} at {start}"
    cut = int(rng.integers(len(buf)))
    return bytes(buf[:cut]), f"truncated at {cut}"


def rewrite_zip(src: Path, dst: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Copy a zip member by member, each through ``change`` (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


def _zip_member(src: Path, dst: Path, rng: np.random.Generator,
                mutate: Callable[[str, bytes], tuple[bytes, str]], members: tuple[str, ...]) -> str:
    member = members[rng.integers(len(members))]
    said = []

    def change(name: str, data: bytes) -> bytes:
        if name != member:
            return data
        data, what = mutate(name, data)
        said.append(what)
        return data
    rewrite_zip(src, dst, change)
    return f"{member}: {said[0] if said else 'absent'}"


# -- the model file families ---------------------------------------------------------------------------

def _is_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def byte_mutant(src: Path, dst: Path, rng: np.random.Generator) -> str:
    if _is_zip(src) and rng.random() < 0.6:
        return _zip_member(src, dst, rng, lambda n, d: mutate_bytes(d, rng),
                           ("config.json", "model.weights.h5", "metadata.json"))
    data, what = mutate_bytes(src.read_bytes(), rng)
    dst.write_bytes(data)
    return what


def config_mutant(src: Path, dst: Path, rng: np.random.Generator) -> str:
    def mutate(_name: str, raw: bytes | str) -> tuple[bytes, str]:
        tree, what = mutate_json(json.loads(raw), rng)
        return json.dumps(tree).encode("utf-8"), what
    if _is_zip(src):
        return _zip_member(src, dst, rng, mutate, ("config.json",))
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        raw = f.attrs["model_config"]
        data, what = mutate("model_config", raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        f.attrs["model_config"] = data.decode("utf-8")
    return f"model_config: {what}"


def _datasets(group: h5py.Group) -> list[str]:
    names: list[str] = []
    group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _bad_array(old: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    how = int(rng.integers(7))
    if how == 0:
        bad = old.astype(np.float32).copy()
        bad.flat[int(rng.integers(max(bad.size, 1)))] = np.nan if bad.size else 0
        return bad, "a NaN"
    if how == 1:
        return np.full(old.shape, np.inf, np.float32), "all +inf"
    if how == 2:
        with np.errstate(over="ignore"):
            return (old.astype(np.float64) * 1e38).astype(np.float32), "scaled by 1e38"
    if how == 3:
        return np.zeros(old.shape[:-1] + (old.shape[-1] + 1,) if old.ndim else (2,), np.float32), "reshaped"
    if how == 4:
        return np.zeros(old.shape, np.int32), "integers"
    if how == 5:
        return np.zeros((0,), np.float32), "empty"
    return np.float32(1.0), "scalar"


def weight_mutant(src: Path, dst: Path, rng: np.random.Generator) -> str:
    def mutate_h5(data: bytes) -> tuple[bytes, str]:
        buf = io.BytesIO(data)
        with h5py.File(buf, "r+") as f:
            names = _datasets(f)
            if not names:
                return data, "no dataset"
            name = names[rng.integers(len(names))]
            bad, what = _bad_array(np.asarray(f[name][()]), rng)
            del f[name]
            f[name] = bad
        return buf.getvalue(), f"{name}: {what}"
    if _is_zip(src):
        return _zip_member(src, dst, rng, lambda n, d: mutate_h5(d), ("model.weights.h5",))
    data, what = mutate_h5(src.read_bytes())
    dst.write_bytes(data)
    return what


MUTANTS = {"bytes": byte_mutant, "config": config_mutant, "weights": weight_mutant}


def mutant(src: Path, dst: Path, family: str, rng: np.random.Generator) -> str:
    """Write a mutated copy of the model file ``src`` to ``dst``; returns what was done."""
    return f"{family}: {MUTANTS[family](Path(src), Path(dst), rng)}"


def manifest_mutant(out: Path, rng: np.random.Generator) -> str:
    """Mutate ``out/manifest.json`` in place: one value replaced or deleted, or its bytes damaged."""
    path = Path(out) / "manifest.json"
    if rng.random() < 0.25:
        data, what = mutate_bytes(path.read_bytes(), rng)
        path.write_bytes(data)
        return f"manifest bytes: {what}"
    tree, what = mutate_json(json.loads(path.read_text(encoding="utf-8")), rng)
    path.write_text(json.dumps(tree), encoding="utf-8")
    return f"manifest: {what}"
