"""Full YOLOv2 (VOC) as YAD2K lays it out: Darknet-19 body, two 3×3 1024 convs, and the
passthrough ``Lambda(space_to_depth_x2)`` + ``concatenate``. Saved in the Keras 2 format by
default, as YAD2K's files are.

    python -m models.yolov2 OUT_DIR [--input-size 416] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import flavours as formats

ANCHORS, CLASSES = 5, 20


def space_to_depth_x2(x: Any) -> Any:
    """YAD2K's passthrough; kerasfold recognises it by name and never runs it."""
    import tensorflow as tf
    return tf.nn.space_to_depth(x, block_size=2)


def space_to_depth_x2_output_shape(shape: Any) -> tuple:
    return (shape[0], shape[1] // 2, shape[2] // 2, 4 * shape[3])


def architecture(km: Any, input_size: int = 416) -> Any:
    L = km.layers
    count = 0

    def conv(x: Any, filters: int, size: int) -> Any:
        nonlocal count
        count += 1
        x = L.Conv2D(filters, size, padding="same", use_bias=False, name=f"conv2d_{count}")(x)
        x = L.BatchNormalization(name=f"batch_normalization_{count}")(x)
        return L.LeakyReLU(0.1, name=f"leaky_re_lu_{count}")(x)

    def pool(x: Any) -> Any:
        return L.MaxPooling2D(2, padding="same")(x)

    inputs = km.Input((input_size, input_size, 3), name="input_1")
    x = pool(conv(inputs, 32, 3))
    x = pool(conv(x, 64, 3))
    for filters, repeats in ((128, 3), (256, 3), (512, 5), (1024, 5)):
        for i in range(repeats):
            x = conv(x, filters if i % 2 == 0 else filters // 2, 3 if i % 2 == 0 else 1)
        if filters == 512:
            passthrough = x                                   # 26×26×512 at 416
        if filters != 1024:
            x = pool(x)
    x = conv(conv(x, 1024, 3), 1024, 3)
    p = conv(passthrough, 64, 1)
    p = L.Lambda(space_to_depth_x2, output_shape=space_to_depth_x2_output_shape, name="space_to_depth")(p)
    x = L.Concatenate()([p, x])
    x = conv(x, 1024, 3)
    outputs = L.Conv2D(ANCHORS * (CLASSES + 5), 1, name=f"conv2d_{count + 1}")(x)
    return km.Model(inputs, outputs)


def build_and_save(out_dir: str | Path, flavours: tuple[str, ...] = ("keras2-h5",), seed: int = 0,
                   input_size: int = 416) -> dict[str, Path]:
    return formats.build_and_save(lambda km: architecture(km, input_size), out_dir, "yolov2", flavours, seed)


def main(argv: list[str] | None = None) -> None:
    import os
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--flavour", action="append", choices=formats.FLAVOURS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=416)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for path in build_and_save(args.out_dir, tuple(args.flavour or ("keras2-h5",)), args.seed,
                               args.input_size).values():
        print(path)


if __name__ == "__main__":
    main()
