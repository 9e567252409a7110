"""Exact fold (issue 4, deliverable 1): every folded value against an exact reference.

Reference. Every input is a float32 (ε a Python float, as Keras stores it) and is converted to
``Decimal`` exactly (``Decimal(float(x))``); ``s = γ / √(σ² + ε)``, ``W·s``, ``(b − μ)·s + β``,
``β − μ·s`` and ``b + Σ W·(β − μ·s)`` are evaluated with ``decimal`` at 60 significant digits
(``Decimal.sqrt``). 60 digits is exact enough for every claim below: the reference's own error is
below 10⁻⁵⁸ of the magnitude of the terms, far below every bound used here.

ulp. For a real x with 2^e ≤ |x| < 2^(e+1): ``ulp(x) = 2^(max(e, −126) − 23)``, the spacing of the
float32 numbers in the binade that contains x (2^−149 throughout the subnormal range, and for x = 0).
This is at most ``np.spacing(np.float32(abs(x)))`` and stricter than it just below a power of two,
where ``np.float32(abs(x))`` rounds up into the next binade and np.spacing doubles. Every claim is
measured against the exact x, never against the output. Overflow: IEEE rounding sends every x with
|x| ≥ 2^128 − 2^103 to ±inf, so ±inf stands for "≥ 2^128 in magnitude": an inf output is accepted
when |x| ≥ 2^128 − 2^104 (FLT_MAX − 1 ulp) with the same sign, and is required when |x| ≥ 2^128.

Bounds proven (u = 2^−53; first-order error analysis of the float64 code, then one rounding to
float32; the slack left in each constant covers the second-order terms):

* Weights (``fold_bn``, ``fold_bn_forward``) and the scale of ``bn_as_scale_bias``: the float64
  product is within 3.5·u·|x| of x (no cancellation: a product of a product, a quotient and a
  square root), so the float32 output is a *faithful* rounding of x (one of the two float32
  numbers that bracket x: the one-ulp claim), and moreover ``|out − x| ≤ ulp(x)/2 + 4·u·|x|``
  (correctly rounded except within 2^−27 ulp of a midpoint). Exact results beyond the float32 range
  come out as inf of the right sign (numpy also emits "overflow encountered in cast").
* Biases: NOT always within one ulp. ``(b − μ)·s + β`` (and ``β − μ·s``, and the forward fold's
  ``b + Σ W·t``) cancels when the terms nearly agree, and float64 rounding errors of the order of
  u·|terms| then exceed a float32 ulp of the small result. Simplest counterexample found
  (``test_bias_counterexample[smallest]``; the smallest integer μ with σ² = 0 and Keras' default
  ε = 1e-3): one channel, γ and b absent, μ = 7, β = 221.35943603515625 (= float32(7/√0.001));
  exact bias −1.7663030094e−07, the float64 fold gives −1.7663032281e−07: 1.54 ulp off. A random
  search over μ ∈ [−1e3, 1e3], σ² ∈ [0, 2] with β = float32(μ·s) finds such cases in about 2 % of
  draws, up to 14 502 ulp off (``test_bias_counterexample[large]``).
  kerasfold therefore computes each bias in float64 with a rigorous error bound and recomputes, in
  60-digit decimal, the channels whose bound straddles a float32 rounding boundary
  (``kerasfold.fold.correctly_rounded``): every bias is correctly rounded, and the tests here hold
  the biases to the same one-ulp bound as the weights (``test_bias_counterexample_one_ulp`` pins
  the two counterexamples; a plain float64 formula fails them).

A float32 fold (``s`` and ``W·s`` in float32, as most tools do) breaks these bounds:
``test_naive_float32_fold_breaks_the_bound`` pins an example (a dense 1×1 kernel W = 1, σ² = 0,
ε = 1e-3: float32 gives 31.622774, exact 31.6227766, 1.30 ulp) on which ``fold_bn`` must pass, so
a switch to float32 arithmetic fails this file deterministically.

Hypothesis runs derandomized, without deadline or example database: the same examples every run.
"""
from __future__ import annotations

