"""Convert the MIL program into an ML Program model, describe it, and save it atomically.

An existing OUT is replaced only when it is an ``.mlpackage`` (``Manifest.json`` and ``Data``)
or an empty directory; anything else is refused, as for the MPS target's OUT.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ... import __version__
from ...errors import ExportError
from ...graph import Graph
from ..mps.atomic import staged_directory
from ..mps.float16 import HalfStats, half_stats
from .ct_env import import_coremltools
from .program import Built, build

TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15",
           "tvOS15", "tvOS16", "tvOS17", "tvOS18", "watchOS8", "watchOS9", "watchOS10", "watchOS11")
COLORS = ("RGB", "BGR")
PACKAGE_ENTRIES = {"Manifest.json", "Data"}


@dataclass(frozen=True)
class CoreMLOptions:
    dtype: str = "float32"                      # compute precision (and weight storage)
    target: str = "iOS15"                       # minimum deployment target
    image: bool = False                         # inputs as images (CVPixelBuffer)
    scale: float = 1.0                          # image preprocessing: x * scale + bias
    bias: tuple[float, ...] = (0.0,)            # one value, or one per channel
    color: str = "RGB"                          # the channel order the model expects
    labels: tuple[str, ...] = ()                # class labels (metadata)
    author: str | None = None
    description: str | None = None


@dataclass
class CoreMLResult:
    model: Any
    built: Built
    half: list[HalfStats] = field(default_factory=list)

    def warnings(self) -> list[str]:
        return [s.line() for s in self.half if s.flushed or s.subnormal]


class _Weights:
    """Each weight as the constant the program holds: float32 (the exact fold rounded once, the
    MPS files' values), or for float16 the correctly rounded half, stored as a float32 that
    coremltools' float16 pass then casts exactly; the half range checked as for MPS."""

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.stats: dict[str, HalfStats] = {}

    def __call__(self, layer: str, a: np.ndarray) -> np.ndarray:
        if self.dtype == "float32":
            return np.asarray(a, np.float32)
        s = half_stats(layer, np.asarray(a))              # raises beyond half range, biases included
        if np.ndim(a) < 2:                                 # counts as MPS reports them: weights only
            return np.asarray(a).astype(np.float16).astype(np.float32)
        old = self.stats.get(layer)
        if old is not None:
            s = HalfStats(layer, old.count + s.count, old.flushed + s.flushed, old.subnormal + s.subnormal)
        self.stats[layer] = s
        return np.asarray(a).astype(np.float16).astype(np.float32)


def _metadata(model: Any, graph: Graph, built: Built, options: CoreMLOptions) -> None:
    src = graph.source
    model.author = options.author or f"kerasfold {__version__}"
    model.short_description = options.description or (
        f"{src.file} ({src.flavour}, Keras {src.keras_version}): BatchNormalization folded by kerasfold "
        f"{__version__}, {options.dtype}")
    model.version = src.sha256[:12]
    meta = model.user_defined_metadata
    meta["kerasfold_version"] = __version__
    meta["source_file"] = src.file
    meta["source_sha256"] = src.sha256
    meta["source_keras_version"] = str(src.keras_version)
    if options.labels:
        meta["labels"] = json.dumps(list(options.labels))
    if options.image:
        meta["kerasfold_image_scale"] = repr(float(options.scale))
        meta["kerasfold_image_bias"] = json.dumps([float(b) for b in options.bias])
    for keras_name, name in built.inputs.items():
        shape = "x".join(map(str, built.input_shapes[name]))
        model.input_description[name] = (
            f"Keras input '{keras_name}': an image, {options.color}, scaled by {options.scale:g} plus "
            f"{', '.join(f'{b:g}' for b in options.bias)}" if options.image else
            f"Keras input '{keras_name}', {shape} (batch, height, width, channels as in Keras)")
    for keras_name, name in built.outputs.items():
        model.output_description[name] = f"Keras output '{keras_name}', in Keras' channels-last order"


@contextmanager
def _quiet_passes() -> Iterator[None]:
    """coremltools draws a progress bar per pass pipeline on stderr (tqdm), which TQDM_DISABLE
    silences only when tqdm was imported after it is set: the bar is swapped for the plain loop."""
    from coremltools.converters.mil.mil.passes import pass_pipeline
    bar = pass_pipeline.tqdm
    pass_pipeline.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        pass_pipeline.tqdm = bar


def convert(graph: Graph, options: CoreMLOptions) -> CoreMLResult:
    """The ML Program model of ``graph`` (not saved)."""
    if options.dtype not in ("float32", "float16"):
        raise ExportError(f"expected dtype float32 or float16, received {options.dtype!r}")
    if options.target not in TARGETS:
        raise ExportError(f"expected a deployment target in {', '.join(TARGETS)}, received {options.target!r}")
    if options.color not in COLORS:
        raise ExportError(f"expected a colour layout in {COLORS}, received {options.color!r}")
    ct = import_coremltools()
    target = getattr(ct.target, options.target)
    weights = _Weights(options.dtype)
    built = build(graph, weights, target=target, image=options.image)
    inputs = None
    if options.image:
        inputs = []
        for name, shape in built.input_shapes.items():
            channels = shape[1]
            bias = list(options.bias) if len(options.bias) == channels else [options.bias[0]] * channels
            if len(options.bias) not in (1, channels):
                raise ExportError(f"expected --bias with 1 or {channels} values, received {len(options.bias)}")
            layout = ct.colorlayout.GRAYSCALE if channels == 1 else getattr(ct.colorlayout, options.color)
            inputs.append(ct.ImageType(name=name, shape=shape, scale=float(options.scale),
                                       bias=bias if channels > 1 else bias[0], color_layout=layout,
                                       channel_first=True))
    precision = ct.precision.FLOAT32 if options.dtype == "float32" else ct.precision.FLOAT16
    with _quiet_passes():
        model = ct.convert(built.program, convert_to="mlprogram", minimum_deployment_target=target,
                           compute_precision=precision, inputs=inputs)
    _metadata(model, graph, built, options)
    return CoreMLResult(model=model, built=built, half=list(weights.stats.values()))


def check_package_dir(out: Path) -> None:
    """Refuse to replace anything but an empty directory or an ``.mlpackage``."""
    if out.suffix != ".mlpackage":
        raise ExportError("expected OUT to end in .mlpackage (Core ML's package), received "
                          f"'{out.name}'", file=str(out))
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError("expected OUT to be a directory, received a file", file=str(out))
    present = {p.name for p in out.iterdir()}
    if present and not (present <= PACKAGE_ENTRIES and "Manifest.json" in present):
        others = sorted(present - PACKAGE_ENTRIES) or sorted(present)
        raise ExportError("expected OUT to be empty or a previous .mlpackage, received a directory holding "
                          f"{', '.join(others[:3])}; refusing to replace it", file=str(out))


def save(model: Any, out: str | Path) -> None:
    """Save ``model`` as ``out`` (an ``.mlpackage`` directory), replacing it as a whole, atomically."""
    out = Path(out)
    if out.is_symlink():
        out = out.resolve()
    check_package_dir(out)
    with staged_directory(out, check=lambda _: check_package_dir(out)) as stage:
        inner = stage / "model.mlpackage"
        model.save(str(inner))
        for child in inner.iterdir():
            os.replace(child, stage / child.name)
        shutil.rmtree(inner)
