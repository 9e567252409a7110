"""SeparableConv2D becomes its two device layers, so a following BN folds into the pointwise one.

    before:  x -> SeparableConv2D(depthwise_kernel, pointwise_kernel, bias, activation) -> y
    after:   x -> DepthwiseConv2D "<name>/depthwise" (no bias) -> Conv2D 1x1 "<name>" (bias, activation) -> y
"""
from __future__ import annotations

from ..graph import Graph, Node


def split_separable(graph: Graph) -> None:
    for node in graph:
        if node.kind != "SeparableConv2D":
            continue
        c = node.config
        depthwise_kernel = node.weights["depthwise_kernel"]           # (kh, kw, C, M)
        depthwise = Node(
            name=f"{node.name}/depthwise", kind="DepthwiseConv2D", inputs=list(node.inputs),
            layer=f"{node.layer}/depthwise",
            config={"name": f"{c.get('name', node.layer)}/depthwise", "kernel_size": c["kernel_size"],
                    "strides": c.get("strides", 1), "padding": c.get("padding", "valid"),
                    "dilation_rate": c.get("dilation_rate", 1),
                    "depth_multiplier": int(c.get("depth_multiplier", 1)), "use_bias": False},
            weights={"depthwise_kernel": depthwise_kernel}, synthetic=True)
        h, w, filters = node.output_shape or (None, None, None)
        depthwise.output_shape = (h, w, depthwise_kernel.shape[2] * depthwise_kernel.shape[3])
        node.origin, node.kind = node.kind, "Conv2D"
        node.config = {"name": c.get("name", node.layer), "filters": c["filters"], "kernel_size": [1, 1],
                       "strides": [1, 1], "padding": "valid", "dilation_rate": [1, 1], "groups": 1,
                       "use_bias": c.get("use_bias", True), "activation": c.get("activation", "linear")}
        node.weights = {"kernel": node.weights["pointwise_kernel"],
                        **({"bias": node.weights["bias"]} if "bias" in node.weights else {})}
        node.inputs = [depthwise.name]
        graph.insert_before(node.name, depthwise)
