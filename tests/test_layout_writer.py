import numpy as np

from kerasfold.layout import conv2d_hwio, conv2d_ohwi, depthwise_hwcm, depthwise_ohw
from kerasfold.writer import safe_name


def test_conv_ohwi_positions():
    k = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)     # (kh, kw, in, out)
    w = conv2d_ohwi(k)
    assert w.shape == (5, 2, 3, 4)
    for h, x, i, o in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 0, 2, 3), (0, 1, 3, 1)]:
        assert w[o, h, x, i] == k[h, x, i, o]
    np.testing.assert_array_equal(conv2d_hwio(w), k)


def test_depthwise_output_channel_is_c_times_m_plus_m():
    k = np.arange(3 * 3 * 4 * 2, dtype=np.float32).reshape(3, 3, 4, 2)     # (kh, kw, C, M)
    w = depthwise_ohw(k)
    assert w.shape == (8, 3, 3)
    assert w[2 * 2 + 1, 1, 2] == k[1, 2, 2, 1]
    np.testing.assert_array_equal(depthwise_hwcm(w, 2), k)


def test_safe_names():
    taken = set()
    assert safe_name("conv/1:0", taken) == "conv_1_0"
    assert safe_name("..", taken) == "_."
    assert safe_name(".", taken) == "_"
    assert safe_name("", taken) == "__2"                  # empty stem becomes "_", already taken
    assert safe_name("Conv", taken) == "Conv"
    assert safe_name("conv", taken) == "conv_2"           # case-only collision on APFS/HFS+
    assert safe_name("café", taken) == "caf_"
    assert all("/" not in t for t in taken)
