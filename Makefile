# Two commands do all the set-up on a fresh clone:
#   make demo   build tiny-yolo-voc, export it, verify it, print the summary
#   make test   run the tests
# Each creates .venv with the pinned dependencies of requirements.lock first (once).
# make notebook renders export/verification.ipynb, executed, to build/verification.html.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kerasfold-installed
DEMO   ?= build/demo

.PHONY: demo test bench notebook clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m export.demo $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/export_speed.py

# The venv's own kernel (JUPYTER_PATH outranks a user's kernelspecs); the notebook exports into
# build/verification/ unless KERASFOLD_OUT says otherwise, and takes KERASFOLD_MODEL.
notebook: $(STAMP)
	JUPYTER_PATH=$(abspath $(VENV))/share/jupyter JUPYTER_PLATFORM_DIRS=1 $(PY) -m nbconvert --to html \
	  --execute --ExecutePreprocessor.timeout=600 --output-dir build --output verification \
	  export/verification.ipynb

clean:
	rm -rf $(VENV) build
