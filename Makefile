PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint format clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	@# onnxruntime and onnxruntime-gpu install one module and cannot share a venv: a venv made before the
	@# base install took onnxruntime-gpu holds the CPU wheel; remove both, the install below takes the right one.
	@if $(BIN)/python -c 'import importlib.metadata as m; m.version("onnxruntime")' 2>/dev/null; then \
		$(BIN)/pip uninstall -q -y onnxruntime onnxruntime-gpu; fi
	$(BIN)/pip install -q -c constraints.txt -e '.[train,plots,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

# Lint, then the runtime-only install proof (fresh venv from the wheel), then the test suite (last, so
# its summary line closes the output).
test: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	bash scripts/check_runtime_install.sh
	$(BIN)/python -m pytest -q

# `make demo` is re-runnable: it replaces the previous runs/demo (smatch itself never does without --force).
demo: $(STAMP)
	$(BIN)/smatch demo --force

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs build *.egg-info
