"""Proof of an ``.mlpackage`` on any platform: the saved ML Program, read back through coremltools'
loader, run by kerasfold's numpy evaluator (:mod:`.mlprogram`) against the reference executor.

- from a Keras model file, the reference is the model's *unfolded* graph (BatchNormalization and
  activations as nodes of their own), so the check covers the fold as well;
- from an export directory, the reference is the export's own network, and every weight tensor of
  the package must hold exactly the files' values (float32 packages);
- on macOS, Core ML itself (``MLModel.predict``) is compared too; elsewhere the report says why not.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..graph import Graph
from ..targets.coreml.program import io_names
from ..targets.mps.read import Export, load_export
from .check import DEFAULT_TOLERANCES, Check, ParityReport, errors
from .reference import run as run_reference


def constants(program: Any) -> list[np.ndarray]:
    """Every constant of the program's main function (weights, biases, parameters)."""
    return [np.asarray(op.outputs[0].val) for op in program.main.operations if op.op_type == "const"]


def precision(program: Any) -> str:
    """"float16" when the program holds half constants (coremltools' float16 compute precision)."""
    return "float16" if any(c.dtype == np.float16 for c in constants(program)) else "float32"


def preprocessing(program: Any) -> tuple[float, np.ndarray]:
    """An image input's (scale, bias), as kerasfold recorded them in the metadata."""
    meta = program.metadata
    return float(meta.get("kerasfold_image_scale", 1.0)), np.asarray(json.loads(meta.get("kerasfold_image_bias", "[0]")))


def _seeded(program: Any, graph: Graph, samples: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Seeded inputs for the reference (Keras' NHWC, one array per input) and the same inputs as
    the program takes them: NHWC MultiArrays, or for an image input whole pixel values 0..255, NCHW in
    the model's channel order (Core ML reorders a BGRA buffer itself), the reference then getting
    pixel * scale + bias."""
    rng = np.random.default_rng(seed)
    features = {f.name: f for f in program.inputs}
    _, names, _ = io_names(graph)
    xs, feeds = [], []
    for keras_name, shape in graph.inputs.items():
        feature = features[names[keras_name]]
        if feature.kind == "image":
            pixels = rng.integers(0, 256, (samples, *feature.shape[1:])).astype(np.float32)
            scale, bias = preprocessing(program)
            xs.append((pixels.transpose(0, 2, 3, 1) * np.float32(scale) + bias.astype(np.float32)).astype(np.float32))
            feeds.append(pixels)
        else:
            x = rng.random((samples, *shape), dtype=np.float32)
            xs.append(x)
            feeds.append(x)
    return xs, feeds


def weights_match(program: Any, export: Export | Path) -> list[str]:
    """Export entries none of whose program constants holds exactly its weight values (compared as
    sorted float32 bits, so the check is independent of layout). ``export``: loaded, or its folder."""
    if not isinstance(export, Export):
        export = load_export(export)
    consts: dict[int, list[np.ndarray]] = {}
    for a in constants(program):
        if a.dtype == np.float32 and a.size > 1:
            consts.setdefault(a.size, []).append(np.sort(a.ravel().view(np.uint32)))
    missing = []
    for entry in export.layers:
        if "weights" not in entry:
            continue
        want = np.sort(export.tensor(entry, "weights").astype(np.float32).ravel().view(np.uint32))
        if not any(np.array_equal(want, got) for got in consts.get(want.size, [])):
            missing.append(entry["name"])
    return missing


def verify_package(source: str | Path, package: str | Path, *, tolerance: float | None = None,
                   samples: int = 2, seed: int = 0, input_size: tuple[int, int] | None = None,
                   compute: str = "float64") -> ParityReport:
    from ..targets.coreml.build import verified_graph
    from .mlprogram import load_program, run as run_program

    source, package = Path(source), Path(package)
    program = load_program(package)
    dtype = precision(program)
    tolerance = DEFAULT_TOLERANCES[dtype] if tolerance is None else tolerance
    export = load_export(source) if source.is_dir() else None    # read, hashed and decoded once
    if export is not None:
        reference = verified_graph(export)
        against = "the export's files run by kerasfold's numpy reference executor"
    else:
        from ..pipeline import prepare
        reference = prepare(source, fold=False, input_size=input_size)
        against = "the unfolded graph run by kerasfold's numpy reference executor"
    xs, feeds = _seeded(program, reference, samples, seed)
    want = run_reference(reference, xs, dtype=compute)
    _, in_names, outputs = io_names(reference)
    got: dict[str, list[np.ndarray]] = {k: [] for k in outputs}
    for i in range(samples):
        feed = {name: f[i:i + 1] for name, f in zip(in_names.values(), feeds)}
        result = run_program(program, feed, dtype=compute)
        for keras_name, name in outputs.items():
            got[keras_name].append(result[name])
    got_all = [np.concatenate(got[k]) for k in outputs]
    want_all = [want[k] for k in outputs]
    shapes = [g.shape for g in got_all], [w.shape for w in want_all]
    if shapes[0] != shapes[1]:
        raise ExportError(f"expected the package's outputs shaped {shapes[1]}, received {shapes[0]}", file=str(package))
    max_abs, max_rel = errors(got_all, want_all)
    checks = [Check("coreml", max_abs, max_rel, against)]
    notes = []
    if export is not None and dtype == "float32":
        missing = weights_match(program, export)
        if missing:
            checks.append(Check("weights", float("inf"), float("inf"),
                                f"the export's files; no constant holds the weights of {', '.join(missing[:3])}"))
        else:
            notes.append("every weight tensor of the package holds exactly the export files' values")
    if sys.platform == "darwin":
        checks.append(_core_ml_check(package, reference, feeds, want_all, in_names, outputs))
    else:
        notes.append("Core ML's own prediction skipped: it runs on macOS only (numpy evaluator used)")
    return ParityReport(tolerance=tolerance, samples=samples, checks=checks, compute=compute, notes=notes)


def _core_ml_check(package: Path, reference: Graph, feeds: list[np.ndarray], want: list[np.ndarray],
                   in_names: dict[str, str], outputs: dict[str, str]) -> Check:
    """macOS: ``MLModel.predict`` on the same inputs (float32 MultiArrays; images as PIL images)."""
    from ..targets.coreml.ct_env import import_coremltools
    ct = import_coremltools()
    model = ct.models.MLModel(str(package))
    images = {d.name for d in model.get_spec().description.input if d.type.WhichOneof("Type") == "imageType"}
    got: dict[str, list[np.ndarray]] = {k: [] for k in outputs}
    for i in range(len(feeds[0])):
        feed: dict[str, Any] = {}
        for name, f in zip(in_names.values(), feeds):
            if name in images:
                from PIL import Image
                pixels = f[i].transpose(1, 2, 0).astype(np.uint8)
                feed[name] = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
            else:
                feed[name] = f[i:i + 1].astype(np.float32)
        result = model.predict(feed)
        for keras_name, name in outputs.items():
            got[keras_name].append(np.asarray(result[name]))
    max_abs, max_rel = errors([np.concatenate(got[k]) for k in outputs], want)
    return Check("core ml", max_abs, max_rel, "the same reference, predicted by Core ML on this Mac")
