"""Per-channel affine layers: BatchNormalization, Normalization (adapted or given statistics),
Rescaling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import ops
from ..errors import ExportError
from .base import Fields, Kind, Shape, Weights, same


@dataclass(frozen=True)
class BatchNormParams:
    axis: int
    epsilon: float
    scale: bool
    center: bool


def normalises_channels(axis: int, shape: Shape | None) -> bool:
    """True when ``axis`` (Keras', batch included) is the last axis of a tensor of ``shape``
    (a 4-D tensor when the shape is unknown)."""
    rank = len(shape) + 1 if shape else 4
    return axis in (-1, rank - 1)


def _bn_params(f: Fields) -> BatchNormParams:
    return BatchNormParams(f.axis(), f.float("epsilon", 1e-3, lo=0.0), f.bool("scale", True),
                           f.bool("center", True))


def _bn_variables(p: BatchNormParams, cin: int | None) -> dict[str, tuple | None]:
    names = (["gamma"] if p.scale else []) + (["beta"] if p.center else []) + ["moving_mean", "moving_variance"]
    return {n: (cin,) for n in names}


def _bn_lower(p: BatchNormParams, w: Weights, shapes: list[Shape]) -> ops.Op:
    var = w["moving_variance"]
    if np.any(var < 0):
        raise ExportError(f"expected moving_variance >= 0, received {float(np.min(var)):g}")
    if np.any(var.astype(np.float64) + p.epsilon <= 0):
        raise ExportError(f"expected moving_variance + epsilon > 0, received epsilon {p.epsilon:g} "
                          "with a zero variance")
    return ops.BatchNorm(mean=w["moving_mean"], var=var, eps=p.epsilon, gamma=w.get("gamma"),
                         beta=w.get("beta"), axis=p.axis, channels_last=normalises_channels(p.axis, shapes[0]))


BATCH_NORM = Kind(("BatchNormalization",), _bn_params, same, _bn_lower, _bn_variables)


@dataclass(frozen=True)
class NormalizationParams:
    axis: int
    mean: Any                                   # given in the config (a number or list), or None
    variance: Any


def _normalization_params(f: Fields) -> NormalizationParams:
    if f.bool("invert", False):
        raise ExportError("expected Normalization with invert=False, received invert=True")
    return NormalizationParams(f.axis(), f.raw.get("mean"), f.raw.get("variance"))


def _normalization_variables(p: NormalizationParams, cin: int | None) -> dict[str, tuple | None]:
    """Keras 3 keeps mean/variance broadcastable, (1, 1, 1, C); tf.keras as (C,): checked on lowering.
    Given in the config (``Normalization(mean=..., variance=...)``), they are no weights at all."""
    return {} if p.mean is not None else {"mean": None, "variance": None, "count": ()}


def _per_channel(values: Any, channels: int | None, what: str) -> np.ndarray:
    try:
        flat = np.asarray(values, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ExportError(f"expected {what} as numbers, received {str(values)[:40]}") from None
    if flat.size not in (1, channels) or channels is None or not np.all(np.isfinite(flat)):
        raise ExportError(f"expected {what} as 1 or {channels} finite values, received {flat.size}")
    return np.broadcast_to(flat, (channels,))


def _normalization_lower(p: NormalizationParams, w: Weights, shapes: list[Shape]) -> ops.Op:
    if not normalises_channels(p.axis, shapes[0]):
        raise ExportError(f"expected Normalization over the last (channel) axis, received axis {p.axis}")
    stats = w if p.mean is None else {"mean": p.mean, "variance": p.variance}
    channels = shapes[0][-1] if shapes[0] else None
    mean = _per_channel(stats["mean"], channels, "mean")
    var = _per_channel(stats["variance"], channels, "variance")
    if np.any(var < 0):
        raise ExportError(f"expected variance >= 0, received {float(np.min(var)):g}")
    return ops.Normalization(mean=mean, var=var)


NORMALIZATION = Kind(("Normalization",), _normalization_params, same, _normalization_lower,
                     _normalization_variables)


@dataclass(frozen=True)
class RescalingParams:
    scale: Any
    offset: Any


def _number_or_list(f: Fields, key: str, default: float) -> Any:
    value = f.raw.get(key, default)
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value):
            raise ExportError(f"expected {key} as finite numbers, received {str(value)[:40]}")
        return list(value)
    return f.float(key, default)


RESCALING = Kind(("Rescaling",), lambda f: RescalingParams(_number_or_list(f, "scale", 1.0),
                                                           _number_or_list(f, "offset", 0.0)),
                 same, lambda p, w, shapes: ops.Rescaling(scale=p.scale, offset=p.offset))

KINDS = (BATCH_NORM, NORMALIZATION, RESCALING)
