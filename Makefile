# The two README commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the dependencies change.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/distillserve demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Full benchmark (about 25 min on 2 cores): bench/results/<date>.json, plots, README section.
bench: $(STAMP)
	$(BIN)/distillserve bench --readme README.md

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build model_store/*.mar
