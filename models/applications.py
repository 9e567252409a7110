"""keras.applications architectures (weights=None: nothing downloaded) with randomised BN statistics.

    python -m models.applications OUT_DIR NAME [NAME ...] [--input-size 96]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

# Architectures that pass the parity check at 1e-5 (tests/test_architectures.py, README), with
# their input sizes; and ones that export but whose float64 parity exceeds 1e-5 because random BN
# statistics make them ill-conditioned (Keras' own float32 result is further from float64 still).
PROVEN = {"MobileNetV2": 96, "ResNet50": 96, "ResNet50V2": 96, "DenseNet121": 96, "MobileNet": 96,
          "Xception": 96, "VGG16": 96, "NASNetMobile": 224}
ILL_CONDITIONED = {"EfficientNetB0": 96, "MobileNetV3Small": 96, "InceptionV3": 96, "ResNet101": 96}


def build(name: str, input_size: int | None = None, seed: int = 0) -> Any:
    """``keras.applications.<name>`` with logits out (no softmax) and non-identity BN statistics."""
    import keras

    from .bn_stats import randomize_bn
    size = input_size or {**PROVEN, **ILL_CONDITIONED}.get(name, 96)
    keras.utils.set_random_seed(seed)           # the kernels' initialisers too: same model every run
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                              classifier_activation=None)
    randomize_bn(model, np.random.default_rng(seed))
    return model


def main(argv: list[str] | None = None) -> None:
    import os
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("names", nargs="+")
    p.add_argument("--input-size", type=int)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        path = args.out_dir / f"{name}.keras"
        build(name, args.input_size).save(path)
        print(path)


if __name__ == "__main__":
    main()
