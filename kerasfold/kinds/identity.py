"""Layers that are the identity at inference (Dropout and its family, noise, regularisers, the
stand-in for a nested Sequential). One declaration gives the class names, the shape rule (the
input's) and the lowering (``ops.Identity``, removed by a pass), so no list can forget one."""
from __future__ import annotations

from .. import ops
from .base import Kind, same

IDENTITY_CLASSES = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity")

IDENTITY = Kind(IDENTITY_CLASSES, lambda f: None, same, lambda p, w, shapes: ops.Identity())

KINDS = (IDENTITY,)
