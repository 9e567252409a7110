"""Remove layers that are the identity at inference.

    before:  conv -> Dropout -> pool        after:  conv -> pool
"""
from __future__ import annotations

from ..graph import Graph

IDENTITIES = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
              "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity")


def drop_identities(graph: Graph) -> None:
    for node in graph:
        if node.kind in IDENTITIES and len(node.inputs) == 1:
            graph.bypass(node.name)
