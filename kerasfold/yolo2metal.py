"""Command line: ``python -m kerasfold.yolo2metal MODEL OUT [--verify]``. Parses and reports only."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from .cli import leave, parse_size, report, run, single_threaded_blas
from .digest import file_sha256
from .forked import beside
from .targets.mps.out_dir import start_out_check
from .progress import progress_line
from . import DTYPES

PROG = "kerasfold"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Export a Keras model (.h5, .keras) to Metal weight files: "
        "BatchNormalization folded, kernels in OHWI, manifest.json describing the whole graph.",
        epilog="exit codes: 0 success, 1 parity check failed, 2 bad input, 3 internal error")
    p.add_argument("model", help="Keras model file: legacy .h5 (Keras 2 or 3) or .keras")
    p.add_argument("out", help="output directory; replaced as a whole and atomically")
    p.add_argument("--verify", action="store_true",
                   help="after exporting, rebuild the model from the written files with Keras and "
                   "compare it with the original (needs TensorFlow)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weight files' type (biases are always float32); float16 fails on a weight "
                   "beyond half range and reports weights that flush to zero or turn subnormal")
    p.add_argument("--tolerance", type=float,
                   help="largest relative error --verify accepts (default 1e-5 for float32 "
                   "exports, 1e-2 for float16)")
    p.add_argument("--no-fold", action="store_true",
                   help="keep BatchNormalization and activations as entries of their own")
    p.add_argument("--forge-names", action="store_true",
                   help="name convolution files conv1..convN in graph order, as Forge's YOLO "
                   "example loads them")
    p.add_argument("--input-size", type=parse_size, metavar="HxW",
                   help="input height and width, for models saved without a fixed input size")
    p.add_argument("--allow-opaque", action="store_true",
                   help="write a layer kerasfold cannot run (an unknown weightless layer, an "
                   "unrecognised Lambda) as an opaque keras_layer entry instead of failing; "
                   "--verify then cannot check the export")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def export_options(args: argparse.Namespace) -> Any:
    """The :class:`ExportOptions` the parsed command line asks for (also the build phase's)."""
    from .pipeline import ExportOptions
    return ExportOptions(dtype=args.dtype, forge_names=args.forge_names, input_size=args.input_size,
                         fold=not args.no_fold, allow_opaque=args.allow_opaque)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    if not args.verify:
        single_threaded_blas()

    def job() -> int:
        # OUT's check and the model's sha256 (~45 ms of CPU for tiny-yolo-voc) first, in child
        # processes that run on the other core while this one imports numpy
        out_check = start_out_check(Path(args.out))
        hashed = None if args.verify else beside(file_sha256, Path(args.model))
        line = None
        try:
            from .pipeline import export                     # numpy from here on
            options = export_options(args)
            line = progress_line(PROG, quiet=args.quiet)
            result = export(args.model, args.out, options, progress=line, remember=args.verify,
                            out_check=out_check, hashed=hashed)
        finally:
            out_check.cancel()
            if hashed is not None:
                hashed.cancel()
            if line is not None:
                line.close()

        def verify() -> Any:
            from .verify import verify_export                # TensorFlow only from here on
            return verify_export(args.model, args.out, tolerance=args.tolerance, input_size=args.input_size)

        return report(PROG, result, quiet=args.quiet, verify=verify if args.verify else None)

    return run(job, PROG)


def command() -> NoReturn:
    """The console script and ``python -m``: :func:`main`, then a quick exit (``cli.leave``)."""
    leave(main())


if __name__ == "__main__":
    command()
