"""Seeded reference Keras models used to exercise kerasfold."""
