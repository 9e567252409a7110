"""BatchNormalization passes: fold into the producer; export what cannot be folded on its own.

Adapters only: the math is :func:`kerasfold.fold.fold_bn` on arrays.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..activations import is_linear
from ..fold import BNParams, bn_as_scale_bias, fold_bn, fold_bn_forward
from ..shapes import conv_geometry
from ..graph import Graph, Node

def _last_axis(key: str) -> Callable[[Node, BNParams], dict[str, np.ndarray]]:
    """Fold into a producer whose ``key`` weight has the output channel last:
    Conv2D (kh, kw, in/groups, out), Dense (in, out)."""
    def fold(producer: Node, bn: BNParams) -> dict[str, np.ndarray]:
        kernel, bias = fold_bn(producer.weights[key], producer.weights.get("bias"), bn, -1)
        return {key: kernel, "bias": bias}
    return fold


def _depthwise(producer: Node, bn: BNParams) -> dict[str, np.ndarray]:
    """DepthwiseConv2D (kh, kw, C, M): output channel c·M + m, i.e. the flattened last two axes."""
    kernel = producer.weights["depthwise_kernel"]
    kh, kw, c, m = kernel.shape
    flat, bias = fold_bn(kernel.reshape(kh, kw, c * m), producer.weights.get("bias"), bn, -1)
    return {"depthwise_kernel": flat.reshape(kh, kw, c, m), "bias": bias}


# Producer kind -> its fold: the producer's new weights.
FOLD_TARGETS: dict[str, Callable[[Node, BNParams], dict[str, np.ndarray]]] = {
    "Conv2D": _last_axis("kernel"),
    "Dense": _last_axis("kernel"),
    "DepthwiseConv2D": _depthwise,
    "Conv2DTranspose": lambda p, bn: dict(zip(("kernel", "bias"), fold_bn(
        p.weights["kernel"], p.weights.get("bias"), bn, 2))),      # (kh, kw, out, in): out is axis 2
}


def bn_params(bn: Node) -> BNParams:
    """Read by name, never by position: γ and β may be absent (scale/center False)."""
    w = bn.weights
    return BNParams(mean=w["moving_mean"], var=w["moving_variance"],
                    eps=float(bn.config.get("epsilon", 1e-3)), gamma=w.get("gamma"), beta=w.get("beta"))


def normalises_channels(bn: Node) -> bool:
    """True when the BN's axis is the last (channel) axis of its tensor (4-D when the shape is unknown)."""
    rank = len(bn.output_shape) + 1 if bn.output_shape else 4      # batch axis included
    axis = bn.config.get("axis", -1)
    axes = axis if isinstance(axis, list) else [axis]
    return len(axes) == 1 and int(axes[0]) in (-1, rank - 1)


def _fold_guard(graph: Graph, bn: Node) -> Node | None:
    """The producer ``bn`` may be folded into, or None when a guard fails."""
    if len(bn.inputs) != 1:
        return None
    producer = graph[bn.inputs[0]]
    if producer.kind not in FOLD_TARGETS or producer.folded or not is_linear(producer.activation):
        return None
    if graph.is_shared(producer):
        return None                             # shared weights: folding would change other calls
    if graph.sole_consumer(producer.name) is not bn:
        return None                             # the raw conv output is needed elsewhere
    return producer if normalises_channels(bn) else None


def fold_bn_into_producers(graph: Graph) -> None:
    """Conv2D | DepthwiseConv2D | Dense (W, b or none, linear) -> BN(γ, β, μ, σ², ε)  =>  (W·s, (b−μ)s+β).

        before:  x -> Conv2D -> BatchNormalization -> y
        after:   x -> Conv2D' -> y            (Conv2D'.folded == ["batch_normalization"])

    Guards: the conv's output feeds only the BN and is not a model output; the BN normalises the
    channel axis; the conv's own activation is linear; the conv's weights are not shared.
    """
    for bn in graph:
        if bn.kind != "BatchNormalization" or bn.name not in graph.nodes:
            continue
        producer = _fold_guard(graph, bn)
        if producer is None:
            continue
        producer.weights = {**producer.weights, **FOLD_TARGETS[producer.kind](producer, bn_params(bn))}
        producer.config = {**producer.config, "use_bias": True}
        producer.folded.append(bn.layer)
        graph.absorb(producer.name, bn.name)


