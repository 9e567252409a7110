"""How many threads numpy's OpenBLAS uses, for the duration of a block (standard library only).

The verifier's numpy check runs beside TensorFlow's import and Keras' work (check.py): there,
OpenBLAS splitting each product over both cores, and busy-waiting for both at every block, takes
the core the other work needs (TensorFlow's import is one Python thread; it took ~1.5 s longer
with a two-thread OpenBLAS beside it on 2 CPUs). One thread there leaves it one core.

Only the OpenBLAS numpy loaded is touched, found among the libraries of this process; anything
else (Accelerate on macOS, MKL, a build without the setter) is left as it is.
"""
from __future__ import annotations

import ctypes
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# (set, get) symbol names: scipy-openblas64 (numpy's wheels), then a plain OpenBLAS
_SYMBOLS = [("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
            ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
            ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
            ("openblas_set_num_threads", "openblas_get_num_threads")]

_lock = threading.Lock()
_users = 0
_saved: int | None = None
_found: tuple | None = None
_searched = False


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux), else those shipped with
    numpy's wheel (numpy.libs, numpy/.dylibs)."""
    maps = Path("/proc/self/maps")
    if maps.exists():
        try:
            names = {line.split()[-1] for line in maps.read_text().splitlines() if "/" in line}
        except OSError:
            names = set()
        return sorted(n for n in names if "openblas" in Path(n).name.lower())
    import numpy
    root = Path(numpy.__file__).parent
    return sorted(str(p) for d in (root.parent / "numpy.libs", root / ".dylibs") if d.is_dir()
                  for p in d.iterdir() if "openblas" in p.name.lower())


def _setter() -> tuple | None:
    """(set, get) of numpy's OpenBLAS thread count, or None."""
    global _found, _searched
    if _searched:
        return _found
    _searched = True
    if "numpy" not in sys.modules:
        return None
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            set_fn, get_fn = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if set_fn is not None and get_fn is not None:
                set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
                get_fn.argtypes, get_fn.restype = [], ctypes.c_int
                _found = (set_fn, get_fn)
                return _found
    return None


def threads() -> int | None:
    """numpy's OpenBLAS thread count now; None when it cannot be read."""
    fns = _setter()
    return None if fns is None else int(fns[1]())


@contextmanager
def limited(n: int = 1) -> Iterator[None]:
    """At most ``n`` OpenBLAS threads for the whole process while the block runs (the count is
    global: blocks that overlap share the limit; the last to leave restores the count)."""
    global _users, _saved
    fns = _setter()
    if fns is None:
        yield
        return
    with _lock:
        if _users == 0:
            _saved = int(fns[1]())
            if _saved > n:
                fns[0](n)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _saved is not None:
                if int(fns[1]()) != _saved:
                    fns[0](_saved)
                _saved = None
