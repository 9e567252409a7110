"""Shared fixtures: tiny-yolo-voc built once per session in its three flavours and exported once
each; small seeded test networks built and saved once per (builder, options, flavour).

Helpers for the test modules (``from conftest import ...``): ``ROOT``, ``run_module``,
``snapshot``, ``read_manifest``, ``copy_tree``.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_module(module, *args):
    """``python -m module args`` in a fresh process from the repository root (text output)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def snapshot(directory):
    """Every file under ``directory`` (relative path -> bytes), directories as ``None``."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(directory.rglob("*"))}


def read_manifest(out):
    return json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))


def copy_tree(src, dst):
    shutil.copytree(src, dst)
    return Path(dst)


@pytest.fixture(scope="session")
def tiny_yolo(tmp_path_factory):
    """tiny-yolo-voc in all three flavours: {"keras2-h5": path, "keras3-h5": path, "keras": path}."""
    from models.tiny_yolo_voc import build_and_save
    return build_and_save(tmp_path_factory.mktemp("tiny-yolo"))


@pytest.fixture(scope="session")
def tiny_yolo_exports(tiny_yolo, tmp_path_factory):
    """Each flavour exported once through the command line's ``main`` (read-only for tests)."""
    from kerasfold.yolo2metal import main
    root = tmp_path_factory.mktemp("tiny-yolo-exports")
    outs = {}
    for flavour, path in tiny_yolo.items():
        outs[flavour] = root / flavour
        assert main([str(path), str(outs[flavour]), "-q"]) == 0, flavour
    return outs


@pytest.fixture(scope="session")
def tiny_yolo_export(tiny_yolo_exports):
    """The Keras 2 tiny-yolo-voc exported once (read-only for tests)."""
    return tiny_yolo_exports["keras2-h5"]


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """``small_model(builder, flavour="keras", seed=0, **options) -> (keras model, path)``: a network
    of :mod:`models.small` built (seeded, randomised BN) and saved once per session."""
    from models.small import SUFFIXES, build, save
    root = tmp_path_factory.mktemp("small")
    models, paths = {}, {}

    def make(builder, flavour="keras", seed=0, **options):
        key = (builder.__name__, seed, repr(sorted(options.items())))
        if key not in models:
            models[key] = build(builder, seed, **options)
        if key + (flavour,) not in paths:
            folder = root / f"m{len(paths)}"
            folder.mkdir()
            paths[key + (flavour,)] = save(models[key], folder / (builder.__name__ + SUFFIXES[flavour]),
                                           flavour, builder, **options)
        return models[key], paths[key + (flavour,)]
    return make


@pytest.fixture(scope="session")
def small_export(small_model, tmp_path_factory):
    """A small conv -> BN -> LeakyReLU -> conv network exported once (read-only): its OUT."""
    from kerasfold.pipeline import export
    from models.small import conv_bn_act
    _, path = small_model(conv_bn_act)
    out = tmp_path_factory.mktemp("small-export") / "out"
    export(path, out)
    return out


@pytest.fixture
def previous(small_export, tmp_path):
    """An OUT holding a previous export, and the snapshot of its bytes to compare with later."""
    out = copy_tree(small_export, tmp_path / "out")
    return out, snapshot(out)


def float32_target(fold):
    """A fold as the float32 target writes it: the float64 weights rounded to float32 once (the
    folds return float64 weights so that a float16 target rounds once too); biases as returned."""
    import numpy as np

    def wrapped(*args, **kwargs):
        weights, bias = fold(*args, **kwargs)
        assert weights.dtype == np.float64, "the fold must leave the weights' rounding to the target"
        with np.errstate(over="ignore"):
            return weights.astype(np.float32), bias
    return wrapped
