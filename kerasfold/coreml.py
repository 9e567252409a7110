"""Command line: ``python -m kerasfold.coreml SOURCE OUT.mlpackage``. Parses and reports only.

SOURCE is a Keras model file (read, folded and laid out as for the MPS target) or a kerasfold
export directory (its files' weights exactly, their sha256 checked first).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from .cli import leave, parse_size, report, run
from .errors import ExportError

PROG = "kerasfold-coreml"


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if not values:
        raise ValueError(f"expected one number or one per channel, such as 0 or -1,-1,-1, received {text!r}")
    return values


def _target(text: str) -> str:
    from .targets.coreml.package import TARGETS
    for t in TARGETS:
        if t.lower() == text.lower():
            return t
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(TARGETS)}, received {text!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Build a Core ML ML Program (.mlpackage) from a Keras model or a kerasfold "
        "export: BatchNormalization folded exactly, activations fused, no TensorFlow.",
        epilog="exit codes: 0 success, 1 --verify failed, 2 bad input, 3 internal error")
    p.add_argument("source", help="Keras model file (.h5, .keras) or a kerasfold export directory")
    p.add_argument("out", help="the .mlpackage to write; replaced as a whole and atomically")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="compute precision and weight storage; float16 fails on a weight beyond half "
                   "range and reports weights that flush to zero or turn subnormal")
    p.add_argument("--minimum-deployment-target", type=_target, default="iOS15", metavar="TARGET",
                   help="iOS15 (default; with macOS12 the first ML Program targets), iOS16, ..., macOS12, ...")
    p.add_argument("--image-input", action="store_true",
                   help="take the input as an image (CVPixelBuffer), preprocessed as x * scale + bias")
    p.add_argument("--scale", type=float, default=1.0, help="image input scale, e.g. 0.00392156862745098 (1/255) for YOLO")
    p.add_argument("--bias", type=_floats, default=(0.0,), help="image input bias: one value or one per channel (negative: --bias=-1,-1,-1)")
    p.add_argument("--color-layout", choices=("RGB", "BGR"), default="RGB",
                   help="the channel order the Keras model expects of an image input")
    p.add_argument("--labels", type=Path, metavar="FILE", help="class labels, one per line (metadata)")
    p.add_argument("--author", help="model author (default: kerasfold and its version)")
    p.add_argument("--description", help="short description (default: source file, flavour, precision)")
    p.add_argument("--input-size", type=parse_size, metavar="HxW",
                   help="input height and width, for models saved without a fixed input size")
    p.add_argument("--verify", action="store_true",
                   help="run the saved program with kerasfold's numpy evaluator against the reference "
                   "executor (and Core ML itself on macOS)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ExportError(f"expected a UTF-8 text file of labels, one per line, received "
                          f"{getattr(err, 'strerror', None) or err}", file=str(path)) from None
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not labels:
        raise ExportError("expected at least one label, one per line, received none", file=str(path))
    return labels


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def job() -> int:
        from .targets.coreml.build import build_package
        from .targets.coreml.package import CoreMLOptions
        options = CoreMLOptions(dtype=args.dtype, target=args.minimum_deployment_target, image=args.image_input,
                                scale=args.scale, bias=args.bias, color=args.color_layout,
                                labels=read_labels(args.labels) if args.labels else (),
                                author=args.author, description=args.description)
        result = build_package(args.source, args.out, options, input_size=args.input_size)

        def verify() -> Any:
            from .verify.coreml import verify_package
            return verify_package(args.source, args.out, input_size=args.input_size)

        return report(PROG, result, quiet=args.quiet, verify=verify if args.verify else None)

    return run(job, PROG)


def command() -> NoReturn:
    """The console script and ``python -m``: :func:`main`, then a quick exit (``cli.leave``)."""
    leave(main())


if __name__ == "__main__":
    command()
