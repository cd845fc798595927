# plmrec: `make run` sets up and runs the main job; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup run test test-fast lint compile clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a plain `torch` requirement would pull CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test,text,recsys,search,dask,serve,cluster,tracking-server]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/plmrec run

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not integration"

compile: setup
	$(VENV)/bin/plmrec compile -o pipeline.yaml

clean:
	rm -rf runs mlartifacts mlflow.db pipeline.yaml data/raw.parquet data/prepared.parquet models reports metrics
