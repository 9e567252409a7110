"""BatchNormalization passes: fold into the producer or forward into the consumer; export what
cannot be folded as a per-channel scale/bias. Adapters only: the math is ``bn_math`` on arrays."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import ops
from ..deferred import checked
from ..errors import ExportError
from ..graph import Graph, Node
from ..kinds.activation import is_linear
from .bn_math import BNParams, bn_as_scale_bias, fold_bn, fold_bn_forward


def _depthwise(op: ops.DepthwiseConv2D, bn: BNParams) -> None:
    """(kh, kw, C, M): output channel c*M + m, i.e. the flattened last two axes."""
    kh, kw, c, m = op.kernel.shape
    flat, op.bias = fold_bn(op.kernel.reshape(kh, kw, c * m), op.bias, bn, -1)
    op.kernel = flat.reshape(kh, kw, c, m)


def _on_axis(axis: int) -> Callable[[ops.Op, BNParams], None]:
    def fold(op, bn: BNParams) -> None:
        op.kernel, op.bias = fold_bn(op.kernel, op.bias, bn, axis)
    return fold


# Producer operation -> its fold (rewrites the producer's kernel and bias in place).
FOLD_TARGETS: dict[type, Callable[[ops.Op, BNParams], None]] = {
    ops.Conv2D: _on_axis(-1),                   # (kh, kw, in/groups, out)
    ops.Dense: _on_axis(-1),                    # (in, out)
    ops.DepthwiseConv2D: _depthwise,
    ops.Conv2DTranspose: _on_axis(2),           # (kh, kw, out, in): out is axis 2
}


def check_finite(bn: str, into: str, *arrays: np.ndarray | None) -> None:
    """Every folded value finite once rounded to float32 (a huge γ or a tiny σ² + ε overflows)."""
    for array in arrays:
        if array is None:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(array.astype(np.float32))
        if not finite.all():
            worst = float(np.max(np.abs(array)))
            raise ExportError(f"expected finite folded weights, received {int(finite.size - finite.sum())} "
                              f"values beyond float32 (largest |w| = {worst:.3g}) folding BatchNormalization "
                              f"'{bn}' into '{into}'; check its gamma and moving_variance", layer=bn)


def _checked_kernel(op: ops.Op, bn: str, into: str) -> None:
    """:func:`check_finite` on the folded kernel (recorded, for a deferred one) and bias."""
    op.kernel = checked(op.kernel, lambda kernel: check_finite(bn, into, kernel))
    check_finite(bn, into, op.bias)


def bn_params(op: ops.BatchNorm) -> BNParams:
    """Missing gamma / beta mean identity (the math treats None as 1 / 0)."""
    return BNParams(mean=op.mean, var=op.var, eps=op.eps, gamma=op.gamma, beta=op.beta)


def _fold_guard(graph: Graph, bn: Node) -> Node | None:
    """The producer ``bn`` may be folded into, or None when a guard fails."""
    producer = graph.producer(bn)
    if producer is None or type(producer.op) not in FOLD_TARGETS or producer.folded:
        return None
    if not is_linear(producer.op.activation) or graph.is_shared(producer):
        return None                             # shared weights: folding would change other calls
    if graph.sole_consumer(producer.name) is not bn:
        return None                             # the raw output is needed elsewhere
    return producer if bn.op.channels_last else None


def fold_bn_into_producers(graph: Graph) -> None:
    """Conv2D | DepthwiseConv2D | Dense | Conv2DTranspose (W, b or none, linear) -> BN  =>  (W*s, (b-mu)s+beta).

        before:  x -> Conv2D -> BatchNormalization -> y
        after:   x -> Conv2D' -> y            (Conv2D'.folded == ["batch_normalization"])

    Guards: the producer's output feeds only the BN and is not a model output; the BN normalises
    the channel axis; the producer's own activation is linear; its weights are not shared.
    """
    for bn in graph:
        if not isinstance(bn.op, ops.BatchNorm) or bn.name not in graph.nodes:
            continue
        producer = _fold_guard(graph, bn)
        if producer is None:
            continue
        FOLD_TARGETS[type(producer.op)](producer.op, bn_params(bn.op))
        _checked_kernel(producer.op, bn.name, producer.name)
        producer.folded.append(bn.layer)
        graph.absorb(producer.name, bn.name)


def _pads_nothing(op: ops.Op) -> bool:
    if isinstance(op, ops.Dense):
        return True
    return isinstance(op, ops.Conv2D) and op.groups == 1 and tuple(op.pad) == (0, 0, 0, 0)


def fold_bn_into_consumers(graph: Graph) -> None:
    """A BatchNormalization before a layer that pads nothing folds forward into it.

        before:  x -> BatchNormalization -> Conv2D(valid, W, b) -> y
        after:   x -> Conv2D(W*s on the input axis, b + sum W*t) -> y

    Guards: the BN feeds only that Conv2D (groups 1) or Dense and is not a model output; the
    layer's padding is zero on every side; its weights are not shared; the BN normalises channels.
    """
    for bn in graph:
        if not isinstance(bn.op, ops.BatchNorm) or bn.name not in graph.nodes or len(bn.inputs) != 1:
            continue
        consumer = graph.sole_consumer(bn.name)
        if consumer is None or not _pads_nothing(consumer.op) or graph.is_shared(consumer):
            continue
        if not bn.op.channels_last:
            continue
        op = consumer.op
        axis = 0 if isinstance(op, ops.Dense) else 2
        op.kernel, op.bias = fold_bn_forward(op.kernel, op.bias, bn_params(bn.op), axis)
        _checked_kernel(op, bn.name, consumer.name)
        consumer.folded.insert(0, bn.layer)       # graph order: this BN came before any folded after
        graph.bypass(bn.name)


NORMALIZATION_EPSILON = 1e-7      # keras.config.epsilon(): Normalization divides by max(sqrt(var), eps)


def _scale_bias(node: Node, scale: np.ndarray, shift: np.ndarray, folded: list[str]) -> None:
    """Make ``node`` a 1x1 DepthwiseConv2D: depthwise kernel (1, 1, C, 1) = scale, bias = shift."""
    node.op = ops.DepthwiseConv2D(kernel=scale.reshape(1, 1, -1, 1), bias=shift, strides=(1, 1),
                                  dilation=(1, 1), padding="valid", pad=(0, 0, 0, 0))
    node.folded = folded


def normalization_to_scale_bias(graph: Graph) -> None:
    """Keras' Normalization layer (at the input, usually) becomes a 1x1 DepthwiseConv2D.

        before:  x -> Normalization(mean mu, variance var) -> y = (x - mu) / max(sqrt(var), 1e-7)
        after:   x -> DepthwiseConv2D(1x1, s = 1 / max(sqrt(var), 1e-7), bias = -mu s) -> y
    """
    for node in graph:
        if isinstance(node.op, ops.Normalization):
            std = np.maximum(np.sqrt(node.op.var), NORMALIZATION_EPSILON)
            _scale_bias(node, (1.0 / std).astype(np.float32), (-node.op.mean / std).astype(np.float32), [])


def bn_to_scale_bias(graph: Graph) -> None:
    """Any BatchNormalization over the channels left becomes a 1x1 DepthwiseConv2D (s, t).

        before:  x -> BatchNormalization -> y
        after:   x -> DepthwiseConv2D(1x1, depthwise_kernel (1, 1, C, 1) = s, bias = t) -> y

    A BN over another axis stays; the MPS target refuses it.
    """
    for bn in graph:
        if isinstance(bn.op, ops.BatchNorm) and bn.op.channels_last:
            scale, shift = bn_as_scale_bias(bn_params(bn.op))
            check_finite(bn.name, bn.name, scale, shift)
            _scale_bias(bn, scale, shift, [bn.layer])
