"""Import a library while some of its optional dependencies look absent.

Keras imports matplotlib, coremltools imports TensorFlow, PyTorch and scikit-learn, whenever they
are installed, for features kerasfold never uses: seconds of start-up and files written to caches.
Inside :func:`hidden`, each named module not yet imported is hidden (``sys.modules[name] = None``
makes ``import name`` raise ImportError, which those libraries take for "not installed"); on the
way out the names are released again, so the process can still import them later itself.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def hidden(*names: str) -> Iterator[None]:
    hide = [name for name in names if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None                          # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hide:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
