"""SeparableConv2D becomes its two device layers, so a following BN folds into the pointwise one.

    before:  x -> SeparableConv2D(depthwise (kh, kw, C, M), pointwise (1, 1, C*M, out), bias, act) -> y
    after:   x -> DepthwiseConv2D "<name>/depthwise" (no bias) -> Conv2D 1x1 "<name>" (bias, act) -> y
"""
from __future__ import annotations

from .. import ops
from ..graph import Graph, Node


def split_separable(graph: Graph) -> None:
    for node in graph:
        op = node.op
        if not isinstance(op, ops.SeparableConv2D):
            continue
        depthwise = Node(
            name=f"{node.name}/depthwise", inputs=list(node.inputs), layer=f"{node.layer}/depthwise",
            keras_class="DepthwiseConv2D", synthetic=True,
            op=ops.DepthwiseConv2D(kernel=op.depthwise, bias=None, strides=op.strides, dilation=op.dilation,
                                   padding=op.padding, pad=op.pad),
            shape=(*(node.shape or (None, None, None))[:-1], op.depthwise.shape[2] * op.depthwise.shape[3]))
        node.op = ops.Conv2D(kernel=op.pointwise, bias=op.bias, strides=(1, 1), dilation=(1, 1), groups=1,
                             padding="valid", pad=(0, 0, 0, 0), activation=op.activation)
        node.inputs = [depthwise.name]
        graph.insert_before(node.name, depthwise)
