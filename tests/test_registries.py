"""The registries agree, checked through the registries themselves: every kind has a shape rule
that matches what its operation computes, every operation has a rule in every target, and every
entry the MPS target writes decodes back into the same operation."""
import numpy as np
import pytest

from kerasfold import ops
from kerasfold.graph import Graph, Node, SourceInfo
from kerasfold.kinds import KINDS, lower_layer
from kerasfold.readers.layers import Layer
from kerasfold.targets.mps.entries import EMITTERS, emit
from kerasfold.targets.mps.read import load_export
from kerasfold.targets.mps.writer import write_export
from kerasfold.verify import rebuild, reference

RNG = np.random.default_rng(0)


def w(*shape):
    return RNG.normal(0, 0.5, shape).astype(np.float32)


def positive(*shape):
    return RNG.uniform(0.5, 2.0, shape).astype(np.float32)


# class name -> (config, weights, input shapes); one sample per class the registry knows.
SAMPLES = {
    "Conv2D": ({"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
               {"kernel": w(3, 3, 3, 4), "bias": w(4)}, [(7, 6, 3)]),
    "Conv1D": ({"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
               {"kernel": w(3, 3, 4), "bias": w(4)}, [(9, 3)]),
    "DepthwiseConv2D": ({"kernel_size": 3, "depth_multiplier": 2, "padding": "same"},
                        {"depthwise_kernel": w(3, 3, 3, 2), "bias": w(6)}, [(5, 5, 3)]),
    "SeparableConv2D": ({"filters": 4, "kernel_size": 3, "padding": "valid"},
                        {"depthwise_kernel": w(3, 3, 3, 1), "pointwise_kernel": w(1, 1, 3, 4), "bias": w(4)},
                        [(5, 5, 3)]),
    "Conv2DTranspose": ({"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
                        {"kernel": w(3, 3, 4, 3), "bias": w(4)}, [(4, 5, 3)]),
    "Dense": ({"units": 5}, {"kernel": w(3, 5), "bias": w(5)}, [(4, 3)]),
    "BatchNormalization": ({"epsilon": 1e-3}, {"gamma": positive(3), "beta": w(3), "moving_mean": w(3),
                                               "moving_variance": positive(3)}, [(4, 4, 3)]),
    "Normalization": ({"mean": [0.5, 0.2, 0.1], "variance": [2.0, 1.0, 0.5]}, {}, [(4, 4, 3)]),
    "Rescaling": ({"scale": 0.5, "offset": 0.1}, {}, [(4, 4, 3)]),
    "MaxPooling2D": ({"pool_size": 3, "strides": 2, "padding": "same"}, {}, [(7, 8, 3)]),
    "AveragePooling2D": ({"pool_size": 2, "strides": 1, "padding": "same"}, {}, [(5, 5, 3)]),
    "GlobalAveragePooling2D": ({"keepdims": True}, {}, [(4, 5, 3)]),
    "GlobalMaxPooling2D": ({}, {}, [(4, 5, 3)]),
    "Add": ({}, {}, [(4, 4, 3), (1, 1, 3)]),
    "Subtract": ({}, {}, [(4, 4, 3), (4, 4, 3)]),
    "Multiply": ({}, {}, [(4, 4, 3), (1, 1, 3)]),
    "Divide": ({}, {}, [(4, 4, 3), (4, 4, 3)]),
    "Concatenate": ({"axis": -1}, {}, [(4, 4, 3), (4, 4, 2)]),
    "ZeroPadding2D": ({"padding": [[1, 2], [0, 3]]}, {}, [(4, 4, 3)]),
    "Cropping2D": ({"cropping": [[1, 0], [1, 2]]}, {}, [(5, 6, 3)]),
    "UpSampling2D": ({"size": [2, 3], "interpolation": "bilinear"}, {}, [(3, 4, 3)]),
    "Reshape": ({"target_shape": [-1, 6]}, {}, [(4, 3, 2)]),
    "Flatten": ({}, {}, [(4, 3, 2)]),
    "SpaceToDepth": ({"block_size": 2}, {}, [(4, 6, 3)]),
    "LeakyReLU": ({"alpha": 0.1}, {}, [(4, 4, 3)]),
    "ReLU": ({"max_value": 6.0}, {}, [(4, 4, 3)]),
    "ELU": ({"alpha": 0.7}, {}, [(4, 4, 3)]),
    "Activation": ({"activation": "swish"}, {}, [(4, 4, 3)]),
    "Softmax": ({"axis": -1}, {}, [(4, 4, 3)]),
    "PReLU": ({"shared_axes": [1, 2]}, {"alpha": w(1, 1, 3)}, [(4, 4, 3)]),
    "Dropout": ({"rate": 0.5}, {}, [(4, 4, 3)]),
    "Lambda": ({"name": "space_to_depth_x2", "function": "space_to_depth_x2"}, {}, [(4, 6, 3)]),
}
ALIASES = {"Convolution2D": "Conv2D", "Convolution1D": "Conv1D", "SeparableConvolution2D": "SeparableConv2D",
           "Deconvolution2D": "Conv2DTranspose", "MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D",
           "GlobalAvgPool2D": "GlobalAveragePooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D",
           "TrueDivide": "Divide", **{k: "Dropout" for k in ("SpatialDropout1D", "SpatialDropout2D",
                                                            "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
                                                            "AlphaDropout", "ActivityRegularization", "Identity")}}


def _lowered(class_name):
    config, weights, shapes = SAMPLES[ALIASES.get(class_name, class_name)]
    layer = Layer(name="n", kind=class_name, config={**config, "name": config.get("name", "n")},
                  inputs=[f"x{i}" for i in range(len(shapes))], weights=weights)
    return lower_layer(layer, shapes), shapes


def test_every_class_has_a_sample():
    assert set(KINDS) == set(SAMPLES) | set(ALIASES)


@pytest.mark.parametrize("class_name", sorted(KINDS))
def test_shape_rule_is_what_the_operation_computes(class_name):
    """Lower a sample, run its operation (passes applied) in the reference: the output shape is the
    shape the kind declared. A kind whose shape rule drifted from its lowering fails here."""
    from kerasfold.passes import run_passes
    (op, shape), shapes = _lowered(class_name)
    assert shape is not None and all(d is not None for d in shape)
    graph = Graph(inputs={f"x{i}": s for i, s in enumerate(shapes)}, nodes={}, outputs=["n"],
                  source=SourceInfo("m", "0" * 64, "3", "keras"))
    graph.nodes["n"] = Node(name="n", op=op, inputs=list(graph.inputs), shape=shape)
    run_passes(graph)
    xs = [RNG.uniform(0.1, 1, (2, *s)).astype(np.float32) for s in shapes]
    out = reference.run(graph, xs)
    (y,) = out.values()
    assert y.shape[1:] == tuple(shape)


def test_every_operation_has_a_rule_in_every_target():
    reaching = set(ops.all_ops()) - set(ops.REWRITTEN)
    assert ops.Conv2D in reaching and ops.Identity not in reaching
    assert reaching <= set(EMITTERS), reaching - set(EMITTERS)
    assert reaching <= set(rebuild.BUILDERS), reaching - set(rebuild.BUILDERS)
    assert reaching - {ops.Opaque} <= set(reference.OPS), reaching - set(reference.OPS)   # opaque: never run


@pytest.mark.parametrize("class_name", ["Conv2D", "Conv1D", "DepthwiseConv2D", "Conv2DTranspose", "Dense",
                                        "PReLU", "MaxPooling2D", "UpSampling2D", "Concatenate", "Reshape"])
def test_written_entries_decode_into_the_same_operation(class_name, tmp_path):
    """emit -> write -> read -> decode gives back the op class and its arrays bit for bit: each
    op class owns its layout and its inverse."""
    (op, shape), shapes = _lowered(class_name)
    graph = Graph(inputs={f"x{i}": s for i, s in enumerate(shapes)}, nodes={}, outputs=["n"],
                  source=SourceInfo("m", "0" * 64, "3", "keras"))
    graph.nodes["n"] = Node(name="n", op=op, inputs=list(graph.inputs), shape=shape)
    write_export(tmp_path / "out", graph, emit(graph))
    back = load_export(tmp_path / "out").graph().nodes["n"].op
    assert type(back) is type(op)
    for field in ("kernel", "alpha"):
        if hasattr(op, field):
            np.testing.assert_array_equal(getattr(back, field), getattr(op, field))
    if getattr(op, "bias", None) is not None:
        np.testing.assert_array_equal(back.bias, op.bias)
    for field in ("strides", "dilation", "pad", "size", "axis", "target", "interpolation", "crop"):
        if hasattr(op, field):
            assert tuple(np.atleast_1d(getattr(back, field))) == tuple(np.atleast_1d(getattr(op, field))), field


@pytest.mark.parametrize("axis, ok", [(-1, True), ([3], True), (3, True), (1, False), ([2], False)])
def test_normalization_axis_is_checked_against_the_rank(axis, ok):
    """keras.applications' EfficientNet writes axis [3] (the channels of a 4-D tensor): accepted;
    a spatial axis is refused with a one-line error naming the axis."""
    from kerasfold.errors import ExportError
    layer = Layer(name="n", kind="Normalization", config={"axis": axis, "mean": [0.1, 0.2, 0.3],
                                                          "variance": [1.0, 2.0, 3.0]}, inputs=["x"])
    if ok:
        op, shape = lower_layer(layer, [(4, 4, 3)])
        assert isinstance(op, ops.Normalization) and shape == (4, 4, 3)
    else:
        with pytest.raises(ExportError, match="expected Normalization over the last"):
            lower_layer(layer, [(4, 4, 3)])
