"""``python -m kerasfold MODEL OUT``: the export command line (same as ``kerasfold.yolo2metal``)."""
from .yolo2metal import command

command()
