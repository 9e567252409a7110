import itertools

import numpy as np
import pytest

from kerasfold.fold import BNParams, bn_as_scale_bias, fold_bn


def _bn(rng, c, gamma, beta, eps=1e-3):
    return BNParams(mean=rng.normal(0, 2, c).astype(np.float32), var=rng.uniform(0.05, 3, c).astype(np.float32),
                    eps=eps, gamma=rng.uniform(-1.5, 1.5, c).astype(np.float32) if gamma else None,
                    beta=rng.normal(0, 1, c).astype(np.float32) if beta else None)


def _bn_apply(y, bn):
    g = 1.0 if bn.gamma is None else bn.gamma.astype(np.float64)
    b = 0.0 if bn.beta is None else bn.beta.astype(np.float64)
    return g * (y - bn.mean.astype(np.float64)) / np.sqrt(bn.var.astype(np.float64) + bn.eps) + b


@pytest.mark.parametrize("has_bias,gamma,beta,k,c", list(itertools.product(
    [True, False], [True, False], [True, False], [1, 3, 5], [1, 3, 16])))
def test_fold_equals_bn_after_conv(has_bias, gamma, beta, k, c):
    rng = np.random.default_rng(k * 100 + c)
    cin = 4
    kernel = rng.normal(0, 1, (k, k, cin, c)).astype(np.float32)
    bias = rng.normal(0, 1, c).astype(np.float32) if has_bias else None
    bn = _bn(rng, c, gamma, beta)
    w2, b2 = fold_bn(kernel, bias, bn)
    assert w2.dtype == np.float32 and b2.dtype == np.float32 and w2.shape == kernel.shape
    # one patch through the conv: y = sum(patch * W) + b, then BN; vs the folded layer
    patch = rng.normal(0, 1, (k, k, cin))
    y = np.einsum("hwi,hwio->o", patch, kernel.astype(np.float64)) + (0 if bias is None else bias)
    folded = np.einsum("hwi,hwio->o", patch, w2.astype(np.float64)) + b2
    np.testing.assert_allclose(folded, _bn_apply(y, bn), rtol=1e-5, atol=1e-5)
    # and each value is the float64 formula rounded once
    s = (1.0 if bn.gamma is None else bn.gamma.astype(np.float64)) / np.sqrt(bn.var.astype(np.float64) + bn.eps)
    np.testing.assert_array_equal(w2, (kernel.astype(np.float64) * s).astype(np.float32))
    b64 = (0 if bias is None else bias.astype(np.float64)) - bn.mean.astype(np.float64)
    np.testing.assert_array_equal(b2, (b64 * s + (0 if bn.beta is None else bn.beta.astype(np.float64))).astype(np.float32))


def test_epsilon_is_read_not_assumed():
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1, (3, 3, 2, 4)).astype(np.float32)
    bn = _bn(rng, 4, True, True, eps=1e-3)
    small = BNParams(mean=bn.mean, var=bn.var * 0 + 1e-3, eps=1e-5, gamma=bn.gamma, beta=bn.beta)
    large = BNParams(mean=bn.mean, var=bn.var * 0 + 1e-3, eps=1e-3, gamma=bn.gamma, beta=bn.beta)
    w_small, _ = fold_bn(kernel, None, small)
    w_large, _ = fold_bn(kernel, None, large)
    np.testing.assert_allclose(w_small / w_large, np.sqrt(2e-3 / 1.01e-3), rtol=1e-6)


def test_channel_count_mismatch_raises():
    bn = _bn(np.random.default_rng(0), 3, True, True)
    with pytest.raises(ValueError, match="expected 3 output channels"):
        fold_bn(np.zeros((1, 1, 2, 4), np.float32), None, bn)


def test_scale_bias_is_the_bn_affine_map():
    rng = np.random.default_rng(1)
    bn = _bn(rng, 6, True, True)
    s, t = bn_as_scale_bias(bn)
    x = rng.normal(0, 3, 6)
    np.testing.assert_allclose(s * x + t, _bn_apply(x, bn), rtol=1e-6, atol=1e-6)
