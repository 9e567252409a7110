"""Read an export back through FORMAT.md only: the manifest, each tensor decoded and hashed once,
and the whole network decoded into typed operations (layouts undone by operation class).

    export = load_export(out)
    graph = export.graph()                    # ops with Keras-layout weights, pads from the manifest
    graph = export.graph(windows="offset")    # pads derived from each entry's MPS ``offset`` instead
    graph = export.kept_graph()               # decoded once and kept, read-only (repeated runs)

numpy, and jsonschema for the manifest (schema.py); the verifier and any other reader of an export
start here.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ... import ops
from ...errors import ExportError, UnsupportedLayer
from ...graph import Graph, Node, SourceInfo
from . import layouts
from .offsets import effective_kernel, entry_geometry, entry_offset
from .schema import read_manifest

WINDOWS = ("pad", "offset")


@dataclass
class Export:
    root: Path
    manifest: dict[str, Any]
    hash_mismatches: list[str] = field(default_factory=list)
    _tensors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _graphs: dict[str, tuple[dict[str, Any], Graph]] = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.manifest["layers"]

    def tensor(self, entry: dict[str, Any], key: str) -> np.ndarray:
        """``entry[key]`` ("weights", "bias") as an array in device layout, shape checked; read,
        hashed and decoded once per file. A sha256 that disagrees with the manifest is recorded in
        ``hash_mismatches``."""
        info = entry[key]
        name = info["file"]
        if name in self._tensors:
            return self._tensors[name]
        try:
            data = (self.root / name).read_bytes()
        except OSError as err:
            raise ExportError(f"expected tensor file {name}, received {err.strerror}",
                              file=str(self.root), layer=entry["name"]) from err
        if hashlib.sha256(data).hexdigest() != info["sha256"] and name not in self.hash_mismatches:
            self.hash_mismatches.append(name)
        dtype = np.dtype(info["dtype"]).newbyteorder("<")
        count = math.prod(info["shape"])
        if len(data) != count * dtype.itemsize:
            raise ExportError(f"expected {count * dtype.itemsize} bytes in {name} for shape "
                              f"{info['shape']} {info['dtype']}, received {len(data)}",
                              file=str(self.root), layer=entry["name"])
        array = np.frombuffer(data, dtype=dtype).reshape(info["shape"]).astype(dtype.newbyteorder("="))
        self._tensors[name] = array
        return array

    def graph(self, windows: str = "pad") -> Graph:
        """The export's network as typed operations (``windows``: see :func:`decode`)."""
        return decode(self, windows)

    def kept_graph(self, windows: str = "pad") -> Graph:
        """The network decoded once per ``windows`` rule and kept, for readers that run it many
        times and change nothing in it (the reference executor); decoded again when the manifest
        changed since. Callers that modify a graph take :meth:`graph`."""
        kept = self._graphs.get(windows)
        if kept is None or kept[0] != self.manifest:
            kept = self._graphs[windows] = (copy.deepcopy(self.manifest), decode(self, windows))
        return kept[1]


def load_export(out: str | Path) -> Export:
    """The export in ``out``, its manifest validated first (schema.py): a manifest that does not
    match FORMAT.md, or that names a file outside ``out``, is refused before anything is read."""
    root = Path(out)
    return Export(root=root, manifest=read_manifest(root))


# -- entries -> operations (the inverse of entries.py) --------------------------------------------

class Reader:
    """What a decoder sees: the export, the window rule, and the shapes decoded so far."""

    def __init__(self, export: Export, windows: str, shapes: dict[str, Any]):
        self.export, self.windows, self.shapes = export, windows, shapes

    def weights(self, entry: dict[str, Any]) -> np.ndarray:
        return self.export.tensor(entry, "weights").astype(np.float32)   # rank: checked by the schema

    def bias(self, entry: dict[str, Any]) -> np.ndarray | None:
        return self.export.tensor(entry, "bias").astype(np.float32) if "bias" in entry else None

    def pad(self, entry: dict[str, Any]) -> tuple[int, int, int, int]:
        """The entry's ``pad``; in "offset" mode the pad MPS's window rule gives for its ``offset``
        (the window of output i starts at ``i*stride + offset - (k_eff >> 1)``) and its
        ``output_shape`` (the destination image)."""
        pad = tuple(int(p) for p in entry.get("pad", [0, 0, 0, 0]))
        if self.windows == "pad":
            return pad
        kernel, strides, dilation = entry_geometry(entry)
        offset = entry_offset(entry)
        size = self.shapes.get(entry["inputs"][0])
        out = entry.get("output_shape")
        sides = []
        for a in (0, 1):
            k = effective_kernel(kernel[a], dilation[a])
            before = (k >> 1) - offset[a]
            if size is None or out is None or out[a] is None or len(size) != 3:
                after = pad[2 * a + 1]
            else:
                after = (int(out[a]) - 1) * strides[a] + k - int(size[a]) - before
            sides += [before, after]
        return tuple(sides)


def _pair(entry: dict[str, Any], key: str) -> tuple[int, int]:
    value = entry.get(key, [1, 1])
    return (int(value[0]), int(value[-1]))


Decoder = Callable[[dict[str, Any], Reader], ops.Op]


