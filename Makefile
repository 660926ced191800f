# Two commands do everything on a fresh Debian machine with Python 3.11:
#   make demo   - set up, then run controller + local broker + local agent on a sample video
#   make test   - set up, then run linters, type checks, layer contracts and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_ARGS ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.edgefleet-installed
MODELS_STAMP := $(VENV)/.edgefleet-models

.PHONY: all setup system-packages assets demo test lint models clean

all: test

system-packages:
	@./scripts/system-packages.sh

# the dashboard's front-end libraries, pinned with their sha512 (controller/static/vendor/)
assets:
	@./scripts/fetch-assets.sh

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all]'
	touch $@

$(MODELS_STAMP): $(STAMP)
	$(BIN)/edgefleet models fetch
	touch $@

setup: system-packages assets $(STAMP) $(MODELS_STAMP)

models: $(MODELS_STAMP)

demo: setup
	$(BIN)/edgefleet demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .edgefleet
