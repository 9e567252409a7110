"""Keras models rebuilt from data, for the parity check (imports Keras when called).

- :func:`from_export`: the BN-free model *as written*: every layer from the manifest and the
  ``.bin`` files (layouts undone), every padding from the manifest's explicit ``pad``.
- :func:`from_graph`: the original model, BatchNormalization included, from the graph as read
  (for files the installed Keras cannot load).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import ExportError
from .exported import Export
from .graph import Graph, Node
from .keras_env import import_keras
from .layout import to_keras
from .readers.variables import canonical_name


def keras_class(name: str) -> type:
    """A built-in Keras layer class by name: never a custom or Lambda class from a file."""
    keras = import_keras()
    cls = getattr(keras.layers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)) or name == "Lambda":
        raise AttributeError(f"no built-in Keras layer named {name!r}")
    return cls


def activation_layer(spec: dict[str, Any]) -> Any | None:
    """The Keras layer computing a manifest ``activation``; None for linear."""
    layers = import_keras().layers
    kind = spec["type"]
    if kind == "linear":
        return None
    if kind == "relu":
        return layers.ReLU(max_value=spec.get("max_value"), negative_slope=spec.get("alpha", 0.0),
                           threshold=spec.get("threshold", 0.0))
    if kind == "leaky_relu":
        return layers.LeakyReLU(negative_slope=spec["alpha"])
    if kind == "elu":
        return layers.ELU(alpha=spec.get("alpha", 1.0))
    return layers.Activation(kind)


def _pad(x: Any, pad: list[int], value: float = 0.0) -> Any:
    keras = import_keras()
    top, bottom, left, right = pad
    if not any(pad):
        return x
    widths = [[0, 0], [top, bottom], [left, right], [0, 0]]
    return keras.layers.Lambda(lambda t: keras.ops.pad(t, widths, constant_values=value))(x)


def _conv2d(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
    keras = import_keras()
    weights = to_keras("OHWI", export.tensor(entry, "weights").astype(np.float32))
    layer = keras.layers.Conv2D(weights.shape[-1], entry["kernel"], strides=entry["strides"],
                                dilation_rate=entry["dilation"], groups=entry["groups"], padding="valid")
    y = layer(_pad(xs[0], entry["pad"]))
    layer.set_weights([weights, export.tensor(entry, "bias")])
    return y


def _depthwise(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
    keras = import_keras()
    m = entry["depth_multiplier"]
    weights = to_keras("OHW", export.tensor(entry, "weights").astype(np.float32), depth_multiplier=m)
    layer = keras.layers.DepthwiseConv2D(entry["kernel"], strides=entry["strides"], depth_multiplier=m,
                                         dilation_rate=entry["dilation"], padding="valid")
    if len(xs[0].shape) == 2:                 # per-channel scale/bias on (N, C): run it on (N, 1, 1, C)
        flat = keras.layers.Reshape((1, 1, xs[0].shape[-1]))(xs[0])
        y = keras.layers.Reshape((weights.shape[2] * m,))(layer(flat))
        layer.set_weights([weights, export.tensor(entry, "bias")])
        return y
    y = layer(_pad(xs[0], entry["pad"]))
    layer.set_weights([weights, export.tensor(entry, "bias")])
    return y


def _max_pool(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
    """Padded positions take no part: pad with -inf, then a valid max pool."""
    keras = import_keras()
    pool = keras.layers.MaxPooling2D(entry["pool_size"], strides=entry["strides"], padding="valid")
    return pool(_pad(xs[0], entry["pad"], float("-inf")))


def _avg_pool(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
    """Divide by the number of real pixels in each window: mean(x padded) / mean(1 padded)."""
    keras = import_keras()
    ops = keras.ops

    def pool(t: Any) -> Any:
        return keras.layers.AveragePooling2D(entry["pool_size"], strides=entry["strides"],
                                             padding="valid")(_pad(t, entry["pad"]))
    ones = keras.layers.Lambda(lambda t: ops.ones_like(t[..., :1]))(xs[0])
    return keras.layers.Lambda(lambda ts: ts[0] / ts[1])([pool(xs[0]), pool(ones)])


def _activation(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
    return xs[0]                # applied by from_export with every entry's activation


def _keras_layer(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
    keras = import_keras()
    layer = keras_class(entry["class_name"]).from_config(entry["config"])
    return layer(xs[0] if len(xs) == 1 else xs)


def _transpose(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
    """The full (valid) transposed convolution, then the manifest's crop."""
    keras = import_keras()
    from .layout import transpose_hwoi
    weights = transpose_hwoi(export.tensor(entry, "weights").astype(np.float32))
    layer = keras.layers.Conv2DTranspose(weights.shape[2], entry["kernel"], strides=entry["strides"],
                                         padding="valid")
    y = layer(xs[0])
    layer.set_weights([weights, export.tensor(entry, "bias")])
    return _lambda(_crop)(entry, [y], export)


