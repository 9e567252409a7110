"""What both command lines share: one-line errors, warnings as lines, exit codes.

Exit codes: 0 success, 1 the parity check failed, 2 bad input (file, layer, OUT), 3 internal error.
Ctrl-C (KeyboardInterrupt) exits 130; a SIGTERM during the export removes the staging directory
and then ends the process by SIGTERM (143 in a shell; see ``kerasfold.targets.mps.atomic``).
"""
from __future__ import annotations

import atexit
import os
import sys
import traceback
import warnings
from typing import Any, Callable, NoReturn

from .errors import ExportError, one_line

EXIT_OK, EXIT_PARITY, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def parse_size(text: str) -> tuple[int, int]:
    """``"416x416"`` or ``"416"`` -> (416, 416)."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise ValueError(f"expected HxW such as 416x416, received {text!r}")
    return (size[0], size[-1])


def run(main: Callable[[], int], prog: str) -> int:
    """Run ``main``; bad input -> one line on stderr and exit 2; a bug -> traceback and exit 3."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main()
        except ExportError as err:
            code = EXIT_INPUT
            print(f"{prog}: error: {err}", file=sys.stderr)
        except MemoryError:                                  # sizes from an untrusted file, beyond RAM
            code = EXIT_INPUT
            print(f"{prog}: error: expected a network that fits in memory, received one whose tensors "
                  "do not (MemoryError)", file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
        except BrokenPipeError:                              # stdout closed by its reader (| head):
            code = 120                                       # nothing left to tell it, as Python exits
            _quiet_stdout()
        except Exception:                                    # a bug of ours: say so, keep the trace
            traceback.print_exc()
            print(f"{prog}: internal error (please report it with the trace above)", file=sys.stderr)
            code = EXIT_INTERNAL
    for w in caught if code != EXIT_INPUT else ():          # a refused input: the error line alone
        if w.category.__module__.startswith("kerasfold"):
            print(f"{prog}: warning: {one_line(str(w.message))}", file=sys.stderr)
    return code


def report(prog: str, result: Any, *, quiet: bool, verify: Callable[[], Any] | None = None) -> int:
    """What both commands print after writing: warnings (stderr), the summary line (unless quiet),
    then the verification's report when asked (printed when it fails even if quiet)."""
    for line in result.warnings():
        print(f"{prog}: warning: {line}", file=sys.stderr)
    if not quiet:
        print(result.summary())
    if verify is None:
        return EXIT_OK
    checked = verify()
    if not quiet or not checked.passed:
        print(checked.text())
    return EXIT_OK if checked.passed else EXIT_PARITY


def _quiet_stdout() -> None:
    """stdout to /dev/null: its reader is gone, and what is still buffered would fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def leave(code: int) -> NoReturn:
    """End a command with ``code`` without the interpreter's teardown: TensorFlow's took 0.7-0.9 s
    after ``--verify``, numpy's and h5py's 0.03-0.07 s after an export. Every file is closed by then
    and no thread of ours runs; the atexit functions still run, and stdout and stderr are
    flushed (a stdout that cannot take its output exits 120, as Python itself does)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def single_threaded_blas() -> None:
    """A plain export multiplies no matrices: numpy's BLAS need not start its threads (~60 ms at
    import on 2 cores). Only before numpy is imported, and never over a user's own setting."""
    if "numpy" not in sys.modules:
        for name in BLAS_THREADS:
            os.environ.setdefault(name, "1")
