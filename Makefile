# The two set-up commands of the README: `make demo` (offline default battle) and `make test`.
VENV ?= .venv
BOB := $(VENV)/bin/bob
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: setup setup-test demo test report bench

setup:
	bash tools/setup.sh

setup-test:
	bash tools/setup.sh --test

demo: setup
	$(BOB) run params/demo.yaml --workers 2 --build

test: setup-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The report book (offline): site/_build/html/index.html (site/index.html opens it); exits 1 if a notebook failed.
report: setup
	$(BOB) report --results results/results.parquet --out site --jobs 2

bench: setup
	$(PY) benchmarks/feature_throughput.py
