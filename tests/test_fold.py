"""kerasfold.fold on plain arrays: the fold equals BN applied after the layer (float64 oracle),
and every folded value is the float64 formula rounded to float32 once (by the target: the folds
return float64 weights)."""
import itertools

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from conftest import float32_target
from kerasfold.passes import bn_math
from kerasfold.passes.bn_math import BNParams

bn_as_scale_bias = float32_target(bn_math.bn_as_scale_bias)
fold_bn = float32_target(bn_math.fold_bn)

CIN = 4


def _bn(rng, c, gamma=True, beta=True, eps=1e-3):
    """Non-identity statistics; a few channels with a variance near ε, so that ε matters."""
    var = rng.uniform(0.05, 3.0, c)
    var[::3] = rng.uniform(1e-5, 1e-3, var[::3].shape)
    return BNParams(mean=rng.normal(0, 2, c).astype(np.float32), var=var.astype(np.float32), eps=eps,
                    gamma=(rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)).astype(np.float32) if gamma else None,
                    beta=rng.normal(0, 1, c).astype(np.float32) if beta else None)


def _bn64(y, bn):
    """BatchNormalization at inference, in float64, from its definition."""
    g = 1.0 if bn.gamma is None else bn.gamma.astype(np.float64)
    b = 0.0 if bn.beta is None else bn.beta.astype(np.float64)
    return g * (y - bn.mean.astype(np.float64)) / np.sqrt(bn.var.astype(np.float64) + bn.eps) + b


def _scale64(bn):
    g = 1.0 if bn.gamma is None else bn.gamma.astype(np.float64)
    return g / np.sqrt(bn.var.astype(np.float64) + bn.eps)


def _conv64(x, kernel, bias):
    """Valid 2-D convolution in float64: x (H, W, in), kernel (kh, kw, in, out)."""
    kh, kw = kernel.shape[:2]
    patches = sliding_window_view(x.astype(np.float64), (kh, kw), axis=(0, 1))   # (H', W', in, kh, kw)
    y = np.einsum("abihw,hwio->abo", patches, kernel.astype(np.float64))
    return y + (0.0 if bias is None else bias.astype(np.float64))


CASES = list(itertools.product([True, False], [True, False], [True, False], [1, 3, 5], [1, 3, 16]))


@pytest.mark.parametrize("has_bias,gamma,beta,k,c", CASES)
def test_fold_equals_bn_after_conv(has_bias, gamma, beta, k, c):
    rng = np.random.default_rng(1000 * k + 10 * c + 4 * has_bias + 2 * gamma + beta)
    kernel = rng.normal(0, 1, (k, k, CIN, c)).astype(np.float32)
    bias = rng.normal(0, 1, c).astype(np.float32) if has_bias else None
    bn = _bn(rng, c, gamma, beta)
    kernel_before, bias_before = kernel.copy(), None if bias is None else bias.copy()

    w2, b2 = fold_bn(kernel, bias, bn)

    assert w2.dtype == np.float32 and b2.dtype == np.float32
    assert w2.shape == kernel.shape and b2.shape == (c,)
    np.testing.assert_array_equal(kernel, kernel_before)                      # inputs untouched
    if bias is not None:
        np.testing.assert_array_equal(bias, bias_before)
    # the layer with folded weights computes BN(conv(x)), up to the one rounding of each weight
    x = rng.normal(0, 1, (k + 2, k + 2, CIN))
    want = _bn64(_conv64(x, kernel, bias), bn)
    got = _conv64(x, w2, b2)
    bound = _conv64(np.abs(x), np.abs(w2), np.abs(b2))                        # sum of |terms|
    assert np.all(np.abs(got - want) <= 2 ** -23 * bound + 1e-12)
    # each value is the float64 formula rounded once
    s = _scale64(bn)
    np.testing.assert_array_equal(w2, (kernel.astype(np.float64) * s).astype(np.float32))
    b64 = 0.0 if bias is None else bias.astype(np.float64)
    beta64 = 0.0 if bn.beta is None else bn.beta.astype(np.float64)
    np.testing.assert_array_equal(b2, ((b64 - bn.mean.astype(np.float64)) * s + beta64).astype(np.float32))


