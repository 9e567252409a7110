"""What a reader gives: the model's layer calls as read (class name, raw config, weights by
canonical variable name), before any kind has parsed them. Nothing here is executed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..graph import SourceInfo


@dataclass
class Layer:
    name: str                      # unique; the Keras layer name for its first call, ``layer@k`` after
    kind: str                      # Keras class name: "Conv2D", "BatchNormalization", "InputLayer", ...
    config: Any                    # the layer's config as read from the file (not validated yet)
    inputs: list[str]              # names of the layers whose outputs this call consumes, in order
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    layer: str = ""                # Keras layer path (shared by every call of one layer)
    output_shape: tuple | None = None                  # InputLayer only: its declared shape
    constants: list[tuple[int, float]] = field(default_factory=list)   # (argument position, scalar)

    def __post_init__(self) -> None:
        self.layer = self.layer or self.name

    @property
    def is_input(self) -> bool:
        return self.kind == "InputLayer"


@dataclass
class Model:
    """Layer calls in topological order (input layers included); ``inputs``/``outputs`` name them."""
    nodes: dict[str, Layer]
    inputs: list[str]
    outputs: list[str]
    source: SourceInfo
    close: Callable[[], None] = field(default=lambda: None, repr=False)   # the file deferred weights read from

    def __iter__(self) -> Iterator[Layer]:
        return iter(list(self.nodes.values()))

    def __getitem__(self, name: str) -> Layer:
        return self.nodes[name]
