"""kerasfold.targets.mps.layouts: Keras kernel order -> device order (and back), checked element by element."""
import itertools

import numpy as np
import pytest

from kerasfold.targets.mps.layouts import (conv2d_hwio, conv2d_ohwi, dense_io, dense_oi, depthwise_hwcm,
                                          depthwise_ohw, transpose_hwoi, transpose_ohwi)
from kerasfold.targets.mps.strips import contiguous


def _distinct(shape):
    """Every element different, so that a wrong axis cannot go unnoticed."""
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_conv2d_ohwi_positions():
    k = _distinct((2, 3, 4, 5))                                   # (kh, kw, in, out)
    w = conv2d_ohwi(k)
    assert w.shape == (5, 2, 3, 4) and w.dtype == np.float32
    assert np.shares_memory(w, k)                                 # a view: the writer copies it once
    for h, x, i, o in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 0, 2, 3), (0, 1, 3, 1), (1, 1, 0, 2)]:
        assert w[o, h, x, i] == k[h, x, i, o]
    for h, x, i, o in itertools.product(range(2), range(3), range(4), range(5)):
        assert w[o, h, x, i] == k[h, x, i, o]
    # in the raw bytes (as the writer lays them out), the input channel varies fastest, then kw, kh, out
    flat = np.frombuffer(contiguous(w, "<f4").tobytes(), np.float32)
    assert flat[((4 * 2 + 1) * 3 + 2) * 4 + 3] == k[1, 2, 3, 4]


def test_conv2d_roundtrip():
    k = _distinct((3, 3, 7, 2))
    np.testing.assert_array_equal(conv2d_hwio(conv2d_ohwi(k)), k)


@pytest.mark.parametrize("channels,multiplier", [(4, 1), (4, 2), (3, 3)])
def test_depthwise_output_channel_is_c_times_m_plus_m(channels, multiplier):
    k = _distinct((3, 2, channels, multiplier))                    # (kh, kw, C, M)
    w = depthwise_ohw(k)
    assert w.shape == (channels * multiplier, 3, 2)
    for c, m in itertools.product(range(channels), range(multiplier)):
        np.testing.assert_array_equal(w[c * multiplier + m], k[:, :, c, m])
    np.testing.assert_array_equal(depthwise_hwcm(w, multiplier), k)


def test_transpose_and_dense_roundtrip():
    """conv2d and conv2d_transpose both write "OHWI" but invert differently: each op class owns its pair."""
    k = _distinct((3, 2, 5, 4))                                     # (kh, kw, out, in)
    w = transpose_ohwi(k)
    assert w.shape == (5, 3, 2, 4) and w[1, 2, 0, 3] == k[2, 0, 1, 3]
    np.testing.assert_array_equal(transpose_hwoi(w), k)
    assert conv2d_hwio(w).shape == (3, 2, 4, 5) != k.shape           # the conv2d inverse is the wrong one
    d = _distinct((6, 3))
    assert dense_oi(d).shape == (3, 6) and dense_oi(d)[2, 5] == d[5, 2]
    np.testing.assert_array_equal(dense_io(dense_oi(d)), d)
