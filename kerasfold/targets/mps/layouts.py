"""Keras kernel order -> MPS order and back, one named pair per operation class.

Shapes in the comments; every forward function asserts the shape it produces. The inverse is
found by operation class, never by the layout label (``conv2d`` and ``conv2d_transpose`` both
say "OHWI" with different inverses).

The forward functions return *views* (no copy): the writer lays out, casts and writes in one
tiled pass (:func:`kerasfold.targets.mps.strips.contiguous`), so a float64 fold is never copied
in float64 first.
"""
from __future__ import annotations

import numpy as np


def conv2d_ohwi(kernel: np.ndarray) -> np.ndarray:
    """Conv2D: (kh, kw, in/groups, out) HWIO -> (out, kh, kw, in/groups) OHWI."""
    kh, kw, cin, cout = kernel.shape
    out = kernel.transpose(3, 0, 1, 2)
    assert out.shape == (cout, kh, kw, cin)
    return out


def conv2d_hwio(weights: np.ndarray) -> np.ndarray:
    """Inverse of :func:`conv2d_ohwi`: (out, kh, kw, in/groups) -> (kh, kw, in/groups, out)."""
    return np.ascontiguousarray(weights.transpose(1, 2, 3, 0))


def depthwise_ohw(kernel: np.ndarray) -> np.ndarray:
    """DepthwiseConv2D: (kh, kw, C, M) -> (C*M, kh, kw), output channel o = c*M + m
    (MPS's [in][multiplier][kh][kw])."""
    kh, kw, c, m = kernel.shape
    out = kernel.transpose(2, 3, 0, 1).reshape(c * m, kh, kw)      # a copy only where reshape needs one
    assert out.shape == (c * m, kh, kw)
    return out


def depthwise_hwcm(weights: np.ndarray, multiplier: int) -> np.ndarray:
    """Inverse of :func:`depthwise_ohw`: (C*M, kh, kw) -> (kh, kw, C, M)."""
    cm, kh, kw = weights.shape
    return np.ascontiguousarray(weights.reshape(cm // multiplier, multiplier, kh, kw).transpose(2, 3, 0, 1))


def transpose_ohwi(kernel: np.ndarray) -> np.ndarray:
    """Conv2DTranspose: (kh, kw, out, in) -> (out, kh, kw, in), used as-is (no rotation)."""
    kh, kw, cout, cin = kernel.shape
    out = kernel.transpose(2, 0, 1, 3)
    assert out.shape == (cout, kh, kw, cin)
    return out


def transpose_hwoi(weights: np.ndarray) -> np.ndarray:
    """Inverse of :func:`transpose_ohwi`: (out, kh, kw, in) -> (kh, kw, out, in)."""
    return np.ascontiguousarray(weights.transpose(1, 2, 0, 3))


def dense_oi(kernel: np.ndarray) -> np.ndarray:
    """Dense: (in, out) -> (out, in); ``in`` stays in Keras' flatten order (H, W, C), so a Dense
    after Flatten reads [out][H][W][C] as Forge's fully connected layer does."""
    n_in, n_out = kernel.shape
    out = kernel.T
    assert out.shape == (n_out, n_in)
    return out


def dense_io(weights: np.ndarray) -> np.ndarray:
    """Inverse of :func:`dense_oi`: (out, in) -> (in, out)."""
    return np.ascontiguousarray(weights.T)