import math
from decimal import Context, Decimal, localcontext

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import float32_target
from kerasfold.passes import bn_math
from kerasfold.passes.bn_math import BNParams

bn_as_scale_bias = float32_target(bn_math.bn_as_scale_bias)
fold_bn = float32_target(bn_math.fold_bn)
fold_bn_forward = float32_target(bn_math.fold_bn_forward)

PREC = 60
EXACT = Context(prec=PREC)                 # every Decimal operation here runs in this context
U = Decimal(math.ldexp(1.0, -53))          # float64 unit roundoff (exact)
TWO128 = Decimal(2 ** 128)
INF_FROM = Decimal(2 ** 128 - 2 ** 104)    # FLT_MAX − 1 ulp: an inf output is fine from here on
SUBNORMAL_LIMIT = Decimal(math.ldexp(1.0, -126))

SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def D(x) -> Decimal:
    """Exact Decimal value of a float32/float64 (never rounded)."""
    return Decimal(float(x))


def ulp32(x: Decimal) -> Decimal:
    """Spacing of float32 in the binade of the exact real x (module docstring); exact."""
    x = abs(x)
    if x < SUBNORMAL_LIMIT:
        return Decimal(math.ldexp(1.0, -149))
    _, e = math.frexp(float(x))            # float(x) may round up to 2^e: correct below
    e -= 1
    if D(math.ldexp(1.0, e)) > x:
        e -= 1
    if D(math.ldexp(1.0, e + 1)) <= x:
        e += 1
    return D(math.ldexp(1.0, e - 23))


def _value(out: np.float32) -> Decimal:
    """Exact value of a float32 output, ±inf standing for ±2^128."""
    if np.isinf(out):
        return TWO128 if out > 0 else -TWO128
    return D(out)


def faithful(out: np.float32, x: Decimal) -> bool:
    """``out`` is one of the two float32 numbers bracketing x (x itself when representable)."""
    if abs(x) >= TWO128:
        return bool(np.isinf(out)) and (out > 0) == (x > 0)
    v = _value(out)
    if v == x:
        return True
    with np.errstate(over="ignore"):
        neighbour = _value(np.nextafter(np.float32(out), np.float32(np.inf if x > v else -np.inf)))
    return neighbour > x if x > v else neighbour < x      # strictly: a representable x must be hit


def near_correct(out: np.float32, x: Decimal) -> bool:
    """``|out − x| ≤ ulp(x)/2 + 4·u·|x|`` (inf outputs are judged by ``faithful``)."""
    if np.isinf(out):
        return True
    with localcontext(EXACT):
        return abs(D(out) - x) <= ulp32(x) / 2 + 4 * U * abs(x)


def within(out: np.float32, x: Decimal, tol: Decimal) -> bool:
    """``|out − x| ≤ ulp(x) + tol``; an inf output needs |x| ≥ FLT_MAX − 1 ulp − tol, same sign."""
    with localcontext(EXACT):
        if np.isinf(out):
            return (out > 0) == (x > 0) and abs(x) >= INF_FROM - tol
        return abs(D(out) - x) <= ulp32(x) + tol


# --------------------------------------------------------------------------- exact references

def _gamma(bn, c):
    return Decimal(1) if bn.gamma is None else D(bn.gamma[c])


def _beta(bn, c):
    return Decimal(0) if bn.beta is None else D(bn.beta[c])


def exact_scale(bn: BNParams) -> list[Decimal]:
    """s[c] = γ / √(σ² + ε) at 60 digits."""
    with localcontext(EXACT):
        return [_gamma(bn, c) / (D(bn.var[c]) + D(bn.eps)).sqrt() for c in range(bn.channels)]


