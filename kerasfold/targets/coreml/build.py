"""SOURCE -> graph -> ML Program -> OUT.mlpackage: the Core ML target's whole job."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ExportError
from ...graph import Graph
from ..mps.read import Export, load_export
from .package import CoreMLOptions, CoreMLResult, convert, save


def verified_graph(export: Export, input_size: tuple[int, int] | None = None) -> Graph:
    """An export's network decoded from its files, refused when a file no longer matches its
    sha256 (a package holds verified weights only)."""
    graph = export.graph()
    if export.hash_mismatches:
        raise ExportError("expected the export's files to match their sha256 in manifest.json, received "
                          f"changed {', '.join(export.hash_mismatches[:3])}", file=str(export.root))
    if input_size is not None:
        raise ExportError("expected no --input-size with an export directory (its sizes are fixed), "
                          "received one", file=str(export.root))
    return graph


def source_graph(source: str | Path, input_size: tuple[int, int] | None = None) -> Graph:
    """A Keras model file prepared as for every target, or an export directory decoded from its
    files (:func:`verified_graph`)."""
    path = Path(source)
    if path.is_dir():
        return verified_graph(load_export(path), input_size)
    from ...pipeline import prepare
    return prepare(path, input_size=input_size)


@dataclass
class PackageResult:
    out: Path
    converted: CoreMLResult
    seconds: float

    def warnings(self) -> list[str]:
        return self.converted.warnings()

    def summary(self) -> str:
        function = self.converted.model._mil_program.functions["main"]
        kinds = Counter(op.op_type for op in function.operations if op.op_type != "const")
        shown = ", ".join(f"{n} {t}" for t, n in kinds.most_common())
        size = sum(p.stat().st_size for p in self.out.rglob("*") if p.is_file())
        return (f"built {self.out} ({shown}) in {self.seconds:.2f} s; {size / 1e6:.1f} MB")


def build_package(source: str | Path, out: str | Path, options: CoreMLOptions = CoreMLOptions(), *,
                  input_size: tuple[int, int] | None = None) -> PackageResult:
    start = time.perf_counter()
    graph = source_graph(source, input_size)
    try:
        converted = convert(graph, options)
    except ExportError as err:
        raise err.at(file=str(source))
    save(converted.model, out)
    return PackageResult(out=Path(out), converted=converted, seconds=time.perf_counter() - start)
