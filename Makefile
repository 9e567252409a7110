# Two commands do all the set-up on a fresh clone:
#   make demo   build tiny-yolo-voc, export it, verify it, print the summary
#   make test   run the tests
# Each creates .venv with the pinned dependencies of requirements.lock first (once).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kerasfold-installed
DEMO   ?= build/demo

.PHONY: demo test bench clean

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

clean:
	rm -rf $(VENV) build
