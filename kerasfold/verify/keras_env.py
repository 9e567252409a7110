"""Import Keras (TensorFlow backend) quietly, only when a function needs it."""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from functools import cache
from types import ModuleType
from pathlib import Path
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


def retyped_config(config: Any, dtype: str) -> Any:
    """A saved model config (``model_config`` of an .h5 file) whose layers compute in ``dtype``:
    what :func:`with_dtype` does to a loaded model, done before Keras builds it. Every layer config
    (any ``{"class_name", "config"}`` mapping, nested models included) gets ``dtype`` and zeros
    for its initialisers (every weight is then loaded from the file)."""
    if isinstance(config, list):
        return [retyped_config(c, dtype) for c in config]
    if not isinstance(config, dict):
        return config
    out = dict(config)
    inner = out.get("config")
    if "class_name" in out and isinstance(inner, dict):
        inner = dict(inner)
        if "dtype" in inner:
            inner["dtype"] = dtype
        for key in inner:
            if key.endswith("_initializer") and inner[key] is not None:
                inner[key] = "zeros"
        out["config"] = inner
    return {k: retyped_config(v, dtype) for k, v in out.items()}


def load_h5_in(model: Path, dtype: str) -> Any | None:
    """An .h5 model loaded by Keras' own loader (``keras.models.load_model``: safe mode, nothing
    executed, not compiled) computing in ``dtype`` from the start, from a config retyped in memory
    (:func:`retyped_config`): what ``with_dtype(keras.models.load_model(model), dtype)`` gives,
    without building a float32 model with random initial weights first, then cloning it (0.5 s
    of 0.9 on tiny-yolo-voc). None when that path does not apply or fails (another file type, a
    Keras that does not take an open h5py.File, a file it cannot load): the caller then takes
    the two steps, which say what is wrong."""
    if Path(model).suffix.lower() not in (".h5", ".hdf5"):
        return None
    keras = import_keras()
    try:
        with _Retyped(Path(model), dtype) as f:
            loaded = keras.models.load_model(f, compile=False, safe_mode=True)
    except Exception:
        return None
    weighted = [layer for layer in loaded.layers if layer.weights]
    return loaded if weighted and all(layer.dtype == dtype for layer in weighted) else None


@cache
def _retyped_file() -> type:
    import h5py

    class Retyped(h5py.File):
        """The .h5 file as it is but for its model config, retyped. Keras' .h5 loader takes an
        open h5py.File; ``load_model`` sends it there by its name (``str``, ``os.fspath``)."""

        def __init__(self, path: Path, dtype: str) -> None:
            super().__init__(path, "r")
            self._path = str(path)
            saved = super().attrs.get("model_config")
            if saved is None:
                raise ValueError("no model config")
            if hasattr(saved, "decode"):
                saved = saved.decode("utf-8")
            self._attrs = {**super().attrs,
                           "model_config": json.dumps(retyped_config(json.loads(saved), dtype))}

        @property
        def attrs(self) -> dict[str, Any]:     # type: ignore[override]
            return self._attrs

        def __str__(self) -> str:
            return self._path

        def __fspath__(self) -> str:
            return self._path

    return Retyped


def _Retyped(path: Path, dtype: str) -> Any:
    return _retyped_file()(path, dtype)
