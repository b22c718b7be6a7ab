# twiddle: every target sets up .venv first (torch==2.13.0 is installed before the package so that pip
# takes the local CPU build instead of resolving a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.twiddle-installed

.PHONY: setup demo test test-all bench lint docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/twiddle demo

# two pytest workers share the cores: OpenMP threads that sleep instead of spinning while they wait keep the
# workers' LAPACK calls (SVDs) from stalling each other (tests/test_factorize*.py: 87 s -> 60 s on 2 cores)
PYTEST = OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2

test: $(STAMP)
	$(PYTEST)

test-all: $(STAMP)
	$(PYTEST) -m ''

bench: $(STAMP)
	$(PY) benchmarks/multiply.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# API reference from the docstrings (HTML, docs/api/index.html); the tutorial is docs/tutorial.md
docs: $(STAMP)
	$(PY) -m pdoc -o docs/api twiddle twiddle.benchmark twiddle.experiments twiddle.factorize.targets twiddle.factorize.recover \
		twiddle.factorize.lift twiddle.ops.reference

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
