"""MPSCNN's ``offset``: where a kernel's window sits on the source image, and the offset that
reproduces an explicit ``pad`` (numpy-free, pure integers).

The rule (per spatial axis), from Apple's Metal Performance Shaders headers:

- ``MPSCNNKernel.offset``: "the position of the destination image's clip rectangle origin,
  relative to the source image"; "the top left corner of the region consumed (ignoring
  adjustments for filter size) is given by the offset", the region's size following from the
  clip rectangle and the stride (MPSCNNKernel.h / developer.apple.com MPSCNNKernel). So output
  pixel ``i`` is centred on source position ``i * strideInPixels + offset``.
- ``MPSCNNConvolutionDescriptor.kernelWidth``: "The position of the left edge of the filter
  window is given by ``offset.x - (kernelWidth>>1)``" (MPSCNNConvolution.h); even kernels
  included.
- ``MPSCNNConvolutionDescriptor.dilationRateX``: the kernel is dilated to
  ``kW_Dilated = (kW-1)*dilationRateX + 1`` and "the kernel is centered based on kW_Dilated"
  (MPSCNNConvolution.h), so with dilation the ``kernelWidth>>1`` above is ``kW_Dilated>>1``.

Hence the window of output ``i`` starts at ``i*stride + offset - (k_eff >> 1)`` and reads taps
``start + j*dilation``. Explicit padding puts that start at ``i*stride - pad_before``, so::

    offset = (k_eff >> 1) - pad_before,   k_eff = (kernel - 1) * dilation + 1

independent of the stride (the stride moves every window alike) and of the input size (the
input size only decides ``pad_before``, which the manifest states).

Cross-checks:

- Apple's sample ``Offset()`` in the ``MPSNNPadding`` documentation (MPSNeuralNetworkTypes.h):
  ``correction = filterWindowSize / 2; ... leftExtraPixels = (extraSize + centeringPolicy) / 2;
  return correction - leftExtraPixels`` -- the same formula with ``leftExtraPixels`` =
  ``pad_before`` (TensorFlow's SAME: centeringPolicy 0, the odd pixel bottom/right).
- Forge (github.com/hollance/Forge, ``Forge/Forge/Shaders.metal``): its own conv3x3 reads
  ``gid * stride + inputOffset`` -1..+1, i.e. the same window rule. Its offsets
  (``Forge/Forge/Layers.swift``) differ from this formula in two cases:
  ``offsetForConvolution`` returns ``(k - padTotal) / 2`` with
  ``padTotal = (out-1)*stride + k - in`` not clamped at 0, which is one too small for an even
  kernel with an odd ``padTotal`` (every even kernel at stride 1: 2x2 and 4x4 give 0 instead of
  1; 2x2 stride 2 on odd inputs) and wrong whenever ``padTotal`` is negative (1x1 stride 2 on
  even inputs: 1 instead of 0); ``offsetForPooling`` agrees for tiny-yolo's pools
  (2x2 stride 2 on even sizes, 2x2 stride 1), as does Forge's default pooling offset ``k/2``
  (``Forge/Forge/LayerHelpers.swift``) for unpadded pools.

Pooling on the device: max pooling with ``MPSImageEdgeModeClamp`` equals "padded positions take
no part" (a clamped read repeats an edge pixel the window already holds); average pooling with
clamp divides by the real pixels only (MPSNNDefaultPadding ``paddingForTensorflowAveragePooling``
documentation). Convolution reads zeros outside the image (``MPSImageEdgeModeZero``).
"""
from __future__ import annotations

from typing import Any

from ...errors import ExportError


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Extent of a dilated kernel: ``(kernel - 1) * dilation + 1``."""
    return (kernel - 1) * dilation + 1


def mps_offset(kernel: int, stride: int, dilation: int, pad_before: int) -> int:
    """MPSCNN ``offset`` along one axis that makes the device's window equal explicit padding
    ``pad_before`` (top or left): ``(k_eff >> 1) - pad_before``. ``stride`` does not enter (it is
    accepted so that callers pass the whole geometry); see the module docstring for the sources."""
    if kernel < 1 or stride < 1 or dilation < 1 or pad_before < 0:
        raise ValueError(f"expected kernel, stride, dilation >= 1 and pad_before >= 0, received "
                         f"{kernel}, {stride}, {dilation}, {pad_before}")
    return (effective_kernel(kernel, dilation) >> 1) - pad_before


def window_start(i: int, stride: int, offset: int, kernel: int, dilation: int = 1) -> int:
    """First source index read for output ``i`` under MPS's rule: ``i*stride + offset - (k_eff >> 1)``."""
    return i * stride + offset - (effective_kernel(kernel, dilation) >> 1)


def entry_geometry(entry: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    """(kernel, strides, dilation) of a conv or pool manifest entry, each [H, W]."""
    kernel = entry.get("kernel", entry.get("pool_size"))
    if kernel is None:
        raise ExportError("expected 'kernel' or 'pool_size' in a windowed layer", layer=entry.get("name"))
    strides = entry.get("strides", [1, 1])
    dilation = entry.get("dilation", [1, 1])
    return [int(k) for k in kernel], [int(s) for s in strides], [int(d) for d in dilation]


def offset_for(entry: dict[str, Any]) -> dict[str, int]:
    """The MPSOffset ``{"x": ..., "y": ...}`` reproducing a conv/pool entry's explicit ``pad``."""
    (kh, kw), (sh, sw), (dh, dw) = entry_geometry(entry)
    top, _, left, _ = entry.get("pad", [0, 0, 0, 0])
    return {"x": mps_offset(kw, sw, dw, int(left)), "y": mps_offset(kh, sh, dh, int(top))}


def entry_offset(entry: dict[str, Any]) -> tuple[int, int]:
    """(y, x) offset of an entry: its manifest ``offset`` when present (``{"x", "y"}`` as MPSOffset,
    or ``[y, x]`` in the manifest's H, W order), else :func:`offset_for` its ``pad``."""
    given = entry.get("offset")
    if given is None:
        given = offset_for(entry)
    if isinstance(given, dict):
        return int(given["y"]), int(given["x"])
    if isinstance(given, (list, tuple)) and len(given) == 2:
        return int(given[0]), int(given[1])
    raise ExportError(f"expected 'offset' as {{\"x\": int, \"y\": int}} or [y, x], received {given!r}",
                      layer=entry.get("name"))
