"""Seeded weights and the three file flavours for any builder ``architecture(keras_module)``.

Keras 3 owns the weights; the Keras 2 flavour rebuilds the same graph with ``tf_keras`` (the
Keras 2 API: ``kernel:0`` names, nested-list ``inbound_nodes``, ``alpha``, ``batch_input_shape``)
and copies the weights in by layer and variable name, nested models included.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

FLAVOURS = ("keras2-h5", "keras3-h5", "keras")
SUFFIXES = {"keras2-h5": ".h5", "keras3-h5": ".k3.h5", "keras": ".keras"}
Architecture = Callable[[Any], Any]        # keras module -> model


def _short(name: str) -> str:
    """``conv2d_1/kernel:0`` (Keras 2) or ``kernel`` (Keras 3) -> ``kernel``."""
    return name.split("/")[-1].split(":")[0]


def copy_weights(src: Any, dst: Any) -> None:
    """Copy weights layer by layer, matched by layer name and variable name; into nested models too."""
    for layer in src.layers:
        if not layer.weights:
            continue
        target = dst.get_layer(layer.name)
        if hasattr(layer, "layers"):
            copy_weights(layer, target)
            continue
        by_name = {_short(v.name): np.asarray(v.numpy()) for v in layer.weights}
        # Keras 3.15 names a DepthwiseConv2D's kernel "kernel", Keras 2 "depthwise_kernel"
        target.set_weights([by_name[_short(v.name)] if _short(v.name) in by_name else by_name["kernel"]
                            for v in target.weights])


def seed_weights(model: Any, rng: np.random.Generator) -> Any:
    """He-normal kernels, non-zero biases and PReLU slopes, then realistic BN statistics."""
    from .bn_stats import randomize_bn

    def visit(m: Any) -> None:
        for layer in m.layers:
            if hasattr(layer, "layers"):
                visit(layer)
            elif layer.weights and layer.__class__.__name__ != "BatchNormalization":
                values = []
                for v in layer.weights:
                    shape, name = tuple(v.shape), _short(v.name)
                    if "kernel" in name:
                        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                        values.append(rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), shape))
                    else:
                        values.append(rng.normal(0, 0.3, shape))
                layer.set_weights([x.astype(np.float32) for x in values])
    visit(model)
    randomize_bn(model, rng)
    return model


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Mute Python warnings and the absl/tensorflow loggers (legacy-h5 notices)."""
    loggers = [logging.getLogger(n) for n in ("absl", "tensorflow")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def save(model: Any, path: str | Path, flavour: str, architecture: Architecture) -> Path:
    """Write a Keras 3 ``model`` (built by ``architecture(keras)``) in one flavour."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        if flavour in ("keras3-h5", "keras"):
            model.save(str(path))
        elif flavour == "keras2-h5":
            import tf_keras
            tf_model = architecture(tf_keras)
            copy_weights(model, tf_model)
            tf_model.save(str(path), save_format="h5")
        else:
            raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    return path


def build_and_save(architecture: Architecture, out_dir: str | Path, stem: str,
                   flavours: tuple[str, ...] = FLAVOURS, seed: int = 0) -> dict[str, Path]:
    """Build with Keras 3, seed the weights, write each flavour as ``out_dir/stem<suffix>``."""
    import keras
    model = seed_weights(architecture(keras), np.random.default_rng(seed))
    return {f: save(model, Path(out_dir) / (stem + SUFFIXES[f]), f, architecture) for f in flavours}
