"""Import coremltools quietly, without TensorFlow, only when a function needs it.

coremltools imports TensorFlow, PyTorch and scikit-learn at its own import when they are
installed (to enable its converters): 4–5 s and TensorFlow's start-up for a target that builds
the program itself with the MIL builder. They are hidden while coremltools is imported, so it
takes them for absent; its start-up warnings (no ``libcoremlpython`` on Linux) and its passes'
progress bars are silenced.
"""
from __future__ import annotations

import logging
import os
import sys
from types import ModuleType

from ...errors import MissingDependency
from ...hidden_imports import hidden

HIDDEN = ("tensorflow", "torch", "sklearn", "xgboost", "libsvm", "executorch", "keras")


def import_coremltools() -> ModuleType:
    os.environ.setdefault("TQDM_DISABLE", "1")          # the pass pipeline's progress bars
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        with hidden(*HIDDEN):
            import coremltools
            from coremltools.converters.mil import Builder  # noqa: F401  (the MIL builder, loaded now)
    except ImportError as err:
        raise MissingDependency("the Core ML target needs coremltools; install it with "
                                f"pip install 'kerasfold[coreml]' ({err})") from err
    return coremltools
