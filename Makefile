# The two README commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the dependencies change. The Triton engine's own small environment
# (NumPy 1 and the bundled tritonserver, beside this one: serving/triton_env.py) comes with it.
# Bytecode is compiled once, after the install, on every core (pip's own compile is serial):
# where PYTHONDONTWRITEBYTECODE is set, as on these machines, Python never writes it on import,
# and every process (each test worker, TorchServe worker, CLI call) would compile torch again.
# A few files are for other Pythons (torch ships one in 3.12 syntax, never imported here).
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev]'
	$(BIN)/python -m distillserve.serving.triton_env
	$(BIN)/python -m compileall -qq -j 0 $(VENV) || echo "(files for other Pythons skipped)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/distillserve demo

# The int8 tests run twice: with this CPU's best kernels, then with the AVX2 ones (as on a CPU
# without AVX-512/VNNI), so that a green run does not depend on the machine CI lands on.
AVX2_KERNELS := ATEN_CPU_CAPABILITY=avx2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2

# Two pytest-xdist workers, a test file per worker at a time (a file's module-scoped server stays
# on one worker), handed out in the order tests/conftest.py sorts them (the CI build's first
# user, then longest first); `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PYTEST) --durations=15
	$(AVX2_KERNELS) $(PYTEST) -m int8

# The tests that neither train a model nor start a TorchServe (seconds, not minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# Full benchmark (about 25 min on 2 cores): docs/bench/<date>.json, plots, README section; then
# the text section (about 27 min; 40 the first time, when it trains its BERT-Small teacher):
# docs/bench/<date>-text.json and .md; then the engines section (about 14 min):
# docs/bench/<date>-engines.json and .md.
bench: $(STAMP)
	$(BIN)/distillserve bench --readme README.md
	$(BIN)/distillserve bench --text
	$(BIN)/distillserve bench --engines

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build model_store/*.mar
