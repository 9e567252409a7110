"""Graph rewrites, run in order. Each pass matches its pattern, checks its guards and only then
rewrites; a failed guard leaves the layers as they are (it is not an error)."""
from __future__ import annotations

from typing import Callable

from ..graph import Graph
from .activations import fuse_activations, own_activations
from .batch_norm import (bn_to_scale_bias, fold_bn_into_consumers, fold_bn_into_producers,
                         normalization_to_scale_bias)
from .identities import drop_identities
from .separable import split_separable

PASSES: list[Callable[[Graph], None]] = [
    split_separable,          # SeparableConv2D  =>  DepthwiseConv2D -> Conv2D 1x1
    own_activations,          # Conv2D(activation="relu") -> node.activation
    drop_identities,          # Dropout & co. are identities at inference
    fold_bn_into_producers,   # Conv2D -> BN  =>  Conv2D'
    fold_bn_into_consumers,   # BN -> Conv2D(pads nothing)  =>  Conv2D'
    bn_to_scale_bias,         # any BN left  =>  1x1 depthwise (per-channel scale/bias)
    normalization_to_scale_bias,  # Normalization (input)  =>  1x1 depthwise
    fuse_activations,         # Conv2D' -> LeakyReLU  =>  Conv2D'(activation=leaky_relu)
]


def run_passes(graph: Graph) -> Graph:
    for apply in PASSES:
        apply(graph)
    return graph
