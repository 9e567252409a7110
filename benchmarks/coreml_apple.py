"""What an iOS developer runs with Apple's converter: Keras loads the model, coremltools converts it.

    python benchmarks/coreml_apple.py MODEL OUT.mlpackage

``keras.models.load_model(MODEL, compile=False, safe_mode=False)`` (safe mode off: the developer
trusts their own file, and a Lambda is refused otherwise), then ``coremltools.convert`` to a float32
ML Program for iOS 15 and ``.save(OUT)``. Needs TensorFlow. Exit 0 on success; exit 2 with one line
``cannot: <stage>: <error>`` when Keras cannot load the model or coremltools cannot convert it.
"""
from __future__ import annotations

import os
import re
import sys


def one_line(err: Exception) -> str:
    """The error's type and message on one line, without Keras' ANSI colour codes."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())
    return f"{type(err).__name__}: {text[:400]}"


def main(argv: list[str] | None = None) -> int:
    model_path, out = (argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import coremltools as ct
    import keras
    try:
        model = keras.models.load_model(model_path, compile=False, safe_mode=False)
    except Exception as err:  # noqa: BLE001 — any refusal by Keras is the answer this row reports
        print(f"cannot: keras.models.load_model: {one_line(err)}", file=sys.stderr)
        return 2
    try:
        mlmodel = ct.convert(model, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
                             compute_precision=ct.precision.FLOAT32)
    except Exception as err:  # noqa: BLE001 — likewise for coremltools
        print(f"cannot: coremltools.convert: {one_line(err)}", file=sys.stderr)
        return 2
    mlmodel.save(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
