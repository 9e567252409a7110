"""The fold math on plain arrays: no graph, no Keras. Every fold pattern calls these.

BatchNormalization at inference: ``y = γ (x − μ) / √(σ² + ε) + β``, i.e. ``y = s x + t`` with

    s = γ / √(σ² + ε)        t = β − μ s

Folded into a producer ``x = W ∗ in + b``:  ``W' = W s`` (per output channel), ``b' = (b − μ) s + β``.
Missing γ / β / b mean identity (1 / 0 / 0).

Precision: weights are computed in float64 and returned in float64; the target rounds them once,
to float32 (within one float32 ulp of the exact value: a product and a quotient do not cancel) or
straight to float16 (never float32 first: rounding twice misses the nearest half). Biases are sums that can
cancel ((b − μ)s ≈ −β), where float64 alone is not enough; they are computed in float64 with a
rigorous error bound, and the few channels where the bound straddles a float32 rounding boundary
are recomputed in 60-digit decimal arithmetic: every bias is the correctly rounded exact value.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Callable

import numpy as np

from ..deferred import multiply64

_U = 2.0 ** -53          # float64 unit roundoff


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
        s = self._gamma() / np.sqrt(self.var.astype(np.float64) + np.float64(self.eps))
        return s, self._beta() - mean * s

    def _gamma(self) -> np.ndarray:
        return np.ones(self.channels) if self.gamma is None else self.gamma.astype(np.float64)

    def _beta(self) -> np.ndarray:
        return np.zeros(self.channels) if self.beta is None else self.beta.astype(np.float64)

    def exact_scale(self, c: int) -> Decimal:
        """s of channel ``c`` in decimal arithmetic (call inside a 60-digit context)."""
        gamma = Decimal(1) if self.gamma is None else Decimal(float(self.gamma[c]))
        return gamma / (Decimal(float(self.var[c])) + Decimal(float(self.eps))).sqrt()

    def exact_beta(self, c: int) -> Decimal:
        return Decimal(0) if self.beta is None else Decimal(float(self.beta[c]))


def _channels(kernel: np.ndarray, axis: int, bn: BNParams, which: str) -> int:
    channels = kernel.shape[axis]
    if channels != bn.channels:
        raise ValueError(f"expected {bn.channels} {which} channels on kernel axis {axis}, "
                         f"received {channels} (kernel shape {kernel.shape})")
    return channels


def _to_float32(value: Decimal) -> np.float32:
    """Round a decimal to the nearest float32 (ties to even), exactly: no double rounding."""
    guess = np.float32(float(value))
    if not np.isfinite(guess):
        return guess
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    finite = [c for c in candidates if np.isfinite(c)]
    return min(finite, key=lambda c: (abs(Decimal(float(c)) - value),
                                      int(np.array(c, np.float32).view(np.uint32)) & 1))


def correctly_rounded(approx: np.ndarray, bound: np.ndarray, exact: Callable[[int], Decimal]) -> np.ndarray:
    """float32 of values known as ``approx`` ± ``bound`` (float64); where that interval rounds to
    two float32 numbers, ``exact(i)`` (60-digit decimal) decides."""
    out = approx.astype(np.float32)
    lo = np.nextafter(approx - bound, -np.inf).astype(np.float32)
    hi = np.nextafter(approx + bound, np.inf).astype(np.float32)
    unsure = np.flatnonzero(lo != hi)
    if unsure.size:
        with localcontext() as ctx:
            ctx.prec = 60
            for i in unsure:
                out[i] = _to_float32(exact(int(i)))
    return out


def fold_bn(kernel: np.ndarray, bias: np.ndarray | None, bn: BNParams,
            channel_axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``bn`` into a producer whose output channel is ``kernel``'s ``channel_axis``.

    Returns ``(kernel', bias')``, float64 and float32: ``kernel' = kernel · s`` along ``channel_axis``,
    ``bias' = (bias − μ) · s + β``; ``bias`` None means a producer without bias (zeros).
    """
    channels = _channels(kernel, channel_axis, bn, "output")
    s, _ = bn.scale_shift()
    shape = [1] * kernel.ndim
    shape[channel_axis] = channels
    folded = multiply64(kernel, s.reshape(shape))          # one pass, no float64 copy first; deferred stays so
    b = np.zeros(channels) if bias is None else bias.astype(np.float64)
    mean = bn.mean.astype(np.float64)
    scaled = (b - mean) * s
    approx = scaled + bn._beta()
    bound = 8 * _U * (np.abs(scaled) + np.abs(bn._beta()))

    def exact(c: int) -> Decimal:
        b_c = Decimal(0) if bias is None else Decimal(float(bias[c]))
        return (b_c - Decimal(float(bn.mean[c]))) * bn.exact_scale(c) + bn.exact_beta(c)
    return folded, correctly_rounded(approx, bound, exact)


def bn_as_scale_bias(bn: BNParams) -> tuple[np.ndarray, np.ndarray]:
    """A BatchNormalization on its own as per-channel (scale, bias) = (s, t): float64, float32."""
    s, t = bn.scale_shift()
    bound = 8 * _U * (np.abs(bn.mean.astype(np.float64) * s) + np.abs(bn._beta()))

    def exact(c: int) -> Decimal:
        return bn.exact_beta(c) - Decimal(float(bn.mean[c])) * bn.exact_scale(c)
    return s, correctly_rounded(t, bound, exact)


def fold_bn_forward(kernel: np.ndarray, bias: np.ndarray | None, bn: BNParams,
                    input_axis: int = -2) -> tuple[np.ndarray, np.ndarray]:
    """Fold a BatchNormalization that comes *before* a layer into it (exact only when the layer
    pads nothing: a zero pad would see the shift t where the original saw zeros).

    ``y = W ∗ (s x + t) + b = (W·s) ∗ x + (b + Σ W·t)``: ``kernel`` scaled along its input axis,
    ``bias' = bias + Σ_{all axes but the output} W[..., i, o] t[i]`` (output channel last).
    """
    kernel = np.asarray(kernel)                 # the bias sums every weight: a deferred one is read (and checked) here
    channels = _channels(kernel, input_axis, bn, "input")
    s, t = bn.scale_shift()
    shape = [1] * kernel.ndim
    shape[input_axis] = channels
    w = kernel.astype(np.float64)
    cout = kernel.shape[-1]
    shift = (w * t.reshape(shape)).reshape(-1, cout).sum(axis=0)
    b = np.zeros(cout) if bias is None else bias.astype(np.float64)
    # each t[i] is within 4u·(|μ s| + |β|) of exact; a sum of n products adds (n + 2)u·Σ|terms|
    terms = np.abs(w) * (np.abs(bn.mean.astype(np.float64) * s) + np.abs(bn._beta())).reshape(shape)
    n = terms.size // cout
    bound = (n + 8) * _U * 1.01 * (np.abs(b) + terms.reshape(-1, cout).sum(axis=0))
    w_rows = np.moveaxis(kernel, input_axis, 0).reshape(channels, -1, cout)   # (in, other taps, out)

    t_exact: list[Decimal] = []                 # computed once, for the first unsure channel

    def exact(o: int) -> Decimal:
        if not t_exact:
            t_exact.extend(bn.exact_beta(i) - Decimal(float(bn.mean[i])) * bn.exact_scale(i)
                           for i in range(channels))
        total = Decimal(0) if bias is None else Decimal(float(bias[o]))
        for i in range(channels):
            total += sum((Decimal(float(x)) for x in w_rows[i, :, o]), Decimal(0)) * t_exact[i]
        return total
    return w * s.reshape(shape), correctly_rounded(b + shift, bound, exact)