def exact_shift(bn: BNParams, s: list[Decimal]) -> tuple[list[Decimal], list[Decimal]]:
    """t[c] = β − μ·s and its term size |μ·s| + |β|."""
    with localcontext(EXACT):
        t = [_beta(bn, c) - D(bn.mean[c]) * s[c] for c in range(bn.channels)]
        size = [abs(D(bn.mean[c]) * s[c]) + abs(_beta(bn, c)) for c in range(bn.channels)]
        return t, size


def check_scaled_weights(out: np.ndarray, kernel: np.ndarray, s: list[Decimal], axis: int):
    """Every ``out[idx]`` faithful and near-correct for the exact ``kernel[idx]·s[idx[axis]]``."""
    assert out.dtype == np.float32 and out.shape == kernel.shape
    axis %= kernel.ndim
    with localcontext(EXACT):
        for idx in np.ndindex(kernel.shape):
            x = D(kernel[idx]) * s[idx[axis]]
            o = out[idx]
            assert faithful(o, x) and near_correct(o, x), (
                f"weight {idx}: W={float(kernel[idx])!r} s={s[idx[axis]]:.20e} out={float(o)!r} "
                f"exact={x:.20e} ulp={ulp32(x):.3e}")


@pytest.fixture(autouse=True)
def _exact_decimal():
    """Test bodies too do their Decimal arithmetic at 60 digits (the default context has 28)."""
    with localcontext(EXACT):
        yield


def _call(fn, *args, **kwargs):
    with np.errstate(over="ignore"):      # exact results beyond float32 come out as ±inf
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- strategies

def _f32(*values):
    return st.sampled_from([float(np.float32(v)) for v in values])


def _floats(lo, hi):
    return st.floats(float(np.float32(lo)), float(np.float32(hi)), width=32)


ANY32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
WEIGHT = st.one_of(_floats(-4, 4), ANY32, _f32(0, -0.0, 1e-45, -1e-45, 1e-38, 1e-30, 3e38, -3e38, 1e20))
MEAN = st.one_of(_floats(-1e6, 1e6), _floats(-2, 2), _f32(0, 1e6, -1e6, 999999.94, 1e-45, -7))
VAR = st.one_of(_f32(0, 1e-45, 1e-40, 1.1754944e-38, 1e-30, 1e-10), _floats(0, 1e-6), _floats(0, 4),
                _floats(0, 1e6))
GAMMA = st.one_of(_floats(-2, 2), _f32(0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 1), _floats(-1e-30, 1e-30),
                  ANY32)
BETA = st.one_of(_floats(-1e6, 1e6), _floats(-2, 2), _f32(0, 1e6, -1e6))
EPS = st.one_of(st.sampled_from([1e-3, 1e-5, 1.001e-5, 1e-2, 2.0 ** -10]), st.floats(1e-5, 1e-2))


def _vec(n, elements):
    return hnp.arrays(np.float32, (n,), elements=elements)


def _nudge(x: np.float32, k: int) -> np.float32:
    """x moved k float32 steps."""
    with np.errstate(over="ignore"):
        for _ in range(abs(k)):
            x = np.nextafter(x, np.float32(np.inf if k > 0 else -np.inf))
    return np.float32(x)


def _nudges(n):
    """Steps for ``_nudge``, mostly 0: the nearest float32 is where one-ulp cancellation bites."""
    return st.lists(st.sampled_from([0, 0, 0, 0, 1, -1, 2, -2]), min_size=n, max_size=n)


def _s64(gamma, var, eps):
    g = np.ones(var.shape) if gamma is None else gamma.astype(np.float64)
    return g / np.sqrt(var.astype(np.float64) + eps)


def _cancel(target64: np.ndarray, fallback: np.ndarray, nudges) -> np.ndarray:
    """float32 values a few steps from ``target64`` (where it is in range), else ``fallback``."""
    out = fallback.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for c, (t, k) in enumerate(zip(target64, nudges)):
            if np.isfinite(t) and abs(t) < 3.4e38:
                v = _nudge(np.float32(t), k)
                if np.isfinite(v):
                    out[c] = v
    return out


