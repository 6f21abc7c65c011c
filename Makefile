# The two set-up commands of the README: `make demo` (offline default battle) and `make test`.
VENV ?= .venv
BOB := $(VENV)/bin/bob
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: setup setup-test demo test test-slurm report bench profiles

setup:
	bash tools/setup.sh

setup-test:
	bash tools/setup.sh --test

demo: setup
	$(BOB) run params/demo.yaml --workers 2 --build

test: setup-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The Slurm integration tests (tests/slurm, not part of `make test`) on a one-node cluster started for them in a
# temporary folder: installs slurm-wlm and munge from Debian when missing (root), stops every daemon afterwards.
test-slurm: setup-test
	$(PY) tools/slurm/cluster.py run -- $(PY) -m pytest -q tests/slurm $(PYTEST_ARGS)

# The report book (offline): site/_build/html/index.html (site/index.html opens it); exits 1 if a notebook failed.
report: setup
	$(BOB) report --results results/results.parquet --out site --jobs 2

bench: setup
	$(PY) benchmarks/feature_throughput.py

# The per-image profiles `bob plan` reads for the shipped suites (bobkit/rehearsal/shipped_profiles.json): rerun
# after changing a suite's backbones, the counting code or the pinned torch/timm (the plan test says when).
profiles: setup
	$(PY) tools/ship_profiles.py
