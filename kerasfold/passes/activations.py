"""Activations: a layer's own ``activation`` argument, and vertical fusion of activation layers.

    before:  x -> Conv2D' -> LeakyReLU(0.1) -> y
    after:   x -> Conv2D'(activation={"type": "leaky_relu", "alpha": 0.1}) -> y
"""
from __future__ import annotations

from ..activations import ACTIVATION_LAYERS, from_layer, from_name, is_linear
from ..errors import ExportError
from ..graph import Graph

# Kinds that take a fused activation on the device (the weighted entries).
FUSES_INTO = ("Conv2D", "DepthwiseConv2D", "Dense", "Conv2DTranspose")


def own_activations(graph: Graph) -> None:
    """``Conv2D(activation="relu")`` -> ``node.activation = {"type": "relu"}``."""
    for node in graph:
        if node.kind in FUSES_INTO and "activation" in node.config:
            try:
                node.activation = from_name(node.config["activation"])
            except ExportError as err:
                raise err.at(layer=node.name)


def fuse_activations(graph: Graph) -> None:
    """An activation layer that is the only consumer of a linear conv entry becomes its activation.

    Guards: the producer's output feeds only the activation and is not a model output; the
    producer's own activation is linear.
    """
    for act in graph:
        if act.kind not in ACTIVATION_LAYERS or len(act.inputs) != 1:
            continue
        producer = graph[act.inputs[0]]
        if producer.kind not in FUSES_INTO or not is_linear(producer.activation):
            continue
        if graph.sole_consumer(producer.name) is not act:
            continue
        producer.activation = from_layer(act.kind, act.config, act.name)
        graph.absorb(producer.name, act.name)
