"""Import Keras (TensorFlow backend) quietly, only when a function needs it."""
from __future__ import annotations

import logging
import os
from types import ModuleType

from .errors import ExportError


def import_keras() -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ImportError as err:
        raise ExportError("the parity check needs TensorFlow and Keras 3; install them with "
                          f"pip install 'kerasfold[verify]' ({err})") from err
    for name in ("absl", "tensorflow", "h5py._conv"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return keras
