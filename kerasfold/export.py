"""The export path, one way: file -> graph -> checks -> passes -> entries -> files.

numpy and h5py only; nothing here imports TensorFlow or Keras.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .emit import emit
from .errors import ExportError
from .graph import Graph
from .passes import run_passes
from .precision import HalfStats, half_stats
from .passes.lambdas import recognise_lambdas
from .readers import read_model
from .shapes import infer_shapes
from .validate import check_graph
from .writer import write_export

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExportOptions:
    dtype: str = "float32"                        # weights; biases are always float32
    forge_names: bool = False                     # conv files named conv1..convN (Forge's YOLO)
    input_size: tuple[int, int] | None = None     # for models saved with an unknown H, W
    fold: bool = True                             # False: BN and activations stay separate entries


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    seconds: float
    half: list[HalfStats] = field(default_factory=list)     # float16 exports: per-layer underflow

    def warnings(self) -> list[str]:
        """One line per layer whose float16 weights flush to zero or turn subnormal."""
        return [s.line() for s in self.half if s.flushed or s.subnormal]

    def summary(self) -> str:
        layers = self.manifest["layers"]
        kinds = ", ".join(f"{n} {t}" for t, n in Counter(e["type"] for e in layers).items())
        folded = sum(len(e["folded"]) for e in layers)
        fused = sum(1 for e in layers if "weights" in e and e["activation"]["type"] != "linear")
        size = sum(_nbytes(e[k]) for e in layers for k in ("weights", "bias") if k in e)
        return (f"exported {len(layers)} layers ({kinds}); {folded} BatchNormalization folded, "
                f"{fused} activations fused; {size / 1e6:.1f} MB to {self.out} in {self.seconds:.2f} s")


def _nbytes(info: dict[str, Any]) -> int:
    count = 1
    for d in info["shape"]:
        count *= d
    return count * (2 if info["dtype"] == "float16" else 4)


def apply_input_size(graph: Graph, size: tuple[int, int] | None) -> None:
    for name in graph.inputs:
        node = graph[name]
        shape = node.output_shape
        if shape is None:
            raise ExportError("expected the input's shape in the model config, received none",
                              layer=name, file=graph.source.file)
        if size is not None and len(shape) == 3:
            if any(s is not None and s != t for s, t in zip(shape[:2], size)):
                raise ExportError(f"expected --input-size to match the model's input {shape[:2]}, "
                                  f"received {size}", layer=name)
            node.output_shape = (size[0], size[1], shape[2])


def prepare(model: str | Path, options: ExportOptions = ExportOptions()) -> Graph:
    """Read, check and rewrite a model: the folded graph, ready to emit."""
    graph = read_model(model)
    try:
        apply_input_size(graph, options.input_size)
        recognise_lambdas(graph)
        infer_shapes(graph)
        check_graph(graph)
        return run_passes(graph, fold=options.fold)
    except ExportError as err:
        raise err.at(file=str(model))


def export(model: str | Path, out: str | Path, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export ``model`` to ``out``; raises :class:`ExportError` on bad input, leaving ``out`` as it was."""
    if options.dtype not in DTYPES:
        raise ExportError(f"expected dtype in {DTYPES}, received {options.dtype!r}")
    start = time.perf_counter()
    graph = prepare(model, options)
    try:
        entries = emit(graph)
        half = half_stats(entries) if options.dtype == "float16" else []
        for entry, stats in zip((e for e in entries if "weights" in e.tensors), half):
            entry.meta["float16"] = {"flushed_to_zero": stats.flushed, "subnormal": stats.subnormal}
    except ExportError as err:
        raise err.at(file=str(model))
    manifest = write_export(Path(out), graph, entries, dtype=options.dtype, forge_names=options.forge_names)
    return ExportResult(out=Path(out), manifest=manifest, seconds=time.perf_counter() - start, half=half)