def _conv2d(e: dict[str, Any], r: Reader) -> ops.Op:
    return ops.Conv2D(kernel=layouts.conv2d_hwio(r.weights(e)), bias=r.bias(e), strides=_pair(e, "strides"),
                      dilation=_pair(e, "dilation"), groups=int(e.get("groups", 1) or 1),
                      padding=e.get("padding", "valid"), pad=r.pad(e))


def _depthwise(e: dict[str, Any], r: Reader) -> ops.Op:
    weights, multiplier = r.weights(e), int(e.get("depth_multiplier", 1))
    if weights.shape[0] % multiplier:
        raise ExportError(f"expected depthwise weights' C*M rows divisible by depth_multiplier {multiplier}, "
                          f"received {weights.shape[0]}")
    kernel = layouts.depthwise_hwcm(weights, multiplier)
    return ops.DepthwiseConv2D(kernel=kernel, bias=r.bias(e), strides=_pair(e, "strides"),
                               dilation=_pair(e, "dilation"), padding=e.get("padding", "valid"), pad=r.pad(e))


def _transpose(e: dict[str, Any], r: Reader) -> ops.Op:
    return ops.Conv2DTranspose(kernel=layouts.transpose_hwoi(r.weights(e)), bias=r.bias(e),
                               strides=_pair(e, "strides"), padding=e.get("padding", "valid"),
                               crop=tuple(int(c) for c in e.get("crop", [0, 0, 0, 0])))


def _pool(mode: str) -> Decoder:
    return lambda e, r: ops.Pool2D(mode=mode, size=_pair(e, "pool_size"), strides=_pair(e, "strides"),
                                   padding=e.get("padding", "valid"), pad=r.pad(e))


DECODERS: dict[str, Decoder] = {
    "conv2d": _conv2d,
    "depthwise_conv2d": _depthwise,
    "conv2d_transpose": _transpose,
    "dense": lambda e, r: ops.Dense(kernel=layouts.dense_io(r.weights(e)), bias=r.bias(e)),
    "prelu": lambda e, r: ops.PReLU(alpha=r.weights(e), shared_axes=e.get("shared_axes")),
    "max_pool2d": _pool("max"),
    "avg_pool2d": _pool("avg"),
    "global_avg_pool2d": lambda e, r: ops.GlobalPool2D(mode="avg", keepdims=bool(e.get("keepdims", False))),
    "global_max_pool2d": lambda e, r: ops.GlobalPool2D(mode="max", keepdims=bool(e.get("keepdims", False))),
    "zero_padding2d": lambda e, r: ops.Pad(pad=tuple(int(p) for p in e["pad"])),
    "cropping2d": lambda e, r: ops.Crop(crop=tuple(int(p) for p in e["crop"])),
    "upsampling2d": lambda e, r: ops.Resize(size=_pair(e, "size"), interpolation=e.get("interpolation", "nearest")),
    **{mode: (lambda m: lambda e, r: ops.Elementwise(
        mode=m, constants=tuple((int(c["position"]), float(c["value"])) for c in e.get("constants", []))))(mode)
       for mode in ("add", "subtract", "multiply", "divide")},
    "concatenate": lambda e, r: ops.Concat(axis=int(e.get("axis", -1))),
    "flatten": lambda e, r: ops.Flatten(),
    "reshape": lambda e, r: ops.Reshape(target=tuple(e["target_shape"])),
    "softmax": lambda e, r: ops.Softmax(axis=int(e.get("axis", -1))),
    "space_to_depth": lambda e, r: ops.SpaceToDepth(block=int(e.get("block_size", 2))),
    "rescaling": lambda e, r: ops.Rescaling(scale=e.get("scale", 1.0), offset=e.get("offset", 0.0)),
    "activation": lambda e, r: ops.Activation(),
    "keras_layer": lambda e, r: ops.Opaque(class_name=str(e.get("class_name")), config=e.get("config") or {}),
}


def decode(export: Export, windows: str = "pad") -> Graph:
    """Every entry as a node holding its typed operation, weights back in Keras layout."""
    if windows not in WINDOWS:
        raise ValueError(f"expected windows in {WINDOWS}, received {windows!r}")
    m = export.manifest
    inputs = {s["name"]: tuple(s["shape"]) for s in m["inputs"]}
    source = m.get("source") or {}
    graph = Graph(inputs=inputs, nodes={}, outputs=list(m["outputs"]),
                  source=SourceInfo(str(source.get("file", "")), str(source.get("sha256", "")),
                                    str(source.get("keras_version", "")), str(source.get("flavour", ""))))
    reader = Reader(export, windows, dict(inputs))
    for e in export.layers:
        decoder = DECODERS.get(e["type"])
        if decoder is None:
            raise UnsupportedLayer(f"expected a layer type of FORMAT.md ({', '.join(DECODERS)}), received "
                                   f"{e['type']!r}", file=str(export.root), layer=e["name"])
        try:
            op = decoder(e, reader)
        except ExportError as err:
            raise err.at(file=str(export.root), layer=e["name"])
        op.activation = dict(e.get("activation") or ops.linear())
        shape = None if e.get("output_shape") is None else tuple(e["output_shape"])
        of = e.get("output_of", e["name"])
        graph.nodes[e["name"]] = Node(name=e["name"], op=op, inputs=list(e["inputs"]), shape=shape,
                                      keras_class=e.get("keras_class", ""), folded=list(e.get("folded", [])),
                                      absorbed=[of] if of not in (None, e["name"]) else [], synthetic=of is None)
        reader.shapes[e["name"]] = shape
    return graph
