"""The Core ML target: the folded graph as an ML Program (``.mlpackage``), built with coremltools'
MIL builder from kerasfold's typed operations; no TensorFlow, no Keras.

    ct_env       coremltools imported quietly, TensorFlow hidden from it
    values       a MIL value and its layout: 4-D tensors are NCHW inside the program, others Keras'
    activations  the manifest's activations as MIL ops
    emit         one builder per operation class (weights: HWIO -> OIHW, (kh, kw, C, M) -> groups=C, ...)
    program      graph -> MIL program: inputs (MultiArray NHWC, or an image), outputs in NHWC
    package      convert, metadata, float16 range check, saved atomically

The weights are the MPS target's float32 values (the exact fold rounded once), or from an export
directory exactly its verified files.
"""
