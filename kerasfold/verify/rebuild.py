"""Keras models rebuilt from data, for the parity check (imports Keras when called).

- :data:`BUILDERS`: one Keras builder per operation class (``kerasfold.ops``);
  :func:`from_export` builds the BN-free model *as written*: every op decoded from the manifest
  and the ``.bin`` files (layouts undone), every padding from the manifest's explicit ``pad``.
- :func:`from_graph`: the original model, BatchNormalization included, from the layers as read
  (for files the installed Keras cannot load), each built by Keras' own class from its config.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import ops
from ..errors import ExportError, UnsupportedLayer
from ..graph import Graph
from ..kinds import KINDS
from ..kinds.identity import IDENTITY_CLASSES
from ..kinds.lambdas import LAMBDA
from ..kinds.base import Fields
from ..readers.layers import Layer, Model
from ..readers.variables import canonical_name
from ..targets.mps.read import Export
from .keras_env import import_keras


def keras_class(name: str) -> type:
    """A built-in Keras layer class by name: never a custom or Lambda class from a file."""
    keras = import_keras()
    cls = getattr(keras.layers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)) or name == "Lambda":
        raise UnsupportedLayer(f"expected a built-in Keras layer class to rebuild, received {name!r} "
                               "(Lambda and custom layers are never rebuilt: their code is not run)")
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


def _image(build: Callable[..., Any]) -> Callable[..., Any]:
    """Build a windowed op on a rank-2 (W, C) tensor as on the 1 x W image (Conv1D)."""
    def wrapped(op: Any, xs: list[Any]) -> Any:
        if len(xs[0].shape) != 3:
            return build(op, xs)
        layers = import_keras().layers
        y = build(op, [layers.Reshape((1, *xs[0].shape[1:]))(xs[0])] + xs[1:])
        return layers.Reshape(tuple(y.shape[2:]))(y)
    return wrapped


def filled(weight: np.ndarray) -> Callable[..., np.ndarray]:
    """A Keras initialiser that is ``weight`` as read from the files: the layer's variable is
    created holding it, in the variable's dtype (no random draws or fill, then a copy over them).
    A layer built with another shape for it is refused, as ``set_weights`` refuses it."""
    weight = np.asarray(weight, np.float32)

    def initial(shape: Any, dtype: Any = None) -> np.ndarray:
        if tuple(shape) != weight.shape:
            raise ValueError(f"expected a weight of shape {tuple(shape)} for the layer as built, "
                             f"received one of shape {weight.shape}")
        return np.asarray(weight, dtype=dtype or np.float32)
    return initial


def initialisers(**weights: np.ndarray) -> dict[str, Callable[..., np.ndarray]]:
    """``{name}_initializer`` arguments of a Keras layer, each :func:`filled` with its weight."""
    return {f"{name}_initializer": filled(w) for name, w in weights.items()}


def _bias(op: Any, channels: int) -> np.ndarray:
    return np.zeros(channels, np.float32) if op.bias is None else op.bias


@_image
def _conv2d(op: ops.Conv2D, xs: list[Any]) -> Any:
    layers = import_keras().layers
    kh, kw, _, cout = op.kernel.shape
    layer = layers.Conv2D(cout, (kh, kw), strides=op.strides, dilation_rate=op.dilation, groups=op.groups,
                          padding="valid", **initialisers(kernel=op.kernel, bias=_bias(op, cout)))
    return layer(_pad(xs[0], list(op.pad)))


def _depthwise(op: ops.DepthwiseConv2D, xs: list[Any]) -> Any:
    layers = import_keras().layers
    kh, kw, c, m = op.kernel.shape
    layer = layers.DepthwiseConv2D((kh, kw), strides=op.strides, depth_multiplier=m, dilation_rate=op.dilation,
                                   padding="valid", **initialisers(depthwise=op.kernel, bias=_bias(op, c * m)))
    if len(xs[0].shape) == 2:                 # per-channel scale/bias on (N, C): run it on (N, 1, 1, C)
        flat = layers.Reshape((1, 1, xs[0].shape[-1]))(xs[0])
        return layers.Reshape((c * m,))(layer(flat))
    return _image(lambda op, xs: layer(_pad(xs[0], list(op.pad))))(op, xs)


@_image
def _pool(op: ops.Pool2D, xs: list[Any]) -> Any:
    """Max: pad with -inf, then a valid max pool (padded positions take no part). Average: divide
    by the number of real pixels in each window, mean(x padded) / mean(1 padded)."""
    keras = import_keras()
    layers = keras.layers
    if op.mode == "max":
        return layers.MaxPooling2D(op.size, strides=op.strides, padding="valid")(_pad(xs[0], list(op.pad), float("-inf")))

    def pool(t: Any) -> Any:
        return layers.AveragePooling2D(op.size, strides=op.strides, padding="valid")(_pad(t, list(op.pad)))
    ones = layers.Lambda(lambda t: keras.ops.ones_like(t[..., :1]))(xs[0])
    return layers.Lambda(lambda ts: ts[0] / ts[1])([pool(xs[0]), pool(ones)])


def _transpose(op: ops.Conv2DTranspose, xs: list[Any]) -> Any:
    """The full (valid) transposed convolution, then the crop."""
    layers = import_keras().layers
    kh, kw, cout, _ = op.kernel.shape
    layer = layers.Conv2DTranspose(cout, (kh, kw), strides=op.strides, padding="valid",
                                   **initialisers(kernel=op.kernel, bias=_bias(op, cout)))
    return _lambda(_crop)(ops.Crop(crop=op.crop), [layer(xs[0])])


def _dense(op: ops.Dense, xs: list[Any]) -> Any:
    layers = import_keras().layers
    cout = op.kernel.shape[1]
    return layers.Dense(cout, **initialisers(kernel=op.kernel, bias=_bias(op, cout)))(xs[0])


def _batch_norm(op: ops.BatchNorm, xs: list[Any]) -> Any:
    layers = import_keras().layers
    weights = {"gamma": op.gamma, "beta": op.beta, "moving_mean": op.mean, "moving_variance": op.var}
    layer = layers.BatchNormalization(axis=op.axis, epsilon=op.eps, scale=op.gamma is not None,
                                      center=op.beta is not None,
                                      **initialisers(**{k: w for k, w in weights.items() if w is not None}))
    return layer(xs[0])


def _prelu(op: ops.PReLU, xs: list[Any]) -> Any:
    return import_keras().layers.PReLU(shared_axes=op.shared_axes, **initialisers(alpha=op.alpha))(xs[0])


def _opaque(op: ops.Opaque, xs: list[Any]) -> Any:
    layer = keras_class(op.class_name).from_config(op.config)
    return layer(xs[0] if len(xs) == 1 else xs)


def _lambda(fn: Callable[..., Any]) -> Callable[[Any, list[Any]], Any]:
    """A builder applying ``fn(ops, op, *inputs)`` with Keras ops (a Lambda we define, never one from a file)."""
    def build(op: Any, xs: list[Any]) -> Any:
        keras = import_keras()
        return keras.layers.Lambda(lambda ts: fn(keras.ops, op, *ts))(xs)
    return build


def _space_to_depth(kops: Any, op: ops.SpaceToDepth, x: Any) -> Any:
    """TensorFlow's space_to_depth: out[i, j, (bi*b + bj)*C + c] = in[i*b + bi, j*b + bj, c]."""
    b = op.block
    _, h, w, c = x.shape
    x = kops.reshape(x, (-1, h // b, b, w // b, b, c))
    return kops.reshape(kops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, h // b, w // b, b * b * c))


def _resize(op: ops.Resize, xs: list[Any]) -> Any:
    return import_keras().layers.UpSampling2D(op.size, interpolation=op.interpolation)(xs[0])


def _crop(kops: Any, op: ops.Crop, x: Any) -> Any:
    top, bottom, left, right = op.crop
    return x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :]


_ARITHMETIC = {"add": lambda a, b: a + b, "subtract": lambda a, b: a - b,
               "multiply": lambda a, b: a * b, "divide": lambda a, b: a / b}


def _elementwise(kops: Any, op: ops.Elementwise, *tensors: Any) -> Any:
    args = operands(op, list(tensors))
    out = args[0]
    for a in args[1:]:
        out = _ARITHMETIC[op.mode](out, a)
    return out


def _batched(axis: int) -> int:
    return axis if axis < 0 else axis + 1


Builder = Callable[[Any, list[Any]], Any]

BUILDERS: dict[type, Builder] = {
    ops.Conv2D: _conv2d,
    ops.DepthwiseConv2D: _depthwise,
    ops.Dense: _dense,
    ops.Conv2DTranspose: _transpose,
    ops.BatchNorm: _batch_norm,
    ops.PReLU: _prelu,
    ops.Pool2D: _pool,
    ops.Activation: lambda op, xs: xs[0],       # applied by from_graph_of_ops with every op's activation
    ops.Opaque: _opaque,
    ops.Pad: lambda op, xs: _pad(xs[0], list(op.pad)),
    ops.Crop: _lambda(_crop),
    ops.Resize: _resize,
    ops.Elementwise: _lambda(_elementwise),
    ops.Concat: _lambda(lambda kops, op, *ts: kops.concatenate(ts, axis=_batched(op.axis))),
    ops.GlobalPool2D: _lambda(lambda kops, op, x: (kops.max if op.mode == "max" else kops.mean)(
        x, axis=(1, 2), keepdims=op.keepdims)),
    ops.Flatten: _lambda(lambda kops, op, x: kops.reshape(x, (-1, int(np.prod(x.shape[1:]))))),
    ops.Reshape: _lambda(lambda kops, op, x: kops.reshape(x, (-1, *op.target))),
    ops.Softmax: _lambda(lambda kops, op, x: kops.softmax(x, axis=_batched(op.axis))),
    ops.SpaceToDepth: _lambda(_space_to_depth),
    ops.Rescaling: _lambda(lambda kops, op, x: x * np.float32(op.scale) + np.float32(op.offset)),
}


def operands(op: ops.Elementwise, tensors: list[Any]) -> list[Any]:
    """The inputs with the scalar ``constants`` put back at their argument positions."""
    out = list(tensors)
    for position, value in op.constants:
        out.insert(position, value)
    return out


def from_ops(graph: Graph, keep: bool = False) -> Any:
    """The Keras model computing a graph of typed operations (an export read back: the BN-free
    network as written); with ``keep``, its outputs are every node's output, in graph order."""
    keras = import_keras()
    tensors: dict[str, Any] = {}
    inputs = []
    for name, shape in graph.inputs.items():
        tensors[name] = keras.Input(shape=tuple(shape), name=name)
        inputs.append(tensors[name])
    for node in graph:
        build = BUILDERS.get(type(node.op))
        if build is None:
            raise UnsupportedLayer(f"expected an operation the parity check can rebuild "
                                   f"({', '.join(c.__name__ for c in BUILDERS)}), received "
                                   f"{type(node.op).__name__}", layer=node.name)
        y = build(node.op, [tensors[i] for i in node.inputs])
        act = activation_layer(node.op.activation)
        tensors[node.name] = act(y) if act is not None else y
    names = [n.name for n in graph] if keep else graph.outputs
    return keras.Model(_one_or_list(inputs), _one_or_list([tensors[o] for o in names]))


def from_export(export: Export, keep: bool = False, graph: Graph | None = None) -> Any:
    """The BN-free Keras model described by an export's manifest and ``.bin`` files (``graph``:
    the export already decoded by ``export.graph()``, not decoded again)."""
    try:
        return from_ops(export.graph() if graph is None else graph, keep)
    except ExportError as err:
        raise err.at(file=str(export.root))


def _set_weights_by_name(layer: Any, node: Layer) -> None:
    values = []
    for v in layer.weights:
        key = canonical_name(node.kind, v.path if hasattr(v, "path") else v.name)
        if key not in node.weights:
            raise ExportError(f"expected weight '{key}' for a rebuilt {node.kind}, received "
                              f"{sorted(node.weights)}", layer=node.name)
        values.append(node.weights[key])
    layer.set_weights(values)


# Fields a Keras 2 layer config carries (inherited from Conv) that Keras 3's constructor refuses.
KERAS2_ONLY = {"DepthwiseConv2D": ("groups",), "Conv2DTranspose": ("groups",),
               "SeparableConv2D": ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint")}


def keras3_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """A Keras 2 layer config in the form Keras 3's constructors take (dtype left to floatx)."""
    config = {k: v for k, v in config.items() if k not in ("batch_input_shape", "batch_shape", "dtype")}
    if kind == "BatchNormalization" and isinstance(config.get("axis"), list) and len(config["axis"]) == 1:
        config["axis"] = config["axis"][0]
    for key in KERAS2_ONLY.get(kind, ()):              # Keras 2 writes its base class' fields too
        config.pop(key, None)
    if kind == "LeakyReLU" and "alpha" in config:
        config["negative_slope"] = config.pop("alpha")
    return config


def from_graph(graph: Model, input_shapes: dict[str, tuple]) -> Any:
    """The original model, BatchNormalization included, from the graph as read: each layer from
    its config with Keras' own implementation (safe deserialisation; no Lambda is executed)."""
    keras = import_keras()
    tensors: dict[str, Any] = {}
    layers: dict[str, Any] = {}
    for node in graph:
        if node.is_input:
            tensors[node.name] = keras.Input(shape=input_shapes[node.name], name=node.name)
            continue
        if node.kind == "Lambda" and LAMBDA.parse(Fields(node.config, "Lambda", layer=node.layer)).space_to_depth:
            # a recognised Lambda: TensorFlow's own op
            tf_op = _tf_space_to_depth()
            tensors[node.name] = keras.layers.Lambda(tf_op)(tensors[node.inputs[0]])
            continue
        if node.kind in IDENTITY_CLASSES:             # Dropout & co.: the identity at inference
            tensors[node.name] = tensors[node.inputs[0]]
            continue
        if node.constants:                          # Keras 3's ``x + 3.0``: no layer takes a scalar
            tensors[node.name] = _with_constants(node, [tensors[i] for i in node.inputs])
            continue
        if node.layer not in layers:
            config = keras3_config(node.kind, node.config)
            try:
                layers[node.layer] = keras_class(node.kind).from_config(config)
            except (ValueError, TypeError) as err:             # Keras' own config validation
                reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
                raise ExportError(f"expected a layer Keras can rebuild, received {node.kind} ({reason})",
                                  layer=node.name) from err
        layer = layers[node.layer]
        xs = [tensors[i] for i in node.inputs]
        tensors[node.name] = layer(xs[0] if len(xs) == 1 else xs)
        if node.weights and node.name == node.layer:
            _set_weights_by_name(layer, node)
    return keras.Model(_one_or_list([tensors[i] for i in graph.inputs]),
                       _one_or_list([tensors[o] for o in graph.outputs]))


def _with_constants(node: Layer, xs: list[Any]) -> Any:
    """A layer call with scalar operands (Add, Multiply, ...) as the typed operation's builder."""
    kind = KINDS.get(node.kind)
    op = kind.lower(kind.parse(Fields(node.config, node.kind, layer=node.layer, constants=tuple(node.constants))),
                    {}, []) if kind else None
    if not isinstance(op, ops.Elementwise):
        raise UnsupportedLayer(f"expected scalar operands only on Add, Subtract, Multiply or Divide, "
                               f"received them on {node.kind}", layer=node.name)
    return BUILDERS[ops.Elementwise](op, xs)


def _tf_space_to_depth() -> Callable[[Any], Any]:
    import tensorflow as tf
    return lambda t: tf.nn.space_to_depth(t, 2)


def _one_or_list(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else items
