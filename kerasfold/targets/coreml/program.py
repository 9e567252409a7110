"""Graph -> MIL program: one placeholder per model input, one builder call per node, the model's
outputs named after their Keras layers.

By default an input is a MultiArray shaped like the Keras input, (1, H, W, C), transposed to NCHW
inside; an image input (``image=True``) is NCHW as Core ML hands it over, after its scale and bias.
4-D outputs are transposed back, so an app indexes them as the Keras model's (1, H, W, C).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ... import ops
from ...errors import ExportError, UnsupportedLayer
from ...graph import Graph
from .activations import activate
from .emit import EMITTERS, Emitter, supported
from .values import TO_NCHW, TO_NHWC, Value


@dataclass
class Names:
    """MIL names: ``[A-Za-z0-9_]``, not starting with a digit, unique."""
    taken: set[str] = field(default_factory=set)

    def __call__(self, name: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_]", "_", name) or "v"
        if safe[0].isdigit():
            safe = "_" + safe
        base, i = safe, 1
        while safe in self.taken:
            i += 1
            safe = f"{base}_{i}"
        self.taken.add(safe)
        return safe


@dataclass
class Built:
    program: Any
    inputs: dict[str, str]           # Keras input name -> program input name
    outputs: dict[str, str]          # Keras output name -> program output name
    input_shapes: dict[str, tuple]   # program input name -> its shape


def io_names(graph: Graph) -> tuple[Names, dict[str, str], dict[str, str]]:
    """The program's input and output names for the Keras ones (taken first, so they stay as close
    to Keras' as MIL allows), and the name registry the nodes' names then come from."""
    names = Names()
    inputs = {k: names(k) for k in graph.inputs}
    outputs = {k: names(k) for k in graph.outputs}
    return names, inputs, outputs


def _input_shape(name: str, shape: tuple | None) -> tuple[int, ...]:
    if shape is None or any(d is None for d in shape):
        raise ExportError(f"expected input '{name}' with a fixed size (use --input-size), received "
                          f"shape {shape}")
    return tuple(int(d) for d in shape)


def build(graph: Graph, weights: Callable[[str, np.ndarray], np.ndarray], *, target: Any,
          image: bool = False) -> Built:
    """The MIL program of ``graph``; ``weights(layer, array)`` turns each weight into the constant
    the program holds (float32, or float16-representable values)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program

    names, in_names, out_names = io_names(graph)
    shapes = {}
    for keras_name, shape in graph.inputs.items():
        s = _input_shape(keras_name, shape)
        if image and (len(s) != 3 or s[-1] not in (1, 3)):
            raise ExportError(f"expected an image input (H, W, 1 or 3 channels) for --image-input, received "
                              f"input '{keras_name}' shaped {s}")
        shapes[in_names[keras_name]] = (1, s[2], s[0], s[1]) if image else (1, *s)
    placeholders = {n: mb.placeholder(shape=shape) for n, shape in shapes.items()}
    with Function(placeholders, opset_version=target) as function:
        values: dict[str, Value] = {}
        for keras_name, program_name in in_names.items():
            var = function.inputs[program_name]
            rank = len(shapes[program_name])
            if rank == 4 and not image:
                var = mb.transpose(x=var, perm=TO_NCHW)
            values[keras_name] = Value(var, rank)
        layer = [""]
        emitter = Emitter(mb, lambda a: weights(layer[0], a))
        for node in graph:
            fn = EMITTERS.get(type(node.op))
            if fn is None:
                what = type(node.op).__name__ + (f" '{node.op.class_name}'" if isinstance(node.op, ops.Opaque) else "")
                raise UnsupportedLayer(f"expected an operation Core ML can express ({supported()}), received "
                                       f"{what}", layer=node.name)
            layer[0] = node.name
            name = names(node.name)
            linear = node.op.activation.get("type", "linear") == "linear"
            try:
                v = fn(emitter, node.op, [values[i] for i in node.inputs], node.shape,
                       name if linear else names(node.name + "_pre"))
                if not linear:
                    v = activate(mb, v, node.op.activation, name, node.name)
            except ExportError as err:
                raise err.at(layer=node.name)
            values[node.name] = v
        results = []
        for keras_name, program_name in out_names.items():
            v = values[keras_name]
            var = mb.transpose(x=v.var, perm=TO_NHWC, name=program_name) if v.nchw else \
                mb.identity(x=v.var, name=program_name)
            results.append(var)
        function.set_outputs(results)
    program = Program()
    program.add_function("main", function)
    return Built(program=program, inputs=in_names, outputs=out_names, input_shapes=shapes)
