# Two commands on a fresh clone: `make demo` and `make test`.
# `make demo` installs only what the demo needs (the package and the plot extra);
# `make test` (and lint, typecheck, bench) install the test and dev extras as well.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test lint typecheck pytest bench clean docs

$(BIN)/python:
	@echo "make: creating the virtual environment $(VENV) (python -m venv) ..."
	$(PYTHON) -m venv $(VENV)

# the demo: powergrid itself and matplotlib for the plot
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@echo "make: installing what the demo needs into $(VENV): powergrid and its plot extra (matplotlib) ..."
	$(BIN)/python -m pip install --quiet -e '.[plot]'
	touch $(DEMO_STAMP)

# everything else: pytest, hypothesis (test), ruff, mypy, import-linter (dev)
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "make: installing the test and dev tools into $(VENV): powergrid with its test, dev and plot extras (pytest, hypothesis, prometheus_client, ruff, mypy, import-linter, matplotlib) ..."
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev,plot]'
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m powergrid demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The API reference from the docstrings (docs/reference); any warning fails the build.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs/reference build/docs
	@echo "API reference: build/docs/index.html"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py $(if $(JSON),--json,)

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
