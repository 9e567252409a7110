"""Every operation and activation the Core ML target writes, proven one at a time: a one-layer graph
(the registry's sample of every Keras class, passes applied) is built into an ``.mlpackage``, saved,
read back through coremltools' loader, run by the numpy evaluator, and compared with the
reference executor on the same graph. No Keras, no TensorFlow."""
import numpy as np
import pytest

from test_registries import SAMPLES, _lowered

pytest.importorskip("coremltools")

from kerasfold import ops                                            # noqa: E402
from kerasfold.graph import Graph, Node, SourceInfo                 # noqa: E402
from kerasfold.passes import run_passes                             # noqa: E402
from kerasfold.verify import reference                              # noqa: E402

RNG = np.random.default_rng(1)
ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "elu", "selu", "swish", "hard_sigmoid",
               "hard_swish", "softplus", "softsign", "softmax", "log_softmax", "gelu", "exponential", "mish"]


def one_layer(op, shape, shapes, name="n"):
    graph = Graph(inputs={f"x{i}": s for i, s in enumerate(shapes)}, nodes={}, outputs=[name],
                  source=SourceInfo("m.h5", "0" * 64, "3", "keras"))
    graph.nodes[name] = Node(name=name, op=op, inputs=list(graph.inputs), shape=shape)
    return run_passes(graph)


def packaged(graph, tmp_path, **options):
    from kerasfold.targets.coreml.package import CoreMLOptions, convert, save
    from kerasfold.verify.mlprogram import load_program
    out = tmp_path / "m.mlpackage"
    save(convert(graph, CoreMLOptions(**options)).model, out)
    return load_program(out)


def compare(graph, program, xs, tolerance=1e-6):
    from kerasfold.targets.coreml.program import io_names
    from kerasfold.verify.mlprogram import run
    _, inputs, outputs = io_names(graph)
    want = reference.run(graph, xs, dtype="float64")
    got = run(program, {name: x for name, x in zip(inputs.values(), xs)}, dtype="float64")
    for keras_name, name in outputs.items():
        assert got[name].shape == want[keras_name].shape, (got[name].shape, want[keras_name].shape)
        scale = max(float(np.max(np.abs(want[keras_name]))), 1e-12)
        error = float(np.max(np.abs(got[name] - want[keras_name]))) / scale
        assert error <= tolerance, (keras_name, error)


@pytest.mark.parametrize("class_name", sorted(set(SAMPLES) - {"Dropout"}))
def test_every_keras_class_through_core_ml(class_name, tmp_path):
    (op, shape), shapes = _lowered(class_name)
    graph = one_layer(op, shape, shapes)
    xs = [RNG.uniform(-1, 1, (1, *s)).astype(np.float32) for s in shapes]
    compare(graph, packaged(graph, tmp_path), xs)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_fused_into_a_convolution(activation, tmp_path):
    (op, shape), shapes = _lowered("Conv2D")
    op.activation = {"type": activation, **({"alpha": 0.3} if activation in ("leaky_relu", "elu") else {})}
    graph = one_layer(op, shape, shapes)
    xs = [RNG.uniform(-2, 2, (1, *s)).astype(np.float32) for s in shapes]
    compare(graph, packaged(graph, tmp_path), xs)


@pytest.mark.parametrize("spec", [
    {"max_value": 6.0}, {"max_value": 4.5}, {"negative_slope": 0.2},
    {"threshold": 0.3}, {"negative_slope": 0.1, "max_value": 2.0, "threshold": -0.5},
])
def test_relu_in_every_keras_form(spec, tmp_path):
    (op, shape), shapes = _lowered("Conv2D")
    op.activation = {"type": "relu", **spec}
    graph = one_layer(op, shape, shapes)
    xs = [RNG.uniform(-2, 2, (1, *s)).astype(np.float32) for s in shapes]
    compare(graph, packaged(graph, tmp_path), xs)


def _conv(kernel, **fields):
    cin, cout = kernel[2], kernel[3]
    return ops.Conv2D(kernel=RNG.normal(0, 0.5, kernel).astype(np.float32), bias=RNG.normal(0, 0.5, cout).astype(np.float32),
                      **{"strides": (1, 1), "dilation": (1, 1), "groups": 1, "padding": "valid", "pad": (0, 0, 0, 0), **fields})


@pytest.mark.parametrize("op, shape, input_shape", [
    (_conv((3, 3, 2, 6), groups=3, dilation=(2, 1), strides=(1, 2), pad=(2, 1, 0, 3)), (7, 5, 6), (8, 9, 6)),
    (ops.DepthwiseConv2D(kernel=RNG.normal(0, 0.5, (3, 2, 3, 2)).astype(np.float32), bias=None, strides=(2, 1),
                         dilation=(1, 1), padding="same", pad=(1, 1, 0, 1)), (4, 7, 6), (7, 7, 3)),
    (ops.Pool2D(mode="max", size=(3, 3), strides=(2, 2), padding="same", pad=(1, 1, 1, 1)), (4, 4, 3), (7, 7, 3)),
    (ops.Pool2D(mode="avg", size=(3, 2), strides=(1, 1), padding="same", pad=(1, 1, 0, 1)), (7, 7, 3), (7, 7, 3)),
    (ops.GlobalPool2D(mode="avg", keepdims=False), (3,), (5, 4, 3)),
    (ops.Resize(size=(2, 2), interpolation="nearest"), (6, 8, 3), (3, 4, 3)),
    (ops.Concat(axis=1), (3, 8, 3), (3, 4, 3)),
    (ops.Softmax(axis=0), (4, 4, 3), (4, 4, 3)),
])
def test_geometry_beyond_the_samples(op, shape, input_shape, tmp_path):
    """Groups, dilation and asymmetric pads; max pooling where padding must not win (all inputs
    negative, so a zero pad would); the concatenation and softmax axes remapped to NCHW."""
    inputs = [input_shape] * (2 if isinstance(op, ops.Concat) else 1)
    graph = one_layer(op, shape, inputs)
    xs = [RNG.uniform(-3, -1, (1, *s)).astype(np.float32) for s in inputs]
    compare(graph, packaged(graph, tmp_path), xs)


