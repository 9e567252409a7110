"""``python -m kerasfold MODEL OUT``: the export command line (same as ``kerasfold.yolo2metal``)."""
import sys

from .yolo2metal import main

sys.exit(main())