@st.composite
def bn_params(draw, c, cancel=False):
    """BN statistics for ``c`` channels; ``cancel``: β ≈ μ·s (so the shift t = β − μ·s cancels)."""
    mean, var, eps = draw(_vec(c, MEAN)), draw(_vec(c, VAR)), draw(EPS)
    gamma = draw(st.none() | _vec(c, GAMMA))
    beta = draw(st.none() | _vec(c, BETA))
    if cancel:
        base = np.zeros(c, np.float32) if beta is None else beta
        beta = _cancel(mean.astype(np.float64) * _s64(gamma, var, eps), base,
                       draw(_nudges(c)))
    return BNParams(mean=mean, var=var, eps=eps, gamma=gamma, beta=beta)


@st.composite
def backward_cases(draw):
    """(kernel, bias, bn, channel_axis) for fold_bn, with cancellation modes for the bias."""
    cout = draw(st.integers(1, 16))
    kind = draw(st.sampled_from(["conv", "dense", "transpose"]))
    kh, kw, cin = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape, axis = {"conv": ((kh, kw, cin, cout), -1), "dense": ((draw(st.integers(1, 8)), cout), -1),
                   "transpose": ((kh, kw, cout, cin), 2)}[kind]
    kernel = draw(hnp.arrays(np.float32, shape, elements=WEIGHT))
    bn = draw(bn_params(cout))
    bias = draw(st.none() | _vec(cout, MEAN))
    mode = draw(st.sampled_from(["free", "bias near mean", "beta cancels", "both"]))
    nudges = lambda: draw(_nudges(cout))  # noqa: E731
    if mode in ("bias near mean", "both"):
        bias = _cancel(bn.mean.astype(np.float64), bn.mean.copy(), nudges())
    if mode in ("beta cancels", "both"):
        b = np.zeros(cout) if bias is None else bias.astype(np.float64)
        target = -(b - bn.mean.astype(np.float64)) * _s64(bn.gamma, bn.var, bn.eps)
        beta = _cancel(target, np.zeros(cout, np.float32) if bn.beta is None else bn.beta, nudges())
        bn = BNParams(mean=bn.mean, var=bn.var, eps=bn.eps, gamma=bn.gamma, beta=beta)
    return kernel, bias, bn, axis


@st.composite
def forward_cases(draw):
    """(kernel, bias, bn) for fold_bn_forward: BN channels = the kernel's input axis (-2)."""
    cin, cout = draw(st.integers(1, 16)), draw(st.integers(1, 3))
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), cin, cout)
    else:
        shape = (cin, cout)
    kernel = draw(hnp.arrays(np.float32, shape, elements=WEIGHT))
    bn = draw(bn_params(cin, cancel=draw(st.booleans())))
    bias = draw(st.none() | _vec(cout, MEAN))
    if draw(st.booleans()):       # b ≈ −Σ W·t: the output bias cancels too
        s = _s64(bn.gamma, bn.var, bn.eps)
        beta = np.zeros(cin) if bn.beta is None else bn.beta.astype(np.float64)
        t = beta - bn.mean.astype(np.float64) * s
        shape_t = [1] * kernel.ndim
        shape_t[-2] = cin
        with np.errstate(over="ignore", invalid="ignore"):
            target = -(kernel.astype(np.float64) * t.reshape(shape_t)).reshape(-1, cout).sum(axis=0)
        bias = _cancel(target, np.zeros(cout, np.float32) if bias is None else bias,
                       draw(_nudges(cout)))
    return kernel, bias, bn


# --------------------------------------------------------------------------- the oracle itself

