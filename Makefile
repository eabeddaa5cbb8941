# The two commands of the README: `make demo` (main job) and `make test` (what CI runs).
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test lint bench

# torch is pinned first so that no other (CUDA) build is pulled in by the project's torch range.
install:
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"

# DEMO_ARGS passes options through, e.g. `make demo DEMO_ARGS="--iters 100 --out /tmp/demo"`.
demo: install
	$(PYTHON) -m multibox demo $(DEMO_ARGS)

test: install
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks

bench:
	$(PYTHON) benchmarks/bench_core.py
