"""The graph every pass works on: typed nodes (one per layer call), edges by node name.

A node holds a Keras layer's class name, its config (as read, never executed), its weights
by canonical variable name (``kernel``, ``bias``, ``gamma``, ...), and what passes add: the
BatchNormalizations folded into it and the activation fused into it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

Shape = tuple  # (H, W, C) or (N,) etc.; batch axis dropped; None where unknown

LINEAR: dict[str, Any] = {"type": "linear"}


@dataclass
class Node:
    name: str                      # unique in the graph; the Keras layer name for its first call
    kind: str                      # Keras class name: "Conv2D", "BatchNormalization", ...
    config: dict[str, Any]         # the layer's config as read from the file
    inputs: list[str]              # names of the nodes whose outputs this node consumes, in order
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    layer: str = ""                # Keras layer name (shared by every call of one layer)
    folded: list[str] = field(default_factory=list)   # BatchNormalization layers folded in
    activation: dict[str, Any] = field(default_factory=lambda: dict(LINEAR))
    output_shape: Shape | None = None
    constants: list[tuple[int, float]] = field(default_factory=list)   # (argument position, scalar)
    origin: str = ""               # the Keras class a pass rewrote this node from ("" when none)
    absorbed: list[str] = field(default_factory=list)  # nodes fused into this one, in order
    synthetic: bool = False        # made by a pass (a separable's depthwise half): no Keras twin

    def __post_init__(self) -> None:
        self.layer = self.layer or self.name

    @property
    def is_input(self) -> bool:
        return self.kind == "InputLayer"


@dataclass
class SourceInfo:
    file: str
    sha256: str
    keras_version: str
    flavour: str                   # "keras2-h5", "keras3-h5" or "keras"


@dataclass
class Graph:
    """Nodes in topological order; ``inputs``/``outputs`` name nodes."""

    nodes: dict[str, Node]
    inputs: list[str]
    outputs: list[str]
    source: SourceInfo

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes.values()))

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

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