def test_ulp_and_faithful_oracle():
    """The yardsticks: ulp by binade of the exact value, subnormals, powers of two, overflow."""
    one = Decimal(1)
    tiny = Decimal(2) ** -80
    assert ulp32(one) == D(2.0 ** -23)
    assert ulp32(one - tiny) == D(2.0 ** -24)          # np.spacing(float32(1 − tiny)) would say 2^-23
    assert ulp32(-one - tiny) == D(2.0 ** -23)
    assert ulp32(Decimal(0)) == ulp32(D(1e-45)) == ulp32(D(2.0 ** -127)) == D(2.0 ** -149)
    assert ulp32(D(2.0 ** -126)) == D(2.0 ** -149)
    assert ulp32(D(3e38)) == D(2.0 ** 104)
    f1 = np.float32(1)
    below = np.nextafter(f1, np.float32(0))
    assert faithful(f1, one - tiny) and faithful(below, one - tiny)
    assert not faithful(np.nextafter(below, np.float32(0)), one - tiny)
    assert faithful(f1, one) and not faithful(below, one)
    assert faithful(np.float32(0), D(1e-46)) and faithful(np.float32(-0.0), D(1e-46))
    assert not faithful(np.float32(0), D(2e-45))
    fmax = np.float32(np.finfo(np.float32).max)
    assert faithful(np.float32(np.inf), TWO128 - 1) and faithful(fmax, TWO128 - 1)
    assert faithful(np.float32(np.inf), TWO128 + 1) and not faithful(fmax, TWO128 + 1)
    assert not faithful(np.float32(-np.inf), TWO128 + 1)
    assert not faithful(np.float32(np.inf), D(fmax) - 1)
    assert near_correct(np.float32(1), one - tiny) and not near_correct(below, one - Decimal(2) ** -26)
    assert within(np.float32(np.inf), D(1e39), Decimal(0)) and not within(fmax, D(1e39), Decimal(0))
    assert Decimal(2 ** 128 + 1) == TWO128 + 1 and one - tiny < one            # 60 digits in force


# --------------------------------------------------------------------------- properties

@SETTINGS
@given(backward_cases())
def test_fold_bn_weights_faithful(case):
    kernel, bias, bn, axis = case
    w2, _ = _call(fold_bn, kernel, bias, bn, axis)
    check_scaled_weights(w2, kernel, exact_scale(bn), axis)


@SETTINGS
@given(backward_cases())
def test_fold_bn_bias_bound(case):
    """|b' − exact| ≤ ulp(exact) + 6·u·(|(b − μ)·s| + |β|); one ulp is not always met (see top)."""
    kernel, bias, bn, axis = case
    _, b2 = _call(fold_bn, kernel, bias, bn, axis)
    assert b2.dtype == np.float32 and b2.shape == (bn.channels,)
    s = exact_scale(bn)
    with localcontext(EXACT):
        for c in range(bn.channels):
            b = Decimal(0) if bias is None else D(bias[c])
            prod = (b - D(bn.mean[c])) * s[c]
            x = prod + _beta(bn, c)
            tol = Decimal(0)                 # correctly rounded: within one ulp, no slack
            assert within(b2[c], x, tol), (
                f"channel {c}: out={float(b2[c])!r} exact={x:.25e} ulp={ulp32(x):.3e} tol={tol:.3e} "
                f"b={None if bias is None else float(bias[c])!r} mean={float(bn.mean[c])!r} "
                f"var={float(bn.var[c])!r} eps={bn.eps!r} "
                f"gamma={None if bn.gamma is None else float(bn.gamma[c])!r} "
                f"beta={None if bn.beta is None else float(bn.beta[c])!r}")


@SETTINGS
@given(st.integers(1, 16).flatmap(lambda c: bn_params(c, cancel=True) | bn_params(c)))
def test_bn_as_scale_bias(bn):
    """scale: faithful (one ulp); shift t = β − μ·s: |t' − t| ≤ ulp(t) + 6·u·(|μ·s| + |β|)."""
    scale, shift = _call(bn_as_scale_bias, bn)
    assert scale.dtype == shift.dtype == np.float32
    s = exact_scale(bn)
    t, size = exact_shift(bn, s)
    for c in range(bn.channels):
        assert faithful(scale[c], s[c]) and near_correct(scale[c], s[c]), (c, float(scale[c]), s[c])
        assert within(shift[c], t[c], Decimal(0)), (c, float(shift[c]), t[c], ulp32(t[c]))