def _pads_nothing(graph: Graph, node: Node) -> bool:
    if node.kind == "Dense":
        return True
    if node.kind != "Conv2D" or int(node.config.get("groups", 1) or 1) != 1:
        return False
    pad, _ = conv_geometry(node, graph[node.inputs[0]].output_shape)
    return pad == [0, 0, 0, 0]


def fold_bn_into_consumers(graph: Graph) -> None:
    """A BatchNormalization before a layer that pads nothing folds forward into it.

        before:  x -> BatchNormalization -> Conv2D(valid, W, b) -> y
        after:   x -> Conv2D(W·s on the input axis, b + Σ W·t) -> y

    Guards: the BN feeds only that Conv2D (groups 1) or Dense and is not a model output; the
    layer's padding is zero on every side; its weights are not shared; the BN normalises channels.
    """
    for bn in graph:
        if bn.kind != "BatchNormalization" or bn.name not in graph.nodes or len(bn.inputs) != 1:
            continue
        consumer = graph.sole_consumer(bn.name)
        if consumer is None or consumer.kind not in ("Conv2D", "Dense"):
            continue
        if graph.is_shared(consumer):
            continue
        if not normalises_channels(bn) or not _pads_nothing(graph, consumer):
            continue
        axis = 0 if consumer.kind == "Dense" else 2
        kernel, bias = fold_bn_forward(consumer.weights["kernel"], consumer.weights.get("bias"),
                                       bn_params(bn), axis)
        consumer.weights = {**consumer.weights, "kernel": kernel, "bias": bias}
        consumer.config = {**consumer.config, "use_bias": True}
        consumer.folded.insert(0, bn.layer)       # graph order: this BN came before any folded after
        graph.bypass(bn.name)


NORMALIZATION_EPSILON = 1e-7      # keras.config.epsilon(): Normalization divides by max(√σ², ε)


def normalization_to_scale_bias(graph: Graph) -> None:
    """Keras' Normalization layer (at the input, usually) becomes a 1x1 DepthwiseConv2D.

        before:  x -> Normalization(mean μ, variance σ²) -> y = (x − μ) / max(√σ², 1e-7)
        after:   x -> DepthwiseConv2D(1x1, s = 1 / max(√σ², 1e-7), bias = −μ s) -> y
    """
    for node in graph:
        if node.kind != "Normalization" or not normalises_channels(node):
            continue
        stats = node.weights if "mean" in node.weights else node.config       # adapted, or given
        channels = node.output_shape[-1] if node.output_shape else None
        mean = np.broadcast_to(np.asarray(stats["mean"], np.float64).reshape(-1), (channels,))
        var = np.broadcast_to(np.asarray(stats["variance"], np.float64).reshape(-1), (channels,))
        std = np.maximum(np.sqrt(var), NORMALIZATION_EPSILON)
        _to_depthwise(node, (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32), folded=[])


def _to_depthwise(node: Node, scale: np.ndarray, shift: np.ndarray, folded: list[str]) -> None:
    node.origin, node.kind = node.kind, "DepthwiseConv2D"
    node.config = {"name": node.layer, "kernel_size": [1, 1], "strides": [1, 1], "padding": "valid",
                   "depth_multiplier": 1, "dilation_rate": [1, 1], "use_bias": True, "activation": "linear"}
    node.weights = {"depthwise_kernel": scale.reshape(1, 1, -1, 1), "bias": shift}
    node.folded = folded


def bn_to_scale_bias(graph: Graph) -> None:
    """Any BatchNormalization left becomes a 1x1 DepthwiseConv2D with weights s and bias t.

        before:  x -> BatchNormalization -> y
        after:   x -> DepthwiseConv2D(1x1, depthwise_kernel (1, 1, C, 1) = s, bias = t) -> y
    """
    for bn in graph:
        if bn.kind != "BatchNormalization":
            continue
        if not normalises_channels(bn):
            continue                            # stays a BatchNormalization; the emitter rejects it
        scale, shift = bn_as_scale_bias(bn_params(bn))
        _to_depthwise(bn, scale, shift, folded=[bn.layer])


