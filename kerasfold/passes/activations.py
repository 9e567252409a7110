"""Vertical fusion of activation layers into the weighted operation before them.

    before:  x -> Conv2D' -> LeakyReLU(0.1) -> y
    after:   x -> Conv2D'(activation={"type": "leaky_relu", "alpha": 0.1}) -> y
"""
from __future__ import annotations

from .. import ops
from ..graph import Graph
from ..kinds.activation import is_linear


def fuse_activations(graph: Graph) -> None:
    """An activation layer that is the only consumer of a linear weighted op becomes its activation.

    Guards: the producer's output feeds only the activation and is not a model output; the
    producer's own activation is linear.
    """
    for act in graph:
        if not isinstance(act.op, ops.Activation):
            continue
        producer = graph.producer(act)
        if producer is None or not isinstance(producer.op, ops.WEIGHTED) or not is_linear(producer.op.activation):
            continue
        if graph.sole_consumer(producer.name) is not act:
            continue
        producer.op.activation = dict(act.op.activation)
        graph.absorb(producer.name, act.name)