@SETTINGS
@given(forward_cases())
def test_fold_bn_forward_weights_faithful(case):
    kernel, bias, bn = case
    w2, _ = _call(fold_bn_forward, kernel, bias, bn)
    check_scaled_weights(w2, kernel, exact_scale(bn), -2)


@SETTINGS
@given(forward_cases())
def test_fold_bn_forward_bias_bound(case):
    """|b' − exact| ≤ ulp(exact): the forward fold's bias b + Σ W·t is correctly rounded too."""
    kernel, bias, bn = case
    _, b2 = _call(fold_bn_forward, kernel, bias, bn)
    cout = kernel.shape[-1]
    assert b2.dtype == np.float32 and b2.shape == (cout,)
    s = exact_scale(bn)
    t, size = exact_shift(bn, s)
    flat = kernel.reshape(-1, bn.channels, cout)          # (spatial, in, out)
    with localcontext(EXACT):
        for o in range(cout):
            x = Decimal(0) if bias is None else D(bias[o])
            for k in range(flat.shape[0]):
                for i in range(bn.channels):
                    x += D(flat[k, i, o]) * t[i]
            assert within(b2[o], x, Decimal(0)), (o, float(b2[o]), x, ulp32(x))


# --------------------------------------------------------------------------- pinned examples

def _naive_float32_fold(kernel, bias, bn):
    """What most tools do: s, W·s and the bias in float32."""
    f = np.float32
    gamma = np.ones(bn.channels, f) if bn.gamma is None else bn.gamma
    beta = np.zeros(bn.channels, f) if bn.beta is None else bn.beta
    s = gamma / np.sqrt(bn.var + f(bn.eps))
    b = np.zeros(bn.channels, f) if bias is None else bias
    return kernel * s, (b - bn.mean) * s + beta


def test_naive_float32_fold_breaks_the_bound():
    """Dense 1×1 W = 1, σ² = 0, ε = 1e-3 (Keras' default), μ = 1: exact s = 31.62277660168379…;
    float32 arithmetic gives 31.622774 (1.30 ulp off, not a faithful rounding) and the same error in
    the bias, beyond even the relaxed bias bound. fold_bn meets both bounds here."""
    kernel = np.ones((1, 1), np.float32)
    bn = BNParams(mean=np.ones(1, np.float32), var=np.zeros(1, np.float32), eps=1e-3)
    s = exact_scale(bn)
    t, size = exact_shift(bn, s)
    x, tol = t[0], 6 * U * size[0]

    w32, b32 = _naive_float32_fold(kernel, None, bn)
    assert w32.dtype == b32.dtype == np.float32
    assert not faithful(w32[0, 0], s[0]) and abs(D(w32[0, 0]) - s[0]) > ulp32(s[0])
    assert not within(b32[0], x, tol)

    w2, b2 = fold_bn(kernel, None, bn)
    check_scaled_weights(w2, kernel, s, -1)
    assert within(b2[0], x, tol) and faithful(b2[0], x)


def test_extremes_pinned():
    """γ = ±0, ±1e-30, ±1e-45 (subnormal), σ² = 0 and subnormal, |μ| = 1e6, |W| tiny and huge."""
    f = np.float32
    gamma = np.array([0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 1, 3e38], f)
    bn = BNParams(mean=np.array([1e6, -1e6, 7, 0, 1e-45, 3, -2, 1], f),
                  var=np.array([0, 1e-45, 1e-40, 0, 1e-30, 1e6, 0, 0], f), eps=1e-5,
                  gamma=gamma, beta=np.array([5, -5, 0, 1e6, 0, 1, 0, 0], f))
    kernel = np.array([[1e-45, -3e38, 1, 2.5, 1e-30, 1e20, 3e38, -1]] * 2, f)
    bias = np.array([1e6, -999999.94, 0, 0, 0, 1, 0, 0], f)
    w2, b2 = _call(fold_bn, kernel, bias, bn)
    s = exact_scale(bn)
    check_scaled_weights(w2, kernel, s, -1)
    assert np.array_equal(w2[:, :2], np.zeros((2, 2), f))                   # γ = ±0: weights vanish
    assert b2[0] == f(5) and b2[1] == f(-5)                                # ... and the bias is β
    assert np.isposinf(w2[0, 6]) and np.isneginf(w2[0, 7])                 # 3e38·s, −1·3e38/√1e-5
    assert np.isneginf(b2[7])                                              # (0 − 1)·3e38/√ε overflows


