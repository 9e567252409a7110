"""Parity check: the network as written against the original model, on seeded inputs.

``python -m kerasfold.verify MODEL OUT`` proves an existing export; ``yolo2metal --verify`` runs it
after exporting. Two independent checks:

- **parity** (TensorFlow): a Keras model rebuilt from the written files against the original
  loaded by Keras in safe mode (or, where Keras cannot load the file, rebuilt, BatchNormalization
  included, from the graph);
- **reference** (numpy only, always): kerasfold's reference executor runs the written files as the
  device would, against the same executor on an *unfolded* export of the original (BatchNormalization
  and activations as entries of their own). Without TensorFlow this is the only check.

When a check fails, the report names the first layer whose output diverges.
"""
from __future__ import annotations

import argparse
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn

import numpy as np

from ..cli import EXIT_OK, EXIT_PARITY, leave, parse_size, run
from ..errors import ExportError, MissingDependency, UnsupportedLayer
from ..graph import Graph
from ..kinds.lambdas import function_name
from ..pipeline import prepare, read
from ..targets.mps.read import Export, load_export
from . import blas
from .reference import run as run_reference

DEFAULT_TOLERANCE = 1e-5
# A float16 export is compared with the float32 original: half rounding (11-bit significand)
# costs ~4e-3 relative on tiny-yolo-voc; 1e-2 flags anything worse than that.
DEFAULT_TOLERANCES = {"float32": DEFAULT_TOLERANCE, "float16": 1e-2}


@dataclass
class Check:
    label: str                            # "parity" (Keras) or "reference" (numpy)
    max_abs: float
    max_rel: float
    against: str                          # what the export was compared with
    divergence: str | None = None         # the first layer that diverges, when the check fails


@dataclass
class ParityReport:
    tolerance: float
    samples: int
    checks: list[Check]
    compute: str = "float64"
    hash_mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def _first(self) -> Check:
        return next((c for c in self.checks if c.label == "parity"), self.checks[0])

    @property
    def max_abs(self) -> float:
        return self._first().max_abs

    @property
    def max_rel(self) -> float:
        return self._first().max_rel

    @property
    def original(self) -> str:
        return self._first().against

    def check_passed(self, check: Check) -> bool:
        return check.max_rel <= self.tolerance

    @property
    def passed(self) -> bool:
        return all(self.check_passed(c) for c in self.checks) and not self.hash_mismatches

    def text(self) -> str:
        lines = [f"note: {n}" for n in self.notes]
        if self.hash_mismatches:
            lines.append("sha256 mismatch (file changed after export): " + ", ".join(self.hash_mismatches))
        for c in self.checks:
            verdict = "PASS" if self.check_passed(c) and not self.hash_mismatches else "FAIL"
            lines.append(f"{c.label} {verdict}: max abs error {c.max_abs:.3g}, max relative error "
                         f"{c.max_rel:.3g} (tolerance {self.tolerance:g}) on {self.samples} seeded inputs, "
                         f"computed in {self.compute}, original {c.against}")
            if c.divergence:
                lines.append(f"  first divergence: {c.divergence}")
        return "\n".join(lines)


def seeded_inputs(export: Export, samples: int, seed: int) -> list[np.ndarray]:
    """Uniform [0, 1) images, one array per model input, the same for every run."""
    rng = np.random.default_rng(seed)
    return [rng.random((samples, *spec["shape"]), dtype=np.float32) for spec in export.manifest["inputs"]]


def errors(got: list[np.ndarray], want: list[np.ndarray]) -> tuple[float, float]:
    """(max abs error, max abs error / largest |want|) over a list of output pairs."""
    max_abs = max(float(np.max(np.abs(g.astype(np.float64) - w))) for g, w in zip(got, want))
    scale = max(float(np.max(np.abs(w))) for w in want) or 1.0
    return max_abs, max_abs / scale


