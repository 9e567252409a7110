"""export/verification.ipynb: stored without outputs, its parameters cell tagged, and executed
headless (nbclient, this interpreter's ipykernel) on the demo model with everything written under
tmp_path: no cell errors, both checks pass for both exports, four figures, nothing on stderr."""
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from models import small

from conftest import ROOT

NOTEBOOK = ROOT / "export" / "verification.ipynb"


def test_stored_without_outputs_and_parameters_tagged():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 8
    assert [c.source.splitlines()[0] for c in code if c.outputs or c.execution_count is not None] == []
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]          # papermill injects after it
    assert "model = None" in tagged[0].source and "out = None" in tagged[0].source
    assert nb.metadata.kernelspec.name == "python3"


def execute(tmp, model=None):
    """The notebook run as Jupyter would (kernel started in export/), exporting into ``tmp``, with
    one extra cell printing the kernel's interpreter and kerasfold: (notebook, seconds)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys, kerasfold\nprint(sys.executable)\n"
                                              "print(kerasfold.__file__)"))
    with pytest.MonkeyPatch.context() as env:
        # The venv's own kernelspec first (JUPYTER_PATH outranks a user's kernels; jupyter_client
        # runs a spec's "python" as sys.executable); the export (and the demo model) under tmp.
        env.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
        env.setenv("JUPYTER_PLATFORM_DIRS", "1")
        env.setenv("KERASFOLD_OUT", str(tmp / "metal"))
        if model is None:
            env.delenv("KERASFOLD_MODEL", raising=False)
        else:
            env.setenv("KERASFOLD_MODEL", str(model))
        start = time.perf_counter()
        NotebookClient(nb, kernel_name="python3", timeout=600,
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
        return nb, time.perf_counter() - start


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run once on the demo model: (notebook, tmp, seconds)."""
    tmp = tmp_path_factory.mktemp("notebook")
    build = ROOT / "build" / "verification"
    existed = build.exists()
    nb, seconds = execute(tmp)
    assert build.exists() == existed                        # nothing written into the tree
    return nb, tmp, seconds


def _outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == kind]


def test_runs_without_errors_on_this_interpreter_and_checkout(executed):
    nb, _, _ = executed
    assert _outputs(nb, "error") == []
    assert [o.text for o in _outputs(nb, "stream") if o.name == "stderr"] == []       # quiet
    executable, module = nb.cells[-1].outputs[0].text.splitlines()
    assert Path(executable) == Path(sys.executable)
    assert Path(module).resolve().is_relative_to(ROOT.resolve())


def test_both_exports_pass_both_checks_and_files_are_under_tmp(executed):
    nb, tmp, _ = executed
    text = "".join(o.text for o in _outputs(nb, "stream"))
    for label, folder in (("float32", "metal"), ("float16", "metal-float16")):
        block = text.split(f"tiny-yolo-voc.h5 -> {folder} ({label} weights)\n")[1]
        lines = block.splitlines()[:2]
        assert lines[0].startswith("  parity PASS:") and lines[1].startswith("  reference PASS:"), block
        assert f"tolerance {1e-5 if label == 'float32' else 0.01:g}" in lines[0]
        assert (tmp / folder / "manifest.json").is_file()
    assert "FAIL" not in text
    assert (tmp / "tiny-yolo-voc.h5").is_file()
    assert "conv2d_1         conv2d      batch_normalization_1" in text           # the layer table
    assert "tiny-yolo-voc.h5: both checks pass for the float32 and float16 export" in text


def _figures(nb):
    return [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


def test_four_figures(executed):
    nb, _, seconds = executed
    figures = _figures(nb)
    assert len(figures) == 4
    assert all(len(f.data["image/png"]) > 20_000 for f in figures)          # base64 PNGs with content
    print(f"notebook executed in {seconds:.1f} s")


def test_model_from_the_environment(small_model, tmp_path):
    """KERASFOLD_MODEL overrides the parameter: another network (depthwise, residual, a vector
    output), the same report."""
    _, model = small_model(small.mixed)
    nb, _ = execute(tmp_path, model)
    assert _outputs(nb, "error") == [] and len(_figures(nb)) == 4
    text = "".join(o.text for o in _outputs(nb, "stream"))
    assert f"{model.name} -> metal (float32 weights)\n  parity PASS" in text
    assert f"{model.name} -> metal-float16 (float16 weights)\n  parity PASS" in text
    assert "tiny-yolo" not in text and not (tmp_path / "tiny-yolo-voc.h5").exists()
    assert (tmp_path / "metal" / "manifest.json").is_file()
