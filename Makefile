PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint format clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(BIN)/uv: $(BIN)/python constraints.txt
	$(BIN)/pip install -q -c constraints.txt uv

# uv installs: it unpacks the 5.5 GB of wheels (PyTorch's CUDA build and its nvidia-* wheels) in parallel and
# links them from its cache on a rerun, where pip unpacks them one by one every time. It takes its package
# sources and caps from pip's configuration (scripts/pip_sources.py), and pip does the install when uv fails.
$(STAMP): $(BIN)/uv pyproject.toml constraints.txt
	@# onnxruntime and onnxruntime-gpu install one module and cannot share a venv: a venv made before the
	@# base install took onnxruntime-gpu holds the CPU wheel; remove both, the install below takes the right one.
	@if $(BIN)/python -c 'import importlib.metadata as m; m.version("onnxruntime")' 2>/dev/null; then \
		$(BIN)/pip uninstall -q -y onnxruntime onnxruntime-gpu; fi
	$(BIN)/uv pip install -q --python $(BIN)/python $$($(BIN)/python scripts/pip_sources.py) \
		-c constraints.txt -e '.[train,plots,serve,dev]' \
	|| { echo "uv could not install: installing with pip"; \
		$(BIN)/pip install -q --no-compile -c constraints.txt -e '.[train,plots,serve,dev]'; }
	@# Byte-compile on every core (neither installer above does): files that do not compile (torch ships
	@# Python-3.12-only test files) are skipped, as pip skips them. The packages' own test folders (a sixth of
	@# the code) are left out: nothing imports them (one that is imported gets compiled on its first import).
	$(BIN)/python -m compileall -qq -j0 -x '/tests?/' $(VENV)/lib || true
	touch $(STAMP)

install: $(STAMP)

# Lint, then the test suite on every core. The runtime-only install proof (scripts/check_runtime_install.sh:
# fresh venv from the wheel) is one of the tests (tests/test_install_runtime.py), so it overlaps the rest.
# --dist loadfile keeps each file on one worker (its module fixtures are built once); files are handed out
# longest first (tests/conftest.py orders them; --no-loadscope-reorder keeps that order); --durations
# prints the slowest tests; pytest's summary line closes the output. PYTHONDONTWRITEBYTECODE is cleared
# for the run: the suite starts about a hundred Python processes, and with it set each one compiles the
# package's modules again (and each worker re-rewrites the test files' asserts); __pycache__ is git-ignored.
test: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=15

# `make demo` is re-runnable: it replaces the previous runs/demo (smatch itself never does without --force).
# The PF-WILLOW evaluations run when the benchmark subset is at $(WILLOW) (`make demo WILLOW=DIR`).
WILLOW ?= ../shared/data/pf-willow
demo: $(STAMP)
	$(BIN)/smatch demo --force $(if $(wildcard $(WILLOW)/PF-dataset),--willow $(WILLOW))

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs build *.egg-info
