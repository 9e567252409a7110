"""Prove this tree writes the same files as a previous release: every ``.bin`` byte for byte and
every ``manifest.json`` field for field, on tiny-yolo-voc (three flavours), YOLOv2 and the
keras.applications set (randomised BN statistics).

    python benchmarks/same_bytes.py [--ref 1d38725] [--models tiny yolov2 applications]

Exit 0 when everything is identical, 1 otherwise (each difference printed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LAST_RELEASE = "1d38725"          # the last commit before the kinds redesign
# Differences made on purpose since LAST_RELEASE (printed, not failed): the recognised YAD2K Lambda's
# keras_class is now the class it came from, "Lambda" (it said "SpaceToDepth", not a Keras class).
KNOWN = ("keras_class 'SpaceToDepth' -> 'Lambda'",)


def build_models(cache: Path, which: list[str]) -> dict[str, Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    paths: dict[str, Path] = {}
    if "tiny" in which:
        from models.tiny_yolo_voc import FILE_NAMES, build_and_save
        done = {f: cache / n for f, n in FILE_NAMES.items()}
        paths.update({f"tiny-yolo-voc {f}": p for f, p in
                      (done if all(p.exists() for p in done.values()) else build_and_save(cache)).items()})
    if "yolov2" in which:
        from models import yolov2
        built = sorted((cache / "yolov2").glob("*.h5")) or list(yolov2.build_and_save(cache / "yolov2").values())
        paths["yolov2"] = built[0]
    if "applications" in which:
        from models.applications import ILL_CONDITIONED, PROVEN, build
        for name in [*PROVEN, *ILL_CONDITIONED]:
            path = cache / f"{name}.keras"
            if not path.exists():
                build(name).save(path)
            paths[name] = path
    return paths


def export(tree: Path, model: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "kerasfold.yolo2metal", str(model), str(out), "-q"],
                          cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: export of {model.name} failed: {proc.stderr.strip()[-400:]}")


def differences(old: Path, new: Path) -> tuple[list[str], int, int]:
    diffs = []
    bins = sorted({p.name for p in old.glob("*.bin")} | {p.name for p in new.glob("*.bin")})
    for name in bins:
        a, b = old / name, new / name
        if not (a.exists() and b.exists()):
            diffs.append(f"{name} only in {'new' if b.exists() else 'old'}")
        elif hashlib.sha256(a.read_bytes()).digest() != hashlib.sha256(b.read_bytes()).digest():
            diffs.append(f"{name} differs")
    m_old, m_new = (json.loads((d / "manifest.json").read_text()) for d in (old, new))
    for i, (e_old, e_new) in enumerate(zip(m_old["layers"], m_new["layers"])):
        for key in sorted(set(e_old) | set(e_new)):
            if e_old.get(key) != e_new.get(key):
                diffs.append(f"layer {e_old.get('name')}: {key} {e_old.get(key)!r:.80} -> {e_new.get(key)!r:.80}")
    for key in sorted(set(m_old) | set(m_new) - {"layers"}):
        if key != "layers" and m_old.get(key) != m_new.get(key):
            diffs.append(f"manifest {key} differs")
    if len(m_old["layers"]) != len(m_new["layers"]):
        diffs.append(f"{len(m_old['layers'])} layers -> {len(m_new['layers'])}")
    return diffs, len(bins), sum((new / n).stat().st_size for n in bins if (new / n).exists())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default=LAST_RELEASE, help=f"the release to compare with (default {LAST_RELEASE})")
    p.add_argument("--models", nargs="+", default=["tiny", "yolov2", "applications"],
                   choices=["tiny", "yolov2", "applications"])
    p.add_argument("--cache", type=Path, default=ROOT / "build" / "same-bytes")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    models = build_models(args.cache, args.models)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="kerasfold-same-bytes-") as tmp:
        old_tree = Path(tmp) / "ref"
        old_tree.mkdir()
        archive = subprocess.run(["git", "archive", args.ref], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        for i, (label, model) in enumerate(models.items()):
            old, new = Path(tmp) / f"old{i}", Path(tmp) / f"new{i}"
            export(old_tree, model, old)
            export(ROOT, model, new)
            diffs, count, size = differences(old, new)
            known = [d for d in diffs if d.endswith(KNOWN)]
            diffs = [d for d in diffs if d not in known]
            failed += bool(diffs)
            print(f"{label:28} {count:4d} .bin files {size / 1e6:7.1f} MB  "
                  + ("identical" if not diffs else "DIFFERENT:\n    " + "\n    ".join(diffs[:8]))
                  + (f" (known: {'; '.join(known)})" if known else ""))
    print(f"against {args.ref}: {len(models) - failed} of {len(models)} models identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
