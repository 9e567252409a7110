"""Outputs: one package per target, each keyed by operation class and owning its layouts.

- ``targets.mps``: FORMAT.md (``.bin`` files + ``manifest.json``), OHWI/OHW/OI, MPS offsets.
"""
