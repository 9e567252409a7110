"""Parity check: the model rebuilt from the written files against the original, on seeded inputs.

``python -m kerasfold.verify MODEL OUT`` proves an existing export; ``yolo2metal --verify`` runs it
after exporting. The original is loaded with Keras (safe mode); where the installed Keras cannot
load the file, it is rebuilt, BatchNormalization included, from the graph instead.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cli import EXIT_OK, EXIT_PARITY, parse_size, run
from .exported import Export, load_export
from .export import apply_input_size
from .readers import read_model
from .passes.lambdas import recognise_lambdas
from .shapes import infer_shapes

DEFAULT_TOLERANCE = 1e-5


@dataclass
class ParityReport:
    tolerance: float
    max_abs: float
    max_rel: float
    samples: int
    original: str                         # how the original model was obtained
    compute: str = "float64"
    hash_mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.tolerance and not self.hash_mismatches

    def text(self) -> str:
        lines = [f"note: {n}" for n in self.notes]
        if self.hash_mismatches:
            lines.append("sha256 mismatch (file changed after export): " + ", ".join(self.hash_mismatches))
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"parity {verdict}: max abs error {self.max_abs:.3g}, max relative error "
                     f"{self.max_rel:.3g} (tolerance {self.tolerance:g}) on {self.samples} seeded inputs, "
                     f"computed in {self.compute}, original {self.original}")
        return "\n".join(lines)


def seeded_inputs(export: Export, samples: int, seed: int) -> list[np.ndarray]:
    """Uniform [0, 1) images, one array per model input, the same for every run."""
    rng = np.random.default_rng(seed)
    return [rng.random((samples, *spec["shape"]), dtype=np.float32) for spec in export.manifest["inputs"]]


def load_original(model: Path, export: Export, notes: list[str]) -> tuple[Any, str]:
    """Keras' own loader (safe mode, nothing executed); the graph rebuild when it cannot."""
    from .keras_env import import_keras
    keras = import_keras()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return (keras.models.load_model(model, compile=False, safe_mode=True),
                    f"loaded by Keras {keras.__version__}")
    except Exception as err:             # any loader failure: say so, then use the graph instead
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        notes.append(f"Keras {keras.__version__} cannot load {model.name} ({reason}); "
                     "rebuilt the original, BatchNormalization included, from the graph")
    return rebuild_original(model, export), "rebuilt from the graph"


def rebuild_original(model: Path, export: Export) -> Any:
    from .rebuild import from_graph
    graph = read_model(model)
    shapes = {s["name"]: tuple(s["shape"]) for s in export.manifest["inputs"]}
    for name in graph.inputs:
        graph[name].output_shape = shapes[name]
    recognise_lambdas(graph)
    infer_shapes(graph)
    return from_graph(graph, shapes)


def _outputs(model: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    dtype = model.inputs[0].dtype
    xs = [x.astype(dtype) for x in xs]
    with warnings.catch_warnings():         # Keras warns when a loaded model's input nesting differs
        warnings.simplefilter("ignore")
        ys = model(xs if len(xs) > 1 else xs[0], training=False)
    return [np.asarray(y, dtype=np.float64) for y in (ys if isinstance(ys, (list, tuple)) else [ys])]


def verify_export(model: str | Path, out: str | Path, *, tolerance: float = DEFAULT_TOLERANCE,
                  samples: int = 2, seed: int = 0, input_size: tuple[int, int] | None = None,
                  original: str = "auto", compute: str = "float64") -> ParityReport:
    """Compare the export in ``out`` with ``model``. ``original``: "auto" (Keras' loader, graph
    rebuild as fallback) or "graph" (always rebuild from the graph).

    ``compute`` "float64" (default) runs both models in double precision on the files' float32
    weights, so the error measured is the export's own (weight rounding, or a wrong file), not
    float32 arithmetic noise, which reaches 1e-5 relative on 50-layer networks by itself;
    "float32" runs both as Keras would."""
    from .keras_env import floatx, with_dtype
    from .rebuild import from_export
    model, export = Path(model), load_export(out)
    notes: list[str] = []
    if input_size is not None:
        for spec in export.manifest["inputs"]:
            spec["shape"][:2] = list(input_size)
    with floatx(compute):
        rebuilt = from_export(export)
        if original == "graph":
            reference, how = rebuild_original(model, export), "rebuilt from the graph"
        else:
            reference, how = load_original(model, export, notes)
            reference = with_dtype(reference, compute)
    xs = seeded_inputs(export, samples, seed)
    got, want = _outputs(rebuilt, xs), _outputs(reference, xs)
    max_abs = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
    scale = max(float(np.max(np.abs(w))) for w in want) or 1.0
    return ParityReport(tolerance=tolerance, max_abs=max_abs, max_rel=max_abs / scale, samples=samples,
                        original=how, compute=compute, hash_mismatches=export.hash_mismatches, notes=notes)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kerasfold.verify", description="Prove an export: rebuild the model from OUT's files "
        "and compare its predictions with the original model's.",
        epilog="exit codes: 0 parity holds, 1 parity failed, 2 bad input, 3 internal error")
    p.add_argument("model", help="the original Keras model file (.h5 or .keras)")
    p.add_argument("out", help="the export directory (manifest.json + .bin files)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest accepted error relative to the largest output magnitude "
                   f"(default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--samples", type=int, default=2, help="seeded inputs to compare (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    p.add_argument("--input-size", type=parse_size, metavar="HxW",
                   help="input height and width for models without a fixed input size")
    p.add_argument("--compute", choices=("float64", "float32"), default="float64",
                   help="precision both models run in (default float64: measures the files, not "
                   "float32 arithmetic noise)")
    p.add_argument("--original", choices=("auto", "graph"), default="auto",
                   help="how to get the original model: Keras' loader with the graph rebuild as "
                   "fallback (auto), or always the graph rebuild")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def job() -> int:
        report = verify_export(args.model, args.out, tolerance=args.tolerance, samples=args.samples,
                               seed=args.seed, input_size=args.input_size, original=args.original,
                               compute=args.compute)
        print(report.text())
        return EXIT_OK if report.passed else EXIT_PARITY

    return run(job, "kerasfold.verify")


if __name__ == "__main__":
    sys.exit(main())
