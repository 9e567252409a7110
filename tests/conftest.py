import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_yolo(tmp_path_factory):
    """tiny-yolo-voc in all three flavours: {"keras2-h5": path, "keras3-h5": path, "keras": path}."""
    from models.tiny_yolo_voc import build_and_save
    return build_and_save(tmp_path_factory.mktemp("tiny-yolo"))


@pytest.fixture(scope="session")
def tiny_yolo_export(tiny_yolo, tmp_path_factory):
    """The Keras 2 tiny-yolo-voc exported once (read-only for tests)."""
    from kerasfold.export import export
    out = tmp_path_factory.mktemp("tiny-yolo-export") / "out"
    export(tiny_yolo["keras2-h5"], out)
    return out


def save_keras(model, path):
    model.save(path)
    return path
