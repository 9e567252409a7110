"""Checks on the weights as read, before any pass: known layer, shapes agree with the config,
every value finite, BatchNormalization variance not negative."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ExportError
from .graph import Graph, Node, Shape
from .shapes import pair

ExpectedShapes = Callable[[Node, int | None], dict[str, tuple]]


def _conv2d(node: Node, cin: int | None) -> dict[str, tuple]:
    c = node.config
    kh, kw = pair(c["kernel_size"])
    groups = int(c.get("groups", 1) or 1)
    shapes = {"kernel": (kh, kw, None if cin is None else cin // groups, int(c["filters"]))}
    if c.get("use_bias", True):
        shapes["bias"] = (int(c["filters"]),)
    return shapes


def _batch_norm(node: Node, cin: int | None) -> dict[str, tuple]:
    names = (["gamma"] if node.config.get("scale", True) else []) \
        + (["beta"] if node.config.get("center", True) else []) + ["moving_mean", "moving_variance"]
    return {n: (cin,) for n in names}


def _depthwise(node: Node, cin: int | None) -> dict[str, tuple]:
    c = node.config
    kh, kw = pair(c["kernel_size"])
    m = int(c.get("depth_multiplier", 1))
    shapes = {"depthwise_kernel": (kh, kw, cin, m)}
    if c.get("use_bias", True):
        shapes["bias"] = (None if cin is None else cin * m,)
    return shapes


def _dense(node: Node, cin: int | None) -> dict[str, tuple]:
    units = int(node.config["units"])
    return {"kernel": (cin, units), **({"bias": (units,)} if node.config.get("use_bias", True) else {})}


def _prelu(node: Node, cin: int | None) -> dict[str, tuple]:
    return {"alpha": (None, None, None)}      # (H, W, C) with shared axes of size 1


def _separable(node: Node, cin: int | None) -> dict[str, tuple]:
    c = node.config
    kh, kw = pair(c["kernel_size"])
    m = int(c.get("depth_multiplier", 1))
    filters = int(c["filters"])
    shapes = {"depthwise_kernel": (kh, kw, cin, m),
              "pointwise_kernel": (1, 1, None if cin is None else cin * m, filters)}
    return {**shapes, **({"bias": (filters,)} if c.get("use_bias", True) else {})}


def _transpose(node: Node, cin: int | None) -> dict[str, tuple]:
    c = node.config
    kh, kw = pair(c["kernel_size"])
    filters = int(c["filters"])
    return {"kernel": (kh, kw, filters, cin), **({"bias": (filters,)} if c.get("use_bias", True) else {})}


def _normalization(node: Node, cin: int | None) -> dict[str, tuple]:
    """Keras 3 keeps mean/variance broadcastable, (1, 1, 1, C); tf.keras as (C,). Given in the
    config (``Normalization(mean=..., variance=...)``), they are no weights at all."""
    if node.config.get("mean") is not None:
        return {}
    rank = node.weights["mean"].ndim if "mean" in node.weights else 1
    per_channel = (1,) * (rank - 1) + (cin,)
    return {"mean": per_channel, "variance": per_channel, "count": ()}


# Layers with weights the exporter knows, with the shapes their config implies.
WEIGHTED: dict[str, ExpectedShapes] = {
    "Conv2D": _conv2d,
    "BatchNormalization": _batch_norm,
    "DepthwiseConv2D": _depthwise,
    "Dense": _dense,
    "PReLU": _prelu,
    "SeparableConv2D": _separable,
    "Conv2DTranspose": _transpose,
    "Normalization": _normalization,
}


def _matches(expected: tuple, actual: tuple) -> bool:
    return len(expected) == len(actual) and all(e is None or e == a for e, a in zip(expected, actual))


def check_node(node: Node, in_shape: Shape | None) -> None:
    if not node.weights and node.kind not in WEIGHTED:
        return
    rule = WEIGHTED.get(node.kind)
    if rule is None:
        raise ExportError(f"expected a layer the exporter supports ({', '.join(sorted(WEIGHTED))}), "
                          f"received {node.kind} with weights {sorted(node.weights)}", layer=node.name)
    cin = in_shape[-1] if in_shape else None
    expected = rule(node, cin)
    if set(expected) != set(node.weights):
        raise ExportError(f"expected weights {sorted(expected)} from the config, received "
                          f"{sorted(node.weights)}", layer=node.name)
    for key, shape in expected.items():
        actual = node.weights[key].shape
        if not _matches(shape, actual):
            want = tuple("?" if s is None else s for s in shape)
            raise ExportError(f"expected {key} of shape {want} from the config, received "
                              f"{actual}", layer=node.name)
    for key, arr in node.weights.items():
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise ExportError(f"expected finite {key}, received {bad} NaN/Inf values", layer=node.name)
    variance = {"BatchNormalization": "moving_variance", "Normalization": "variance"}.get(node.kind)
    values = node.weights.get(variance, node.config.get(variance)) if variance else None
    if values is not None and np.any(np.asarray(values, np.float64) < 0):
        worst = float(np.min(values))
        raise ExportError(f"expected {variance} >= 0, received {worst:g}", layer=node.name)
    if node.kind == "Normalization" and node.config.get("invert"):
        raise ExportError("expected Normalization with invert=False, received invert=True", layer=node.name)


def check_graph(graph: Graph) -> None:
    """Raise :class:`ExportError` naming the first layer whose weights cannot be exported."""
    for node in graph:
        if node.name != node.layer:         # later calls of a shared layer: checked at the first
            continue
        in_shape = graph[node.inputs[0]].output_shape if node.inputs else None
        check_node(node, in_shape)
