"""Verification, beside the pipeline: proves an export against the original model.

    reference   numpy executor of typed operations (an export read back, or a graph in memory)
    rebuild     Keras models from typed operations, or the original from its layers (Keras only when called)
    check       the parity and reference checks, the report, and the ``kerasfold.verify`` command line
"""
from .check import Check, ParityReport, main, verify_export

__all__ = ["Check", "ParityReport", "main", "verify_export"]
