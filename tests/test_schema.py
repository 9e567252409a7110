"""manifest.json against its JSON Schema (kerasfold/manifest.schema.json) and the checks beyond it:
every export the exporter writes validates; a damaged or hostile manifest is refused (exit 2, one
line, OUT untouched) by the verifier and by an export that would replace OUT."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kerasfold import ops
from kerasfold.errors import ExportError
from kerasfold.graph import Graph, Node, SourceInfo
from kerasfold.passes import run_passes
from kerasfold.pipeline import ExportOptions, export
from kerasfold.targets.mps.entries import emit
from kerasfold.targets.mps.read import DECODERS
from kerasfold.targets.mps.schema import schema, validate_manifest
from kerasfold.targets.mps.writer import write_export
from models import small

from conftest import ROOT, copy_tree, read_manifest, snapshot
from test_registries import SAMPLES, _lowered


def _valid(out):
    """The manifest in ``out`` passes jsonschema itself and kerasfold's own checks."""
    import jsonschema
    manifest = read_manifest(out)
    jsonschema.Draft202012Validator(schema()).validate(manifest)
    validate_manifest(manifest, out)
    return manifest


def test_schema_is_a_draft_2020_12_schema():
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_knows_every_entry_type():
    types = schema()["$defs"]["entry"]["properties"]["type"]["enum"]
    assert sorted(types) == sorted(DECODERS)


def test_tiny_yolo_exports_validate(tiny_yolo_exports):
    for out in tiny_yolo_exports.values():
        assert [e["type"] for e in _valid(out)["layers"]].count("conv2d") == 9


def test_float16_export_validates(small_model, tmp_path):
    _, path = small_model(small.conv_bn_act, branch=True)
    export(path, tmp_path / "half", ExportOptions(dtype="float16"))
    manifest = _valid(tmp_path / "half")
    assert manifest["dtype"] == "float16" and manifest["layers"][0]["weights"]["dtype"] == "float16"


@pytest.mark.parametrize("builder, options", [
    (small.conv_bn_act, {"branch": True, "conv_is_output": True, "act": "relu6"}),
    (small.shared_conv, {}), (small.windows, {}), (small.sequential, {}), (small.conv1d_bn, {}),
    (small.dropouts, {}), (small.bilinear, {}),
    (small.named, {"names": ("Conv", "conv", "..", ".", "café", "a.b")}),
], ids=lambda v: getattr(v, "__name__", ""))
def test_small_networks_validate(small_model, tmp_path, builder, options):
    _, path = small_model(builder, **options)
    for fold in (True, False):
        out = tmp_path / f"fold-{fold}"
        export(path, out, ExportOptions(fold=fold))
        _valid(out)


def entry_sample(class_name):
    """A graph of one layer of ``class_name`` (its registry sample), passes run; the Dropout
    sample, which the passes would remove, replaced by an opaque layer."""
    (op, shape), shapes = _lowered(class_name)
    graph = Graph(inputs={f"x{k}": s for k, s in enumerate(shapes)}, nodes={}, outputs=["n"],
                  source=SourceInfo("m.h5", "0" * 64, "3", "keras"))
    graph.nodes["n"] = Node(name="n", op=op, inputs=list(graph.inputs), shape=shape)
    if class_name == "Dropout":
        graph.nodes["n"] = Node(name="n", op=ops.Opaque(class_name="Mystery", config={"k": 1}),
                                inputs=["x0"], shape=shape)
    run_passes(graph)
    return graph


def test_every_entry_type_validates(tmp_path):
    """One sample per Keras class the registry knows (the Dropout sample, which the passes remove,
    replaced by an opaque layer), in float32 and float16: written, then valid; every type written."""
    written = set()
    for i, class_name in enumerate(sorted(SAMPLES)):
        graph = entry_sample(class_name)
        out = tmp_path / f"e{i}"
        for dtype in ("float32", "float16"):
            written |= {e["type"] for e in write_export(out, graph, emit(graph, dtype), dtype=dtype)["layers"]}
            _valid(out)
    assert written == set(DECODERS)


# -- refusals: the verifier and an export replacing OUT, in subprocesses run side by side ----------

def _set(path, value):
    def damage(m):
        *keys, last = path
        target = m
        for k in keys:
            target = target[k]
        target[last] = value
        return m
    return damage


def _newline_name(m):
    m["layers"][0]["name"] = m["layers"][1]["name"] = "conv\nevil\u2028name"
    m["layers"][1]["inputs"] = ["conv\nevil\u2028name"]
    return m


