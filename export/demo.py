"""The main job on the built-in demo model: build tiny-yolo-voc, export it, verify it, summarise.

    python -m export.demo [DIR]        (``make demo`` runs it into build/demo)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kerasfold.pipeline import export
from kerasfold.verify import verify_export


def layer_table(manifest: dict) -> str:
    rows = [("layer", "type", "folded", "activation", "weights", "pad", "output")]
    for e in manifest["layers"]:
        act = e["activation"]
        rows.append((e["name"], e["type"], ",".join(e["folded"]) or "-",
                     act["type"] + (f" {act['alpha']:g}" if "alpha" in act else ""),
                     "x".join(map(str, e["weights"]["shape"])) + " " + e["weights"]["layout"]
                     if "weights" in e else "-",
                     ",".join(map(str, e.get("pad", []))) or "-",
                     "x".join(map(str, e["output_shape"] or ["?"]))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default="build/demo", help="where to write model and export")
    args = p.parse_args(argv)
    root = Path(args.dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")    # before models/ imports TensorFlow
    from models.tiny_yolo_voc import build_and_save

    start = time.perf_counter()
    model = build_and_save(root, flavours=("keras2-h5",))["keras2-h5"]
    print(f"built  {model} (tiny-yolo-voc, Keras 2 format, seeded, randomised BN) "
          f"in {time.perf_counter() - start:.1f} s")
    result = export(model, root / "metal")
    print(result.summary())
    print(layer_table(result.manifest))
    report = verify_export(model, root / "metal")
    print(report.text())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