def _dense(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
    keras = import_keras()
    weights = to_keras("OI", export.tensor(entry, "weights").astype(np.float32))
    layer = keras.layers.Dense(entry["units"])
    y = layer(xs[0])
    layer.set_weights([weights, export.tensor(entry, "bias")])
    return y


def _prelu(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
    keras = import_keras()
    layer = keras.layers.PReLU(shared_axes=entry.get("shared_axes"))
    y = layer(xs[0])
    layer.set_weights([export.tensor(entry, "weights").astype(np.float32)])
    return y


def _lambda(fn: Callable[..., Any]) -> Callable[[dict[str, Any], list[Any], Export], Any]:
    """A builder applying ``fn(entry, *inputs)`` with Keras ops (a Lambda we define, not one from a file)."""
    def build(entry: dict[str, Any], xs: list[Any], export: Export) -> Any:
        keras = import_keras()
        return keras.layers.Lambda(lambda ts: fn(keras.ops, entry, *ts))(xs)
    return build


def _space_to_depth(ops: Any, entry: dict[str, Any], x: Any) -> Any:
    """TensorFlow's space_to_depth: out[i, j, (bi·b + bj)·C + c] = in[i·b + bi, j·b + bj, c]."""
    b = entry["block_size"]
    _, h, w, c = x.shape
    x = ops.reshape(x, (-1, h // b, b, w // b, b, c))
    return ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, h // b, w // b, b * b * c))


def _upsampling(ops: Any, entry: dict[str, Any], x: Any) -> Any:
    if entry["interpolation"] != "nearest":
        raise ExportError(f"expected nearest upsampling, received {entry['interpolation']}", layer=entry["name"])
    sh, sw = entry["size"]
    return ops.repeat(ops.repeat(x, sh, axis=1), sw, axis=2)


def _crop(ops: Any, entry: dict[str, Any], x: Any) -> Any:
    top, bottom, left, right = entry["crop"]
    return x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :]


BUILDERS: dict[str, Callable[[dict[str, Any], list[Any], Export], Any]] = {
    "conv2d": _conv2d,
    "depthwise_conv2d": _depthwise,
    "dense": _dense,
    "conv2d_transpose": _transpose,
    "prelu": _prelu,
    "max_pool2d": _max_pool,
    "avg_pool2d": _avg_pool,
    "activation": _activation,
    "keras_layer": _keras_layer,
    "zero_padding2d": lambda e, xs, ex: _pad(xs[0], e["pad"]),
    "cropping2d": _lambda(_crop),
    "upsampling2d": _lambda(_upsampling),
    "add": _lambda(lambda ops, e, *ts: _reduce(e, ts, lambda a, b: a + b)),
    "subtract": _lambda(lambda ops, e, *ts: _reduce(e, ts, lambda a, b: a - b)),
    "multiply": _lambda(lambda ops, e, *ts: _reduce(e, ts, lambda a, b: a * b)),
    "divide": _lambda(lambda ops, e, *ts: _reduce(e, ts, lambda a, b: a / b)),
    "concatenate": _lambda(lambda ops, e, *ts: ops.concatenate(ts, axis=e["axis"] + 1)),
    "global_avg_pool2d": _lambda(lambda ops, e, x: ops.mean(x, axis=(1, 2), keepdims=e["keepdims"])),
    "global_max_pool2d": _lambda(lambda ops, e, x: ops.max(x, axis=(1, 2), keepdims=e["keepdims"])),
    "flatten": _lambda(lambda ops, e, x: ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))),
    "reshape": _lambda(lambda ops, e, x: ops.reshape(x, (-1, *e["target_shape"]))),
    "softmax": _lambda(lambda ops, e, x: ops.softmax(x, axis=e["axis"] + 1)),
    "space_to_depth": _lambda(_space_to_depth),
    "rescaling": _lambda(lambda ops, e, x: x * np.float32(e["scale"]) + np.float32(e["offset"])),
}


def operands(entry: dict[str, Any], tensors: list[Any]) -> list[Any]:
    """The entry's inputs with its scalar ``constants`` put back at their argument positions."""
    out = list(tensors)
    for c in entry.get("constants", []):
        out.insert(c["position"], c["value"])
    return out


def _reduce(entry: dict[str, Any], tensors: Any, op: Callable[[Any, Any], Any]) -> Any:
    args = operands(entry, list(tensors))
    out = args[0]
    for a in args[1:]:
        out = op(out, a)
    return out


def from_export(export: Export, keep: bool = False) -> Any:
    """The BN-free Keras model described by an export's manifest and ``.bin`` files; with
    ``keep``, its outputs are every entry's output, in manifest order (layer-by-layer checks)."""
    keras = import_keras()
    tensors: dict[str, Any] = {}
    inputs = []
    for spec in export.manifest["inputs"]:
        tensors[spec["name"]] = keras.Input(shape=tuple(spec["shape"]), name=spec["name"])
        inputs.append(tensors[spec["name"]])
    for entry in export.layers:
        build = BUILDERS.get(entry["type"])
        if build is None:
            raise ExportError(f"expected a layer type the parity check can rebuild ({', '.join(BUILDERS)}), "
                              f"received {entry['type']}", file=str(export.root), layer=entry["name"])
        y = build(entry, [tensors[i] for i in entry["inputs"]], export)
        act = activation_layer(entry["activation"])
        tensors[entry["name"]] = act(y) if act is not None else y
    names = [e["name"] for e in export.layers] if keep else export.manifest["outputs"]
    return keras.Model(_one_or_list(inputs), _one_or_list([tensors[o] for o in names]))


def _set_weights_by_name(layer: Any, node: Node) -> None:
    values = []
    for v in layer.weights:
        key = canonical_name(node.kind, v.path if hasattr(v, "path") else v.name)
        if key not in node.weights:
            raise ExportError(f"expected weight '{key}' for a rebuilt {node.kind}, received "
                              f"{sorted(node.weights)}", layer=node.name)
        values.append(node.weights[key])
    layer.set_weights(values)


def keras3_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """A Keras 2 layer config in the form Keras 3's constructors take (dtype left to floatx)."""
    config = {k: v for k, v in config.items() if k not in ("batch_input_shape", "batch_shape", "dtype")}
    if kind == "BatchNormalization" and isinstance(config.get("axis"), list) and len(config["axis"]) == 1:
        config["axis"] = config["axis"][0]
    if kind == "LeakyReLU" and "alpha" in config:
        config["negative_slope"] = config.pop("alpha")
    return config


def from_graph(graph: Graph, input_shapes: dict[str, tuple]) -> Any:
    """The original model, BatchNormalization included, from the graph as read: each layer from
    its config with Keras' own implementation (safe deserialisation; no Lambda is executed)."""
    keras = import_keras()
    tensors: dict[str, Any] = {}
    layers: dict[str, Any] = {}
    for node in graph:
        if node.is_input:
            tensors[node.name] = keras.Input(shape=input_shapes[node.name], name=node.name)
            continue
        if node.kind == "SpaceToDepth":                 # a recognised Lambda: TensorFlow's own op
            tf_op = _tf_space_to_depth()
            tensors[node.name] = keras.layers.Lambda(tf_op)(tensors[node.inputs[0]])
            continue
        if node.layer not in layers:
            config = keras3_config(node.kind, node.config)
            try:
                layers[node.layer] = keras_class(node.kind).from_config(config)
            except (ValueError, TypeError, AttributeError) as err:
                raise ExportError(f"expected a layer Keras can rebuild, received {node.kind} ({err})",
                                  layer=node.name) from err
        layer = layers[node.layer]
        xs = [tensors[i] for i in node.inputs]
        tensors[node.name] = layer(xs[0] if len(xs) == 1 else xs)
        if node.weights and node.name == node.layer:
            _set_weights_by_name(layer, node)
    return keras.Model(_one_or_list([tensors[i] for i in graph.inputs]),
                       _one_or_list([tensors[o] for o in graph.outputs]))


def _tf_space_to_depth() -> Callable[[Any], Any]:
    import tensorflow as tf
    return lambda t: tf.nn.space_to_depth(t, 2)


def _one_or_list(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else items
