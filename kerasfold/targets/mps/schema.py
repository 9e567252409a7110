"""manifest.json checked before anything reads it: the JSON Schema shipped with the package
(``kerasfold/manifest.schema.json``), then what a schema cannot say: layer names unique, ``inputs``
naming model inputs or earlier layers, ``outputs`` naming layers (or model inputs), and every
tensor file inside OUT, symbolic links resolved.

    manifest = read_manifest(out)             # parsed and validated, or ExportError (exit 2)

jsonschema is imported on the first validation only (~0.1 s), not by an export into a new OUT.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...errors import ExportError, UnsupportedLayer

MANIFEST = "manifest.json"
SCHEMA = "manifest.schema.json"
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
               float: "number", type(None): "null"}


@lru_cache(maxsize=None)
def schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), read once from the installed package."""
    from importlib import resources         # ~10 ms: only a validation needs it, not an export
    return json.loads(resources.files("kerasfold").joinpath(SCHEMA).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _validator() -> Any:
    import jsonschema                       # lazily: only readers of a manifest pay its import
    # "integer" means a JSON integer: JSON Schema would also take 1e308 or 2.0, which no size is
    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    strict = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker)
    return strict(schema())


def read_manifest(root: str | Path) -> dict[str, Any]:
    """``root``/manifest.json parsed and validated (:func:`validate_manifest`)."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except OSError as err:
        raise ExportError(f"expected an export with {MANIFEST}, received {err.strerror or err}",
                          file=str(root)) from err
    except (ValueError, RecursionError) as err:      # JSONDecodeError, UnicodeDecodeError
        raise ExportError(f"expected {MANIFEST} as UTF-8 JSON, received invalid JSON ({err})",
                          file=str(root)) from err
    validate_manifest(manifest, root)
    return manifest


def validate_manifest(manifest: Any, root: str | Path) -> None:
    """Raise :class:`ExportError` (one line: the folder, the JSON path of the first error, what
    was expected and received) unless ``manifest`` is a valid manifest of the export in ``root``."""
    from jsonschema.exceptions import best_match
    error = best_match(_validator().iter_errors(manifest))
    if error is not None:
        path = list(error.absolute_path)
        layer = _layer_name(manifest, path)
        if path[:1] == ["layers"] and path[2:] == ["type"] and error.validator == "enum":
            raise UnsupportedLayer(f"{MANIFEST}: {_where(path)}expected a layer type of FORMAT.md "
                                   f"({', '.join(error.validator_value)}), received {_short(error.instance)}",
                                   file=str(root), layer=layer)
        raise ExportError(f"{MANIFEST}: {_where(path)}{_describe(error, path)}", file=str(root), layer=layer)
    _check_graph(manifest, root)
    _check_files(manifest, Path(root))


def _layer_name(manifest: Any, path: list[Any]) -> str | None:
    """The name of the layer ``path`` points into, when it has one."""
    if len(path) < 2 or path[0] != "layers" or not isinstance(path[1], int):
        return None
    entry = manifest["layers"][path[1]]
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and name else None


def _fail(root: str | Path, where: str, message: str, layer: str | None = None) -> ExportError:
    return ExportError(f"{MANIFEST}: {where}: {message}", file=str(root), layer=layer or None)


def _check_graph(manifest: dict[str, Any], root: str | Path) -> None:
    seen: set[str] = set()
    for i, spec in enumerate(manifest["inputs"]):
        if spec["name"] in seen:
            raise _fail(root, f"inputs[{i}].name", f"expected a unique name, received {_short(spec['name'])} twice")
        seen.add(spec["name"])
    for i, entry in enumerate(manifest["layers"]):
        for j, src in enumerate(entry["inputs"]):
            if src not in seen:
                raise _fail(root, f"layers[{i}].inputs[{j}]", "expected a model input or an earlier layer, "
                            f"received {_short(src)}", entry["name"])
        if entry["name"] in seen:
            raise _fail(root, f"layers[{i}].name", "expected a name no model input or earlier layer has, "
                        f"received {_short(entry['name'])}", entry["name"])
        seen.add(entry["name"])
    for i, name in enumerate(manifest["outputs"]):
        if name not in seen:
            raise _fail(root, f"outputs[{i}]", f"expected a layer or a model input, received {_short(name)}")


def _check_files(manifest: dict[str, Any], root: Path) -> None:
    """Each tensor file, links resolved, inside OUT (the schema already made it a plain name)."""
    base = root.resolve()
    for i, entry in enumerate(manifest["layers"]):
        for key in ("weights", "bias"):
            if key not in entry:
                continue
            name = entry[key]["file"]
            try:
                target = (base / name).resolve()
            except (OSError, RuntimeError):           # a symlink loop
                target = None
            if target is None or target == base or not target.is_relative_to(base):
                raise _fail(root, f"layers[{i}].{key}.file", "expected a file inside OUT, received "
                            f"{_short(name)}, a link leading outside it", entry["name"])


def _where(path: list[Any]) -> str:
    """``["layers", 3, "weights", "file"]`` -> ``"layers[3].weights.file: "``; root: ``""``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).isidentifier():
            text += f".{part}" if text else str(part)
        else:
            text += f"[{part!r}]"
    return f"{text}: " if text else ""


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` (control characters escaped: one line), cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _received(value: Any) -> str:
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    return f"{kind} {_short(value)}"


def _describe(error: Any, path: list[Any]) -> str:
    """"expected X, received Y" for one jsonschema error (the subschema's description when it has one)."""
    keyword, want, got, sub = error.validator, error.validator_value, error.instance, error.schema
    description = sub.get("description") if isinstance(sub, dict) and path else None
    if keyword == "required":
        missing = next((k for k in want if k not in got), want[0])
        return f"expected field {missing!r}, received an object without it"
    if keyword == "const":
        return f"expected {want!r}, received {_received(got)}"
    if keyword == "enum":
        return f"expected one of {', '.join(map(repr, want))}, received {_received(got)}"
    if description:
        return f"expected {description}, received {_received(got)}"
    if keyword == "type":
        return f"expected {' or '.join(want) if isinstance(want, list) else want}, received {_received(got)}"
    if keyword in ("minimum", "maximum"):
        return f"expected {'at least' if keyword == 'minimum' else 'at most'} {want}, received {_received(got)}"
    if keyword in ("minItems", "maxItems"):
        return f"expected {'at least' if keyword == 'minItems' else 'at most'} {want} items, received {len(got)}"
    return f"expected {keyword} {_short(want)}, received {_received(got)}"
