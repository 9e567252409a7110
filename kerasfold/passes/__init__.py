"""Graph rewrites on typed operations, run as one ordered list. Each pass matches its pattern,
checks its guards and only then rewrites; a failed guard leaves the nodes as they are (it is not
an error). Every rewrite keeps each surviving node's output shape, so shapes stay correct."""
from __future__ import annotations

from typing import Callable

from ..graph import Graph
from .activations import fuse_activations
from .batch_norm import (bn_to_scale_bias, fold_bn_into_consumers, fold_bn_into_producers,
                         normalization_to_scale_bias)
from .identities import drop_identities
from .separable import split_separable

Pass = Callable[[Graph], None]

PASSES: list[Pass] = [
    split_separable,              # SeparableConv2D  =>  DepthwiseConv2D -> Conv2D 1x1
    drop_identities,              # Dropout & co. are identities at inference
    fold_bn_into_producers,       # Conv2D -> BN  =>  Conv2D'
    fold_bn_into_consumers,       # BN -> Conv2D(pads nothing)  =>  Conv2D'
    bn_to_scale_bias,             # any BN left  =>  1x1 depthwise (per-channel scale/bias)
    normalization_to_scale_bias,  # Normalization (input)  =>  1x1 depthwise
    fuse_activations,             # Conv2D' -> LeakyReLU  =>  Conv2D'(activation=leaky_relu)
]

# Without folding (the verifier's reference): BN stays a per-channel entry, activations stay layers.
FOLDS: tuple[Pass, ...] = (fold_bn_into_producers, fold_bn_into_consumers, fuse_activations)


def run_passes(graph: Graph, fold: bool = True) -> Graph:
    for apply in PASSES:
        if fold or apply not in FOLDS:
            apply(graph)
    return graph