def test_one_by_one_is_a_matmul_check():
    """The 1×1 case spelled out: folded(W)·x + b' against BN(W·x + b), per pixel."""
    rng = np.random.default_rng(7)
    kernel = rng.normal(0, 1, (1, 1, 5, 6)).astype(np.float32)
    bias = rng.normal(0, 1, 6).astype(np.float32)
    bn = _bn(rng, 6)
    w2, b2 = fold_bn(kernel, bias, bn)
    x = rng.normal(0, 1, (10, 5))
    want = _bn64(x @ kernel[0, 0].astype(np.float64) + bias, bn)
    np.testing.assert_allclose(x @ w2[0, 0].astype(np.float64) + b2, want, rtol=1e-6, atol=1e-6)


def test_rounding_once_differs_from_float32_arithmetic():
    """The oracle above can tell: computing the fold in float32 (as most tools do) differs."""
    rng = np.random.default_rng(3)
    kernel = rng.normal(0, 1, (5, 5, 16, 16)).astype(np.float32)
    bias = rng.normal(0, 1, 16).astype(np.float32)
    bn = _bn(rng, 16)
    w2, b2 = fold_bn(kernel, bias, bn)
    s32 = bn.gamma / np.sqrt(bn.var + np.float32(bn.eps))
    naive_w, naive_b = kernel * s32, (bias - bn.mean) * s32 + bn.beta
    assert np.any(w2 != naive_w) or np.any(b2 != naive_b)
    np.testing.assert_allclose(w2, naive_w, rtol=1e-5)


@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_epsilon_is_read_from_the_parameters(eps):
    rng = np.random.default_rng(11)
    kernel = rng.normal(0, 1, (3, 3, 2, 6)).astype(np.float32)
    bn = _bn(rng, 6, eps=eps)
    w2, b2 = fold_bn(kernel, None, bn)
    s = bn.gamma.astype(np.float64) / np.sqrt(bn.var.astype(np.float64) + eps)
    np.testing.assert_array_equal(w2, (kernel.astype(np.float64) * s).astype(np.float32))
    other = 1e-5 if eps == 1e-3 else 1e-3
    w_other, b_other = fold_bn(kernel, None, BNParams(bn.mean, bn.var, other, bn.gamma, bn.beta))
    assert not np.array_equal(w2, w_other) and not np.array_equal(b2, b_other)
    # the channels whose variance is near ε are the ones that differ a lot
    ratio = np.abs(w2 / w_other).reshape(-1, 6)[0]
    assert np.max(np.abs(ratio - 1)) > 0.1


@pytest.mark.parametrize("axis", [-1, 2, 0])
def test_channel_axis(axis):
    """The scale goes along ``channel_axis`` (Conv2DTranspose keeps its output channel on axis 2)."""
    rng = np.random.default_rng(5)
    shape = [3, 3, 4, 5]
    c = shape[axis]
    kernel = rng.normal(0, 1, shape).astype(np.float32)
    bn = _bn(rng, c)
    w2, _ = fold_bn(kernel, None, bn, channel_axis=axis)
    view = [1] * 4
    view[axis] = c
    np.testing.assert_array_equal(w2, (kernel.astype(np.float64) * _scale64(bn).reshape(view)).astype(np.float32))


def test_channel_count_mismatch_raises():
    bn = _bn(np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="expected 3 output channels"):
        fold_bn(np.zeros((1, 1, 2, 4), np.float32), None, bn)


@pytest.mark.parametrize("gamma,beta", list(itertools.product([True, False], [True, False])))
def test_bn_as_scale_bias(gamma, beta):
    rng = np.random.default_rng(2 * gamma + beta)
    bn = _bn(rng, 16, gamma, beta, eps=1e-5)
    s, t = bn_as_scale_bias(bn)
    assert s.dtype == np.float32 and t.dtype == np.float32 and s.shape == t.shape == (16,)
    s64 = _scale64(bn)
    beta64 = 0.0 if bn.beta is None else bn.beta.astype(np.float64)
    np.testing.assert_array_equal(s, s64.astype(np.float32))
    np.testing.assert_array_equal(t, (beta64 - bn.mean.astype(np.float64) * s64).astype(np.float32))
    x = rng.normal(0, 3, (20, 16))
    np.testing.assert_allclose(s.astype(np.float64) * x + t, _bn64(x, bn), rtol=1e-6, atol=1e-5)