def test_overflow_gives_signed_inf():
    """An exact folded value beyond float32 comes out as ±inf, never as FLT_MAX or nan (today numpy
    also warns "overflow encountered in cast"; not asserted, an exporter may check for inf itself)."""
    f = np.float32
    bn = BNParams(mean=np.array([-3e38, 3e38, 0], f), var=np.zeros(3, f), eps=1e-3)   # s = 31.6
    kernel = np.array([[3e38, -3e38, 1e37]], f)
    w2, b2 = _call(fold_bn, kernel, None, bn)
    assert np.isposinf(w2[0, 0]) and np.isneginf(w2[0, 1]) and np.isfinite(w2[0, 2])
    assert np.isposinf(b2[0]) and np.isneginf(b2[1]) and b2[2] == 0
    check_scaled_weights(w2, kernel, exact_scale(bn), -1)
    scale, shift = _call(bn_as_scale_bias, BNParams(mean=np.array([3e38], f), var=np.zeros(1, f), eps=1e-3,
                                                    gamma=np.array([3e38], f)))
    assert np.isposinf(scale[0]) and np.isneginf(shift[0])


# The bias counterexample: one channel, σ² = 0, ε = 1e-3, no γ, no producer bias, μ = 7,
# β = float32(7/√0.001) = 221.35943603515625. Exact bias −1.766303009359380…e−07.
CX = dict(mean=np.array([7], np.float32), var=np.zeros(1, np.float32), eps=1e-3,
          beta=np.array([221.35943603515625], np.float32))
# A larger one from the random search: 14 502 ulp off in float64, still inside 6·u·(|μ·s| + |β|).
CX_LARGE = dict(mean=np.array([843.296142578125], np.float32), eps=1e-3,
                var=np.array([0.789567768573761], np.float32), beta=np.array([948.4415283203125], np.float32))


def _cx_outputs(params):
    """The bias from each of the three functions on a one-channel BN (forward: a 1×1 identity)."""
    bn = BNParams(**params)
    one = np.ones((1, 1), np.float32)
    return {"fold_bn": fold_bn(one, None, bn)[1][0], "bn_as_scale_bias": bn_as_scale_bias(bn)[1][0],
            "fold_bn_forward": fold_bn_forward(one, None, bn)[1][0]}


@pytest.mark.parametrize("params", [CX, CX_LARGE], ids=["smallest", "large"])
def test_bias_counterexample(params):
    """The cancellation cases meet the bound that holds (one ulp + the float64 error bound)."""
    bn = BNParams(**params)
    s = exact_scale(bn)
    t, size = exact_shift(bn, s)
    for name, out in _cx_outputs(params).items():
        assert within(out, t[0], Decimal(0)), name
    if params is CX:
        assert f"{t[0]:.12e}" == "-1.766303009359e-7"


@pytest.mark.parametrize("params", [CX, CX_LARGE], ids=["smallest", "large"])
def test_bias_counterexample_one_ulp(params):
    """The one-ulp bound for the bias, which a plain float64 formula misses on these inputs."""
    bn = BNParams(**params)
    t, _ = exact_shift(bn, exact_scale(bn))
    bad = {name: float(abs(D(out) - t[0]) / ulp32(t[0])) for name, out in _cx_outputs(params).items()
           if not faithful(out, t[0])}
    assert not bad, f"ulps off: {bad}"
