"""The fold math on plain arrays: no graph, no Keras. Every fold pattern calls these.

BatchNormalization at inference: ``y = γ (x − μ) / √(σ² + ε) + β``, i.e. ``y = s x + t`` with

    s = γ / √(σ² + ε)        t = β − μ s

Folded into a producer ``x = W ∗ in + b``:  ``W' = W s`` (per output channel), ``b' = (b − μ) s + β``.
Everything is computed in float64 and rounded to float32 once, so each folded value is within
one float32 ulp of the exact result. Missing γ / β / b mean identity (1 / 0 / 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BNParams:
    """One BatchNormalization's inference parameters; ``gamma``/``beta`` None when absent."""

    mean: np.ndarray
    var: np.ndarray
    eps: float
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """(s, t) in float64: ``y = s x + t`` per channel."""
        mean = self.mean.astype(np.float64)
        gamma = np.ones_like(mean) if self.gamma is None else self.gamma.astype(np.float64)
        beta = np.zeros_like(mean) if self.beta is None else self.beta.astype(np.float64)
        s = gamma / np.sqrt(self.var.astype(np.float64) + np.float64(self.eps))
        return s, beta - mean * s


def fold_bn(kernel: np.ndarray, bias: np.ndarray | None, bn: BNParams,
            channel_axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``bn`` into a producer whose output channel is ``kernel``'s ``channel_axis``.

    Returns float32 ``(kernel', bias')``: ``kernel' = kernel · s`` along ``channel_axis``,
    ``bias' = (bias − μ) · s + β``; ``bias`` None means a producer without bias (zeros).
    """
    channels = kernel.shape[channel_axis]
    if channels != bn.channels:
        raise ValueError(f"expected {bn.channels} output channels on kernel axis {channel_axis}, "
                         f"received {channels} (kernel shape {kernel.shape})")
    s, _ = bn.scale_shift()
    shape = [1] * kernel.ndim
    shape[channel_axis] = channels
    folded = kernel.astype(np.float64) * s.reshape(shape)
    b = np.zeros(channels) if bias is None else bias.astype(np.float64)
    beta = np.zeros(channels) if bn.beta is None else bn.beta.astype(np.float64)
    return folded.astype(np.float32), ((b - bn.mean.astype(np.float64)) * s + beta).astype(np.float32)


def bn_as_scale_bias(bn: BNParams) -> tuple[np.ndarray, np.ndarray]:
    """A BatchNormalization on its own as float32 per-channel (scale, bias) = (s, t)."""
    s, t = bn.scale_shift()
    return s.astype(np.float32), t.astype(np.float32)


def fold_bn_forward(kernel: np.ndarray, bias: np.ndarray | None, bn: BNParams,
                    input_axis: int = -2) -> tuple[np.ndarray, np.ndarray]:
    """Fold a BatchNormalization that comes *before* a layer into it (exact only when the layer
    pads nothing: a zero pad would see the shift t where the original saw zeros).

    ``y = W ∗ (s x + t) + b = (W·s) ∗ x + (b + Σ W·t)``: ``kernel`` scaled along its input axis,
    ``bias' = bias + Σ_{all axes but the output} W[..., i, o] t[i]`` (output channel last).
    """
    channels = kernel.shape[input_axis]
    if channels != bn.channels:
        raise ValueError(f"expected {bn.channels} input channels on kernel axis {input_axis}, "
                         f"received {channels} (kernel shape {kernel.shape})")
    s, t = bn.scale_shift()
    shape = [1] * kernel.ndim
    shape[input_axis] = channels
    w = kernel.astype(np.float64)
    shift = (w * t.reshape(shape)).reshape(-1, kernel.shape[-1]).sum(axis=0)
    b = np.zeros(kernel.shape[-1]) if bias is None else bias.astype(np.float64)
    return (w * s.reshape(shape)).astype(np.float32), (b + shift).astype(np.float32)
