"""Realistic, non-identity BatchNormalization statistics for Keras 3 models."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np


def _bn_layers(model: Any) -> list[Any]:
    """All BatchNormalization layers of ``model``, nested models included."""
    import keras

    found: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(_bn_layers(layer))
    return found


def _default_calibration(model: Any, rng: np.random.Generator) -> list[np.ndarray]:
    """Image-like U[0, 1) batch of two per model input (unknown dims -> 64)."""
    batches = []
    for tensor in model.inputs:
        shape = [2] + [64 if d is None else int(d) for d in tensor.shape[1:]]
        batches.append(rng.random(shape, dtype=np.float32))
    return batches


def _randomize_one(bn: Any, x: np.ndarray, rng: np.random.Generator) -> None:
    """Set ``bn``'s variables from the observed statistics of its input ``x``."""
    axis = bn.axis % x.ndim
    reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
    mean = x.mean(axis=reduce_axes).astype(np.float64)
    var = x.var(axis=reduce_axes).astype(np.float64)
    n = mean.shape[0]
    std = np.sqrt(var)
    gamma = rng.uniform(0.5, 1.5, n) * np.where(rng.random(n) < 0.1, -1.0, 1.0)
    values = {
        "moving_mean": mean + rng.normal(0.0, 1.0, n) * 0.1 * std,
        "moving_variance": np.maximum(var, 1e-6) * rng.uniform(0.5, 2.0, n),
        "gamma": gamma,
        "beta": rng.normal(0.0, 0.3, n),
    }
    for variable in bn.weights:
        short = variable.name.split("/")[-1].split(":")[0]
        variable.assign(values[short].astype(variable.dtype))


def randomize_bn(
    model: Any,
    rng: np.random.Generator,
    calibration_input: np.ndarray | list[np.ndarray] | None = None,
) -> None:
    """Give every BatchNormalization layer of ``model`` varied, realistic stats.

    One eager forward pass over ``calibration_input`` (default: a seeded
    U[0, 1) batch) visits the BN layers in execution order; each one measures
    its actual input, i.e. after all earlier BN layers have been randomised,
    so activations stay O(1) however deep the network is. Statistics are the
    observed per-channel mean (+ N(0, 0.1 std)) and variance (x U(0.5, 2));
    gamma ~ U(0.5, 1.5) with ~10% sign flips, beta ~ N(0, 0.3). Variables are
    matched by name, so ``scale=False`` / ``center=False`` layers work.
    """
    layers = _bn_layers(model)
    if not layers:
        return
    if calibration_input is None:
        batches = _default_calibration(model, rng)
        calibration_input = batches[0] if len(batches) == 1 else batches
    done: set[int] = set()

    def tap(bn: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
            if id(bn) not in done:
                done.add(id(bn))
                _randomize_one(bn, np.asarray(inputs), rng)
            return original(inputs, *args, **kwargs)

        return call

    for bn in layers:
        bn.call = tap(bn, bn.call)
    try:
        with warnings.catch_warnings():  # bare array for a one-element input list
            warnings.filterwarnings("ignore", "The structure of `inputs`")
            model(calibration_input, training=False)
    finally:
        for bn in layers:
            del bn.call
    missed = [bn.name for bn in layers if id(bn) not in done]
    if missed:
        raise RuntimeError(f"BatchNormalization layers never called: {missed}")