def layer_errors(export: Export, got: dict[str, np.ndarray],
                 want: Callable[[str], np.ndarray | None]) -> list[tuple[str, float, float]]:
    """(entry name, max abs error, max relative error) of every entry, in manifest order, whose
    output can be compared: ``got`` holds it and ``want`` knows, with the same shape, the output of
    the original layer it reproduces (``output_of``; ``want`` returns None where unknown)."""
    rows = []
    for entry in export.layers:
        reproduces = entry.get("output_of")
        if not reproduces or entry["name"] not in got:
            continue
        expected = want(reproduces)
        if expected is None or expected.shape != got[entry["name"]].shape:
            continue
        rows.append((entry["name"], *errors([got[entry["name"]]], [expected])))
    return rows


def first_divergence(export: Export, got: dict[str, np.ndarray], want: Callable[[str], np.ndarray | None],
                     tolerance: float) -> str | None:
    """The first entry (manifest order) whose output is off by more than ``tolerance`` relative to
    the original layer it reproduces (see :func:`layer_errors`)."""
    for name, max_abs, max_rel in layer_errors(export, got, want):
        if max_rel > tolerance:
            reproduces = next(e["output_of"] for e in export.layers if e["name"] == name)
            also = f" (reproduces '{reproduces}')" if reproduces != name else ""
            return f"layer '{name}'{also}: max abs error {max_abs:.3g}, max relative error {max_rel:.3g}"
    return None


# -- reference: numpy only ---------------------------------------------------------------------

def by_origin(plain: Graph, xs: list[np.ndarray], compute: str) -> Callable[[str], np.ndarray | None]:
    """Every node's output of ``plain`` (the original's unfolded graph) run by the reference
    executor, looked up by the original layer it is the output of (what ``output_of`` names)."""
    outputs = run_reference(plain, xs, dtype=compute, keep=True)
    return {plain.output_of(n.name): outputs[n.name] for n in plain}.get


def run_files(export: Export, files: Graph, xs: list[np.ndarray], compute: str,
              keep: bool = False) -> dict[str, np.ndarray]:
    """The reference executor on the export's network as decoded once (``export.graph()``),
    errors naming the export."""
    try:
        return run_reference(files, xs, dtype=compute, keep=keep)
    except ExportError as err:
        raise err.at(file=str(export.root))


def reference_check(model: Path, export: Export, files: Graph, xs: list[np.ndarray], tolerance: float,
                    compute: str) -> Check:
    """The files (``files``: the export decoded) run by the numpy reference executor, against the
    same executor on the original's unfolded graph, in memory (BN as a per-channel scale/bias,
    activations as nodes of their own), lowered from the read the export just made when the
    file's sha256 is unchanged."""
    size = tuple(export.manifest["inputs"][0]["shape"][:2]) if len(export.manifest["inputs"]) == 1 else None
    plain = prepare(model, fold=False, input_size=size if size and len(size) == 2 else None, reuse=True)
    got = run_files(export, files, xs, compute)
    want = run_reference(plain, xs, dtype=compute)
    outputs = list(export.manifest["outputs"])
    shapes = [tuple(got[o].shape) for o in outputs], [tuple(w.shape) for w in want.values()]
    if shapes[0] != shapes[1]:
        raise ExportError(f"expected an export of {model.name} (outputs shaped {shapes[1]}), received "
                          f"one whose outputs are shaped {shapes[0]}", file=str(export.root))
    max_abs, max_rel = errors([got[o] for o in outputs], list(want.values()))
    divergence = None
    if max_rel > tolerance:
        got_all = run_files(export, files, xs, compute, keep=True)
        divergence = first_divergence(export, got_all, by_origin(plain, xs, compute), tolerance)
    return Check("reference", max_abs, max_rel, "the unfolded graph run by kerasfold's numpy executor",
                 divergence)


# -- parity: Keras ---------------------------------------------------------------------------

def load_original(model: Path, export: Export, notes: list[str], dtype: str) -> tuple[Any, str]:
    """Keras' own loader (safe mode, nothing executed), the model computing in ``dtype``; the graph
    rebuild when it cannot."""
    from .keras_env import import_keras, load_h5_in, with_dtype
    keras = import_keras()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_h5_in(model, dtype)
            if loaded is None:
                loaded = keras.models.load_model(model, compile=False, safe_mode=True)
    except Exception as err:             # any loader failure: say so, then use the graph instead
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        notes.append(f"Keras {keras.__version__} cannot load {model.name} ({reason}); "
                     "rebuilt the original, BatchNormalization included, from the graph")
        return rebuild_original(model, export), "rebuilt from the graph"
    return with_dtype(loaded, dtype), f"loaded by Keras {keras.__version__}"


