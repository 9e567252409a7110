"""Remove operations that are the identity at inference.

    before:  conv -> Dropout -> pool        after:  conv -> pool
"""
from __future__ import annotations

from .. import ops
from ..graph import Graph


def drop_identities(graph: Graph) -> None:
    for node in graph:
        if isinstance(node.op, ops.Identity) and len(node.inputs) == 1:
            graph.bypass(node.name)
