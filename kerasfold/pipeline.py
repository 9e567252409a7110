"""The one path from a model file to a target, shared by export and verify:

    read_model (readers/) -> lower (kinds/) -> run_passes (passes/) -> emit + write (targets/mps)

numpy and h5py only; nothing here imports TensorFlow or Keras. The kinds, passes and the MPS
target are imported when first used (~80 ms): an export starts its read first, in a child
process, and that import runs beside it.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .digest import file_sha256
from .errors import ExportError
from .readers import read_model, start_read, with_deferred_kernels
from .readers.layers import Model
from .targets.mps.out_dir import start_out_check

if TYPE_CHECKING:
    from .forked import Pending
    from .graph import Graph
    from .targets.mps.float16 import HalfStats
    from .targets.mps.writer import Progress

from . import DTYPES  # noqa: E402  (re-exported: kerasfold.pipeline.DTYPES)


@dataclass(frozen=True)
class ExportOptions:
    dtype: str = "float32"                        # weights; biases are always float32
    forge_names: bool = False                     # conv files named conv1..convN (Forge's YOLO)
    input_size: tuple[int, int] | None = None     # for models saved with an unknown H, W
    fold: bool = True                             # False: BN and activations stay separate entries
    allow_opaque: bool = False                    # unknown weightless layers: opaque entries, not errors


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


# The last model file read when asked to remember it (one entry, by resolved path): ``--verify``
# lowers the file again, unfolded, right after the export read it. Kept until another file is
# read; a plain export remembers nothing (its raw weights are freed once lowered).
_last_read: dict[Path, Model] = {}
_read_lock = threading.Lock()


def read(model: str | Path, *, reuse: bool = False, remember: bool = False) -> Model:
    """``read_model``, remembered with ``remember`` or ``reuse``. ``reuse``: the model last read
    from this path when the file still has the same sha256 (hashing costs a third of reading),
    else a new read. The weights are made read-only: nothing downstream writes into them (passes
    replace arrays), and a reader sharing them could not be handed a changed copy. (A lazy read,
    never remembered, is ``readers.start_read``'s, as :func:`export` starts it.)"""
    path = Path(model)
    with _read_lock:                      # verify reads from two threads (kerasfold.verify.check)
        cached = _last_read.get(path.resolve())
        if reuse and cached is not None:
            try:
                if file_sha256(path) == cached.source.sha256:
                    return cached
            except OSError:               # gone or unreadable: read_model says so in one line
                pass
        raw = read_model(path)
        for layer in raw:
            for array in layer.weights.values():
                array.flags.writeable = False
        _last_read.clear()
        if remember or reuse:
            _last_read[path.resolve()] = raw
        return raw


def prepare(model: str | Path, *, fold: bool = True, input_size: tuple[int, int] | None = None,
            allow_opaque: bool = False, reuse: bool = False, remember: bool = False) -> Graph:
    """Read, lower and rewrite a model: the graph of typed operations every target starts from.
    ``fold=False`` keeps BatchNormalization (as a per-channel scale/bias) and activations apart;
    ``allow_opaque`` lets unknown weightless layers through as opaque operations; ``reuse``: the
    last read of the same bytes instead of reading again; ``remember``: keep this read for that
    (:func:`read`)."""
    return _rewritten(model, read(model, reuse=reuse, remember=remember), fold, input_size, allow_opaque)


def _rewritten(model: str | Path, raw: Model, fold: bool, input_size: tuple[int, int] | None,
               allow_opaque: bool) -> Graph:
    from .kinds import lower
    from .passes import run_passes
    try:
        return run_passes(lower(raw, input_size, allow_opaque), fold=fold)
    except ExportError as err:
        raise err.at(file=str(model))


def _stages() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The MPS target's ``emit`` and ``write_export``, the kinds and passes imported with them."""
    from . import kinds, passes  # noqa: F401  (imported here: beside an export's read)
    from .targets.mps.entries import emit
    from .targets.mps.writer import write_export
    return emit, write_export


def export(model: str | Path, out: str | Path, options: ExportOptions = ExportOptions(), *,
           progress: Progress | None = None, remember: bool = False,
           out_check: Pending | None = None, hashed: Pending | None = None) -> ExportResult:
    """Export ``model`` to ``out``; raises :class:`ExportError` on bad input, leaving ``out`` as it was.
    ``progress(entries written, entries, bytes written)`` is called as the files are written;
    ``remember`` keeps the model's read for a verification that follows (:func:`read`);
    ``out_check``: OUT's check (``out_dir.start_out_check(out)``) when the caller started it;
    ``hashed``: the model file's sha256 when the caller started it (``readers.start_read``)."""
    if options.dtype not in DTYPES:
        raise ExportError(f"expected dtype in {DTYPES}, received {options.dtype!r}")
    start = time.perf_counter()
    # First OUT's check and the read, each forked while no thread of ours runs (they need the
    # other core, not the GIL); then the rest of kerasfold is imported beside them. A plain
    # export streams: each large kernel is read, folded, laid out and written in turn (peak
    # memory: about one layer). Kept for a verification, or from a .keras zip, the read is whole,
    # and its large kernels go through the same fused pass (no whole float64 copies).
    out_check = out_check or start_out_check(Path(out))
    reading = None
    try:
        reading = None if remember else start_read(model, lazy=True, hashed=hashed)
        emit, write_export = _stages()
        raw = reading.result() if reading is not None else read(model, remember=True)
    except BaseException:
        if reading is not None:
            reading.cancel()
        out_check.cancel()
        raise
    try:
        graph = _rewritten(model, with_deferred_kernels(raw), options.fold, options.input_size, options.allow_opaque)
        entries = emit(graph, options.dtype)
        manifest = write_export(Path(out), graph, entries, dtype=options.dtype, forge_names=options.forge_names,
                                progress=progress, out_check=out_check)
    except ExportError as err:
        raise err.at(file=str(model))           # OUT's errors name OUT already
    finally:
        out_check.cancel()
        raw.close()
    half = [e.half for e in entries if e.half is not None]
    return ExportResult(out=Path(out), manifest=manifest, seconds=time.perf_counter() - start, half=half)
