"""The graph every pass works on: typed operations (``kerasfold.ops``), one node per layer call,
edges by node name, nodes in topological order.

A node holds its operation (weights inside, Keras layout), its output shape (batch axis dropped,
channels last; None where unknown), where it came from (Keras layer and class), and what passes
record: the BatchNormalizations folded into it and the nodes fused into it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:                  # an annotation only: the readers import this module before the
    from .ops import Op            # operations are needed (kerasfold.pipeline)

Shape = tuple


@dataclass
class Node:
    name: str                      # unique in the graph; the Keras layer name for its first call
    op: Op
    inputs: list[str]              # node or model-input names, in argument order
    shape: Shape | None            # output shape
    layer: str = ""                # Keras layer (path) shared by every call of one layer
    keras_class: str = ""          # the Keras class this node came from
    folded: list[str] = field(default_factory=list)    # BatchNormalization layers folded in
    absorbed: list[str] = field(default_factory=list)  # nodes fused into this one, in order
    synthetic: bool = False        # made by a pass (a separable's depthwise half): no Keras twin

    def __post_init__(self) -> None:
        self.layer = self.layer or self.name


@dataclass
class SourceInfo:
    file: str
    digest: str | Callable[[], str]   # hex sha256, or how to get it (its hashing runs beside the export)
    keras_version: str
    flavour: str                   # "keras2-h5", "keras3-h5" or "keras"

    @property
    def sha256(self) -> str:
        if not isinstance(self.digest, str):
            self.digest = self.digest()
        return self.digest


@dataclass
class Graph:
    """``inputs``: model input name -> shape; ``nodes`` in topological order; ``outputs`` name nodes
    (or inputs)."""

    inputs: dict[str, Shape]
    nodes: dict[str, Node]
    outputs: list[str]
    source: SourceInfo

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes.values()))

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def shape(self, name: str) -> Shape | None:
        """Output shape of a node or a model input."""
        return self.inputs[name] if name in self.inputs else self.nodes[name].shape

    def consumers(self, name: str) -> list[Node]:
        """Nodes that read ``name``'s output (a node reading it twice is listed once)."""
        return [n for n in self.nodes.values() if name in n.inputs]

    def is_output(self, name: str) -> bool:
        return name in self.outputs

    def is_shared(self, node: Node) -> bool:
        """True when ``node``'s layer (its weights) is called elsewhere in the graph too."""
        return any(n.layer == node.layer and n is not node for n in self.nodes.values())

    def sole_consumer(self, name: str) -> Node | None:
        """The one node reading ``name``, when ``name`` feeds exactly one node once and is not
        a model output; else None. This is the guard every vertical fusion needs."""
        if self.is_output(name):
            return None
        users = self.consumers(name)
        if len(users) != 1 or users[0].inputs.count(name) != 1:
            return None
        return users[0]

    def producer(self, node: Node) -> Node | None:
        """The node computing ``node``'s single input (None for a model input or several inputs)."""
        if len(node.inputs) != 1 or node.inputs[0] not in self.nodes:
            return None
        return self.nodes[node.inputs[0]]

    def bypass(self, name: str) -> None:
        """Remove a single-input node, connecting its consumers (and outputs) to its input."""
        node = self.nodes.pop(name)
        if len(node.inputs) != 1:
            raise ValueError(f"bypass expects a node with one input, received {node.inputs}")
        (src,) = node.inputs
        for other in self.nodes.values():
            other.inputs = [src if i == name else i for i in other.inputs]
        self.outputs = [src if o == name else o for o in self.outputs]

    def insert_before(self, name: str, node: Node) -> None:
        """Add ``node`` just before ``name`` in the (topological) order."""
        items = list(self.nodes.items())
        at = [k for k, _ in items].index(name)
        self.nodes = dict(items[:at] + [(node.name, node)] + items[at:])

    def absorb(self, producer: str, name: str) -> None:
        """Remove ``name`` (whose sole input is ``producer``) and let ``producer`` stand in its
        place: consumers of ``name`` now read ``producer``."""
        gone = self.nodes[name]
        self.bypass(name)
        self.nodes[producer].absorbed += [name, *gone.absorbed]

    def output_of(self, name: str) -> str | None:
        """The original node whose output ``name``'s output now is (None for a synthetic node)."""
        node = self.nodes[name]
        return None if node.synthetic else (node.absorbed[-1] if node.absorbed else node.name)
