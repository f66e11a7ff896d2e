# PolyServe developer entry points. Everything runs inside .venv, built from pinned constraints.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed

.PHONY: install test unit lint bench demo e2e clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,k8s]'
	touch $(STAMP)

# The whole suite: lint, then every test (the Kubernetes tests say loudly when they had to skip).
test: lint unit

unit: install
	$(PY) -m pytest -q

lint: install
	$(BIN)/ruff check polyserve tests bench
	$(BIN)/ruff format --check polyserve tests bench
	$(BIN)/mypy

bench: install
	$(PY) -m bench

# Until the local fleet exists, the demo is the simulator's quick policy comparison.
demo: install
	$(BIN)/polyserve simulate --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
