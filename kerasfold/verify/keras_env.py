"""Import Keras (TensorFlow backend) quietly, only when a function needs it."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Iterator

import numpy as np

from ..errors import MissingDependency
from ..hidden_imports import hidden


def import_keras() -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # Keras imports matplotlib.pyplot when it is installed (for plot helpers kerasfold never calls):
    # 0.2 s, and a font cache written to ~/.cache/matplotlib, in a build phase that may write only
    # its outputs. Hidden while Keras is imported, unless the process already uses matplotlib.
    try:
        with hidden("matplotlib"):
            import keras
    except ImportError as err:
        raise MissingDependency("the parity check needs TensorFlow and Keras 3; install them with "
                          f"pip install 'kerasfold[verify]' ({err})") from err
    for name in ("absl", "tensorflow", "h5py._conv"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return keras


@contextmanager
def floatx(dtype: str) -> Iterator[None]:
    """Layers and inputs created inside take ``dtype`` (Keras' global float type)."""
    keras = import_keras()
    previous, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)       # layers follow the policy, not floatx alone
    try:
        yield
    finally:
        keras.config.set_floatx(previous)
        keras.config.set_dtype_policy(policy)


def with_dtype(model: Any, dtype: str) -> Any:
    """A copy of a loaded model computing in ``dtype``, with the same (upcast) weights."""
    keras = import_keras()
    if all(layer.dtype == dtype for layer in model.layers if layer.weights):
        return model

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if "dtype" in config:                  # ops recorded as nodes (x + y) carry no dtype
            config["dtype"] = dtype
        for key in config:                     # every weight is set below: no random draws first
            if key.endswith("_initializer") and config[key] is not None:
                config[key] = "zeros"
        return layer.__class__.from_config(config)

    inputs = keras.tree.map_structure(lambda t: keras.Input(shape=t.shape[1:], dtype=dtype), model.input)
    copy = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    # by name (the clone may order its layers differently); upcast by TensorFlow, no numpy copies
    for src in (layer for layer in model.layers if layer.weights):
        for to, value in zip(copy.get_layer(src.name).weights, src.weights, strict=True):
            to.assign(keras.ops.cast(value.value, dtype))
    return copy