def _link_outside(m, out):
    secret = out.parent / "secret.bin"
    secret.write_bytes((out / m["layers"][0]["weights"]["file"]).read_bytes())
    (out / "evil.bin").symlink_to(secret)
    m["layers"][0]["weights"]["file"] = "evil.bin"
    return m


# case -> (damage(manifest[, out]) -> manifest or raw text, words the error line must hold)
CASES = {
    "json_list": (lambda m: [m], "expected object, received array"),
    "layers_int": (lambda m: {"format": "kerasfold.metal", "layers": [1]}, "expected field 'version'"),
    "layers_int_v1": (lambda m: {**m, "layers": [1]}, "layers[0]: expected object, received integer 1"),
    "dotdot_file": (_set(["layers", 0, "weights", "file"], "../../etc/hostname"), "layers[0].weights.file"),
    "absolute_file": (_set(["layers", 0, "weights", "file"], "/etc/hostname"), "layers[0].weights.file"),
    "symlink_outside": (_link_outside, "a link leading outside"),
    "missing_field": (lambda m: {k: v for k, v in m.items() if k != "outputs"}, "expected field 'outputs'"),
    "shape_string": (_set(["layers", 0, "weights", "shape"], "8,3,3,3"), "layers[0].weights.shape: expected array"),
    "duplicate_name": (_set(["layers", 1, "name"], "conv"), "layers[1].name"),
    "unknown_input": (_set(["layers", 1, "inputs"], ["nowhere"]), "received 'nowhere'"),
    "invalid_json": (lambda m: '{"format": "kerasfold.metal", ', "invalid JSON"),
    "newline_name": (_newline_name, "conv\\nevil\\u2028name"),
    "version_2": (_set(["version"], 2), "version: expected 1, received integer 2"),
    # integers are JSON integers, and sizes are bounded (fuzzing found each of these crashing)
    "shape_1e308": (_set(["layers", 0, "weights", "shape", 0], 1e308), "layers[0].weights.shape[0]"),
    "pad_float": (_set(["layers", 0, "pad"], [1.0, 1, 1, 1]), "layers[0].pad[0]"),
    "pad_huge": (_set(["layers", 0, "pad"], [1, 1, 1, 10 ** 9]), "layers[0].pad[3]"),
    "weights_rank_2": (_set(["layers", 0, "weights", "shape"], [8, 27]), "layers[0].weights.shape"),
}


def _damaged(small_export, root, case):
    out = copy_tree(small_export, root / case / "out")
    damage, _ = CASES[case]
    manifest = read_manifest(out)
    manifest = damage(manifest, out) if damage is _link_outside else damage(manifest)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest, indent=1)
    (out / "manifest.json").write_text(text, encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def refusals(small_model, small_export, tmp_path_factory):
    """Every case through both command lines at once: case -> [(proc, stderr, out, before)]."""
    _, model = small_model(small.conv_bn_act)
    root = tmp_path_factory.mktemp("refusals")
    runs = []
    for case in CASES:
        out = _damaged(small_export, root, case)
        before = snapshot(out)
        for module in ("kerasfold.verify", "kerasfold.yolo2metal"):
            proc = subprocess.Popen([sys.executable, "-m", module, str(model), str(out)], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            runs.append((case, module, proc, out, before))
    results = {}
    for case, module, proc, out, before in runs:
        _, err = proc.communicate(timeout=120)
        results.setdefault(case, []).append((module, proc.returncode, err, out, before))
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_manifest_is_refused(refusals, case):
    for module, code, err, out, before in refusals[case]:
        lines = err.strip().splitlines()
        assert code == 2, (module, err)
        assert len(lines) == 1 and "Traceback" not in err, (module, err)
        assert str(out) in lines[0] and CASES[case][1] in lines[0], (module, lines[0])
        assert snapshot(out) == before, module


def test_messages_name_the_path_and_stay_on_one_line(small_export, tmp_path):
    from kerasfold.targets.mps.read import load_export
    out = _damaged(small_export, tmp_path, "newline_name")
    with pytest.raises(ExportError) as info:
        load_export(out)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and "manifest.json: layers[1].name: expected" in text
    assert info.value.file == str(out)


def test_plain_export_does_not_import_jsonschema(small_model, tmp_path):
    """jsonschema is imported when a manifest is read, not by an export into a new OUT."""
    _, model = small_model(small.conv_bn_act)
    code = ("import sys\nfrom kerasfold.pipeline import export\n"
            f"export({str(model)!r}, {str(tmp_path / 'new')!r})\n"
            "print('jsonschema' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    assert np.fromfile(tmp_path / "new" / "conv_W.bin", "<f4").size > 0
