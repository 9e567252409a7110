"""Read an export back through FORMAT.md only: manifest, tensors in device layout, hash checks.

numpy only; the parity check and any other reader of an export start here.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import FORMAT_NAME, FORMAT_VERSION
from .errors import ExportError
from .writer import MANIFEST


@dataclass
class Export:
    root: Path
    manifest: dict[str, Any]
    hash_mismatches: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.manifest["layers"]

    def tensor(self, entry: dict[str, Any], key: str) -> np.ndarray:
        """``entry[key]`` ("weights", "bias", ...) as an array in device layout, shape checked;
        a sha256 that disagrees with the manifest is recorded in ``hash_mismatches``."""
        info = entry[key]
        path = self.root / info["file"]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ExportError(f"expected tensor file {info['file']}, received {err.strerror}",
                              file=str(self.root), layer=entry["name"]) from err
        if hashlib.sha256(data).hexdigest() != info["sha256"] and info["file"] not in self.hash_mismatches:
            self.hash_mismatches.append(info["file"])
        dtype = np.dtype(info["dtype"]).newbyteorder("<")
        count = int(np.prod(info["shape"]))
        if len(data) != count * dtype.itemsize:
            raise ExportError(f"expected {count * dtype.itemsize} bytes in {info['file']} for shape "
                              f"{info['shape']} {info['dtype']}, received {len(data)}",
                              file=str(self.root), layer=entry["name"])
        return np.frombuffer(data, dtype=dtype).reshape(info["shape"]).astype(dtype.newbyteorder("="))


def load_export(out: str | Path) -> Export:
    root = Path(out)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except OSError as err:
        raise ExportError(f"expected an export with {MANIFEST}, received {err.strerror}",
                          file=str(root)) from err
    except json.JSONDecodeError as err:
        raise ExportError(f"expected {MANIFEST} as JSON, received invalid JSON ({err})",
                          file=str(root)) from err
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise ExportError(f"expected format {FORMAT_NAME} version {FORMAT_VERSION}, received "
                          f"{manifest.get('format')} version {manifest.get('version')}", file=str(root))
    return Export(root=root, manifest=manifest)
