"""The manifest's generated check (``manifest_check.py``, from ``schema_codegen``): up to date with
the schema, never looser than jsonschema, and what spares an export over a previous OUT the
import of jsonschema."""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kerasfold.targets.mps import schema_codegen
from kerasfold.targets.mps.entries import emit
from kerasfold.targets.mps.schema import _passes_generated_check, _validator, read_manifest, schema
from kerasfold.targets.mps.writer import write_export

from conftest import ROOT, copy_tree
from test_registries import SAMPLES
from test_schema import entry_sample


def test_generated_check_is_up_to_date():
    assert schema_codegen.GENERATED.read_text(encoding="utf-8") == schema_codegen.generate(), (
        "manifest_check.py is stale: run python -m kerasfold.targets.mps.schema_codegen")


def test_draft7_moves_ref_siblings_into_all_of():
    given_schema = {"$defs": {"t": {"type": "object"}},
                    "properties": {"b": {"$ref": "#/$defs/t", "required": ["x"]}, "w": {"$ref": "#/$defs/t"}}}
    converted = schema_codegen.draft7(given_schema)
    assert converted["properties"]["b"] == {"allOf": [{"$ref": "#/$defs/t"}, {"required": ["x"]}]}
    assert converted["properties"]["w"] == {"$ref": "#/$defs/t"}
    assert converted["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize("bad", [
    {"additionalProperties": False},                       # a keyword not vouched for
    {"items": [{"type": "integer"}]},                      # draft-07's tuple form (prefixItems in 2020-12)
    {"properties": {"a": {"$ref": "https://example.com/s.json"}}},
    {"unevaluatedProperties": False},
])
def test_draft7_refuses_what_it_cannot_vouch_for(bad):
    with pytest.raises(ValueError):
        schema_codegen.draft7(bad)


def test_the_shipped_schema_converts():
    schema_codegen.draft7(schema())        # every keyword of the schema is one SAME_IN_DRAFT7 knows


@pytest.fixture(scope="module")
def manifests(tmp_path_factory, small_export, tiny_yolo_export):
    """Valid manifests: tiny-yolo-voc's, a small export's, and one entry of each type (float32 and
    float16), as texts."""
    root = tmp_path_factory.mktemp("generated")
    texts = [(out / "manifest.json").read_text() for out in (small_export, tiny_yolo_export)]
    for i, class_name in enumerate(sorted(SAMPLES)):
        graph = entry_sample(class_name)
        dtype = ("float32", "float16")[i % 2]
        write_export(root / f"e{i}", graph, emit(graph, dtype), dtype=dtype)
        texts.append((root / f"e{i}" / "manifest.json").read_text())
    return texts


def test_generated_check_accepts_valid_manifests(manifests):
    assert len(manifests) > 20
    for text in manifests:
        assert _passes_generated_check(text) and _validator().is_valid(json.loads(text))


@pytest.mark.parametrize("path, value", [
    (["layers", 0, "weights", "shape", 0], 2.0),           # an integer-valued float: no JSON integer
    (["inputs", 0, "shape", 0], 1e308),
    (["layers", 0, "bias", "dtype"], "float16"),           # a sibling of $ref in the schema
    (["layers", 0, "weights", "layout"], "HWIO"),          # inside a $ref's sibling of an if/then
    (["version"], True),                                   # const 1: not the boolean true
])
def test_generated_check_refuses_as_jsonschema_does(manifests, path, value):
    manifest = json.loads(manifests[0])
    target = manifest
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert manifest["layers"][0]["type"] == "conv2d"
    text = json.dumps(manifest)
    assert not _validator().is_valid(json.loads(text))
    assert not _passes_generated_check(text)


def test_generated_check_refuses_a_conv_without_kernel(manifests):
    manifest = json.loads(manifests[0])
    del manifest["layers"][0]["kernel"]                    # required by a $ref's sibling
    assert not _passes_generated_check(json.dumps(manifest))
    assert not _validator().is_valid(manifest)


_KEYS = ["type", "name", "inputs", "weights", "bias", "shape", "dtype", "layout", "file", "sha256",
         "kernel", "strides", "pad", "activation", "alpha", "offset", "scale", "units", "folded", "float16"]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70000) | st.sampled_from([2 ** 31, 0.0, 1.0, 2.0, -1.0, 0.5, 1e308])
    | st.floats(allow_nan=False) | st.sampled_from(["OHWI", "OHW", "OI", "HWC", "float16", "float32", "conv2d",
                                                     "dense", "relu", "leaky_relu", "same", "x", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=3),
                                                                 inner, max_size=3),
    max_leaves=6)


def _mutated(data, manifest):
    """``manifest`` with one value somewhere in it replaced, removed or added to."""
    parent, key = None, None
    node = manifest
    while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 4)) > 0:
        parent = node
        key = data.draw(st.sampled_from(sorted(node)) if isinstance(node, dict) else st.integers(0, len(node) - 1))
        node = node[key]
    action = data.draw(st.sampled_from(["replace", "remove", "add"]))
    if parent is None:
        return data.draw(_JSON) if action == "replace" else manifest
    if action == "replace":
        parent[key] = data.draw(_JSON)
    elif action == "remove":
        del parent[key]
    elif isinstance(node, dict):
        node[data.draw(st.sampled_from(_KEYS))] = data.draw(_JSON)
    elif isinstance(node, list):
        node.append(data.draw(_JSON))
    return manifest


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_generated_check_is_never_looser_than_jsonschema(manifests, data):
    """Damaged manifests: whenever the generated check accepts one, jsonschema accepts it too."""
    text = data.draw(st.sampled_from(manifests))
    for _ in range(data.draw(st.integers(1, 3))):
        text = json.dumps(_mutated(data, json.loads(text)))
    if _passes_generated_check(text):
        assert _validator().is_valid(json.loads(text)), text[:2000]


def test_out_check_over_a_previous_export_leaves_jsonschema_alone(small_export, tmp_path):
    """OUT's check before an export reads the previous manifest with the generated check only;
    a manifest it refuses is still read by jsonschema, for its error line."""
    out = copy_tree(small_export, tmp_path / "out")
    code = ("import sys\nfrom pathlib import Path\nfrom kerasfold.targets.mps.out_dir import check_out_dir\n"
            f"check_out_dir(Path({str(out)!r}))\nprint('jsonschema' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    manifest = read_manifest(out)
    manifest["layers"][0]["weights"]["shape"][0] = 2.0
    (out / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode != 0 and "layers[0].weights.shape[0]" in done.stderr