def test_elementwise_with_scalars_and_broadcasting(tmp_path):
    """x - 3, 2 / x and a (1, 1, C) scale times an image: constants at their argument positions."""
    graph = Graph(inputs={"a": (4, 5, 3), "b": (1, 1, 3)}, nodes={}, outputs=["q"],
                  source=SourceInfo("m.h5", "0" * 64, "3", "keras"))
    graph.nodes["s"] = Node("s", ops.Elementwise(mode="subtract", constants=((1, 3.0),)), ["a"], (4, 5, 3))
    graph.nodes["d"] = Node("d", ops.Elementwise(mode="divide", constants=((0, 2.0),)), ["s"], (4, 5, 3))
    graph.nodes["q"] = Node("q", ops.Elementwise(mode="multiply"), ["d", "b"], (4, 5, 3))
    xs = [RNG.uniform(0.5, 2, (1, 4, 5, 3)).astype(np.float32), RNG.uniform(-1, 1, (1, 1, 1, 3)).astype(np.float32)]
    compare(graph, packaged(graph, tmp_path), xs)


def test_dense_after_flatten_reads_keras_order(tmp_path):
    """Flatten then Dense: the kernel's rows are in Keras' (H, W, C) order, not NCHW's."""
    graph = Graph(inputs={"x": (3, 4, 5)}, nodes={}, outputs=["fc"], source=SourceInfo("m.h5", "0" * 64, "3", "keras"))
    graph.nodes["flat"] = Node("flat", ops.Flatten(), ["x"], (60,))
    graph.nodes["fc"] = Node("fc", ops.Dense(kernel=RNG.normal(0, 0.3, (60, 7)).astype(np.float32),
                                             bias=RNG.normal(0, 0.3, 7).astype(np.float32),
                                             activation={"type": "softmax"}), ["flat"], (7,))
    xs = [RNG.uniform(-1, 1, (1, 3, 4, 5)).astype(np.float32)]
    compare(graph, packaged(graph, tmp_path), xs)


def test_space_to_depth_is_yad2k_order(tmp_path):
    """Each output channel of the package's space-to-depth is TensorFlow's (YAD2K's) channel,
    checked index by index: out[i, j, (bi*2 + bj)*C + c] = in[2i + bi, 2j + bj, c]."""
    from kerasfold.verify.mlprogram import run
    graph = one_layer(ops.SpaceToDepth(block=2), (2, 3, 12), [(4, 6, 3)])
    x = np.arange(4 * 6 * 3, dtype=np.float32).reshape(1, 4, 6, 3)
    got = run(packaged(graph, tmp_path), {"x0": x})["n"]
    for i, j, bi, bj, c in np.ndindex(2, 3, 2, 2, 3):
        assert got[0, i, j, (bi * 2 + bj) * 3 + c] == x[0, 2 * i + bi, 2 * j + bj, c]


def test_image_input_preprocessing(tmp_path):
    """An image input: Core ML hands the program pixels; the program applies x * scale + bias per
    channel, and the first convolution sees what the Keras model would."""
    from kerasfold.verify.mlprogram import run
    (op, shape), shapes = _lowered("Conv2D")
    graph = one_layer(op, shape, shapes)
    program = packaged(graph, tmp_path, image=True, scale=1 / 255, bias=(-0.5, 0.0, 0.25), color="BGR")
    pixels = RNG.integers(0, 256, (1, 3, *shapes[0][:2])).astype(np.float32)
    x = pixels.transpose(0, 2, 3, 1) / 255 + np.array([-0.5, 0.0, 0.25])
    want = reference.run(graph, [x.astype(np.float32)], dtype="float64")["n"]
    got = run(program, {"x0": pixels}, dtype="float64")["n"]
    assert float(np.max(np.abs(got - want))) <= 1e-5 * float(np.max(np.abs(want)))


def test_batch_norm_over_another_axis(tmp_path):
    """A BatchNormalization over the height axis: MPS refuses it, Core ML expresses it exactly."""
    c = 5
    op = ops.BatchNorm(mean=RNG.normal(0, 1, c).astype(np.float32), var=RNG.uniform(0.5, 2, c).astype(np.float32),
                       eps=1e-3, gamma=RNG.normal(1, 0.3, c).astype(np.float32), beta=RNG.normal(0, 1, c).astype(np.float32),
                       axis=1, channels_last=False)
    graph = one_layer(op, (5, 4, 3), [(5, 4, 3)])
    assert isinstance(graph.nodes["n"].op, ops.BatchNorm)           # the passes leave it
    xs = [RNG.uniform(-1, 1, (1, 5, 4, 3)).astype(np.float32)]
    compare(graph, packaged(graph, tmp_path), xs, tolerance=1e-5)   # s, t rounded to float32 once


def test_every_operation_reaching_a_target_has_a_core_ml_rule():
    from kerasfold.targets.coreml.emit import EMITTERS
    reaching = set(ops.all_ops()) - set(ops.REWRITTEN) - {ops.Opaque}
    assert reaching <= set(EMITTERS), reaching - set(EMITTERS)
