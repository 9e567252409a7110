"""The MPS target: FORMAT.md exports (``.bin`` files + ``manifest.json``).

    entries   typed operations -> manifest entries with tensors in MPS layout
    layouts   HWIO -> OHWI, (kh, kw, C, M) -> OHW, (in, out) -> OI, and back
    offsets   MPSCNNKernel ``offset`` from explicit pads
    float16   half-precision range and underflow checks
    writer    file names, hashes, manifest; ``atomic`` swaps OUT in one step
    read      an export read back (each file decoded and hashed once), decoded into operations
"""
