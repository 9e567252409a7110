"""kerasfold: Keras models to Metal weight files, BatchNormalization folded, proven by a parity check.

Importing this package (and the export path) needs numpy and h5py only; TensorFlow and Keras
are imported inside the functions that need them (``kerasfold.verify``).
"""

__version__ = "0.1.0"
FORMAT_NAME = "kerasfold.metal"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")         # export weight types (biases are always float32)