def rebuild_original(model: Path, export: Export) -> Any:
    from .rebuild import from_graph
    shapes = {s["name"]: tuple(s["shape"]) for s in export.manifest["inputs"]}
    try:
        return from_graph(read(model, reuse=True), shapes)
    except ExportError as err:
        raise err.at(file=str(model))


def _outputs(model: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    dtype = model.inputs[0].dtype
    xs = [x.astype(dtype) for x in xs]
    with warnings.catch_warnings():         # Keras warns when a loaded model's input nesting differs
        warnings.simplefilter("ignore")
        ys = model(xs if len(xs) > 1 else xs[0], training=False)
    return [np.asarray(y, dtype=np.float64) for y in (ys if isinstance(ys, (list, tuple)) else [ys])]


def _keras_layer_outputs(reference: Any, xs: list[np.ndarray]) -> Callable[[str], np.ndarray | None]:
    """Intermediate outputs of the original, by layer name (top-level layers only)."""
    import keras
    names = [layer.name for layer in reference.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(reference.inputs, [reference.get_layer(n).output for n in names])
    values = dict(zip(names, _outputs(probe, xs)))
    return values.get


def keras_check(model: Path, export: Export, files: Graph | Future, xs: list[np.ndarray], tolerance: float,
                compute: str, original: str, notes: list[str]) -> Check:
    """``files``: the export decoded (``export.graph()``), or its decoding under way."""
    from .keras_env import floatx
    from .rebuild import from_export
    with floatx(compute):
        if original == "graph":
            reference, how = rebuild_original(model, export), "rebuilt from the graph"
        else:
            reference, how = load_original(model, export, notes, compute)
        if isinstance(files, Future):
            files = files.result()
        # The original runs (TensorFlow's kernels, on its own threads, the GIL released) while
        # this thread builds the model from the files (Python): a core each.
        with ThreadPoolExecutor(max_workers=1) as pool:
            want = pool.submit(_outputs, reference, xs)
            rebuilt = from_export(export, graph=files)
            got = _outputs(rebuilt, xs)
            max_abs, max_rel = errors(got, want.result())
        divergence = None
        if max_rel > tolerance:
            every = dict(zip((e["name"] for e in export.layers),
                             _outputs(from_export(export, keep=True, graph=files), xs)))
            divergence = first_divergence(export, every, _keras_layer_outputs(reference, xs), tolerance)
    return Check("parity", max_abs, max_rel, how, divergence)


def refuse_opaque(export: Export) -> None:
    """An opaque entry (``--allow-opaque``) is a layer nothing can run: no check reaches past it."""
    for entry in export.layers:
        if entry["type"] == "keras_layer":
            what = entry.get("class_name", "?")
            if what == "Lambda":
                what = f"Lambda '{function_name(entry.get('config'))}'"
            raise UnsupportedLayer(f"expected an export kerasfold can run end to end, received the "
                                   f"opaque keras_layer entry of a {what}: the parity check cannot run "
                                   "through it", file=str(export.root), layer=entry["name"])


def beside(*args: Any) -> Check:
    """:func:`reference_check` on one BLAS thread: it runs beside TensorFlow's import and Keras'
    work, which need a core of their own (blas.py). Its sums then differ from a two-thread run's in
    the last bits of float64, far below any tolerance."""
    with blas.limited(1):
        return reference_check(*args)


def verify_export(model: str | Path, out: str | Path, *, tolerance: float | None = None,
                  samples: int = 2, seed: int = 0, input_size: tuple[int, int] | None = None,
                  original: str = "auto", compute: str = "float64", use_keras: bool = True) -> ParityReport:
    """Check the export in ``out`` against ``model``.

    ``original``: "auto" (Keras' loader, graph rebuild as fallback) or "graph". ``compute``
    "float64" (default) runs every model in double precision on the files' weights, so the error
    measured is the export's own (weight rounding, or a wrong file), not float32 arithmetic noise,
    which reaches 1e-5 relative on 50-layer networks by itself; "float32" runs them as an app
    would. ``use_keras`` False (or TensorFlow not installed) leaves the numpy reference check only.
    """
    model, export = Path(model), load_export(out)
    refuse_opaque(export)
    notes: list[str] = []
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCES.get(export.manifest.get("dtype", "float32"), DEFAULT_TOLERANCE)
    for spec in export.manifest["inputs"] if input_size is not None else []:
        if list(spec["shape"][:2]) != list(input_size):     # pads in the manifest are for its size
            raise ExportError(f"expected --input-size {spec['shape'][0]}x{spec['shape'][1]}, the size "
                              f"the export was made for, received {input_size[0]}x{input_size[1]}; "
                              "re-export with --input-size", file=str(out))
    xs = seeded_inputs(export, samples, seed)
    checks = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The files, read, hashed and decoded once for both checks, then the numpy check (it shares
        # nothing mutable with the Keras one) run in a thread beside this one, which imports
        # TensorFlow meanwhile (one Python thread, ~3 s): the Keras check takes the decoded files
        # when it needs them. Reported after the Keras check, as before.
        files = pool.submit(export.graph)
        check = beside if use_keras else reference_check
        reference = pool.submit(lambda: check(model, export, files.result(), xs, tolerance, compute))
        if use_keras:
            try:
                checks.append(keras_check(model, export, files, xs, tolerance, compute, original, notes))
            except MissingDependency:
                notes.append("TensorFlow is not installed: the numpy reference executor is the only check")
        else:
            notes.append("Keras check skipped: the numpy reference executor is the only check")
        try:
            checks.append(reference.result())
        except UnsupportedLayer as err:
            if not checks:
                raise                       # no check at all would be a pass that proves nothing
            notes.append(f"reference executor skipped: {err}")
    return ParityReport(tolerance=tolerance, samples=samples, checks=checks, compute=compute,
                        hash_mismatches=export.hash_mismatches, notes=notes)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kerasfold.verify", description="Prove an export: run the network from OUT's files "
        "(rebuilt in Keras, and in kerasfold's numpy reference executor) and compare it with the "
        "original model.",
        epilog="exit codes: 0 parity holds, 1 parity failed, 2 bad input, 3 internal error")
    p.add_argument("model", help="the original Keras model file (.h5 or .keras)")
    p.add_argument("out", help="the export directory (manifest.json + .bin files)")
    p.add_argument("--tolerance", type=float,
                   help="largest accepted error relative to the largest output magnitude "
                   "(default 1e-5 for a float32 export, 1e-2 for float16)")
    p.add_argument("--samples", type=int, default=2, help="seeded inputs to compare (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    p.add_argument("--input-size", type=parse_size, metavar="HxW",
                   help="the input size the export was made for (checked against the manifest)")
    p.add_argument("--compute", choices=("float64", "float32"), default="float64",
                   help="precision every model runs in (default float64: measures the files, not "
                   "float32 arithmetic noise)")
    p.add_argument("--original", choices=("auto", "graph"), default="auto",
                   help="how to get the original model: Keras' loader with the graph rebuild as "
                   "fallback (auto), or always the graph rebuild")
    p.add_argument("--reference-only", action="store_true",
                   help="skip the Keras check: numpy only (what happens without TensorFlow)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def job() -> int:
        report = verify_export(args.model, args.out, tolerance=args.tolerance, samples=args.samples,
                               seed=args.seed, input_size=args.input_size, original=args.original,
                               compute=args.compute, use_keras=not args.reference_only)
        print(report.text())
        return EXIT_OK if report.passed else EXIT_PARITY

    return run(job, "kerasfold.verify")


def command() -> NoReturn:
    """The console script and ``python -m``: :func:`main`, then a quick exit (``cli.leave``)."""
    leave(main())

