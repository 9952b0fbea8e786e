# micromono's single entry point. Every target installs what it needs first.
#   make run      build the example app and serve it (micromono serve services.toml)
#   make test     build everything and run the test suite
#   make check    ruff + mypy --strict
#   make bench    the benchmarks in benches/ (prints ratios; see benches/RESULTS.md)

PYTHON3 ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps examples run test check bench clean

install: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	$(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

examples: install
	$(MAKE) -C examples PYTHON=$(PY)

run: examples
	$(PY) -m micromono serve services.toml

test: examples
	$(PY) -m pytest -q

check: install
	$(PY) -m ruff check micromono tests benches
	$(PY) -m mypy

bench: examples
	$(PY) benches/bench_call.py
	$(PY) benches/bench_ingress.py
	$(PY) benches/bench_reload.py
	$(PY) benches/bench_isolation.py

clean:
	$(MAKE) -C examples clean
	rm -rf $(VENV) .micromono .pytest_cache .mypy_cache .ruff_cache
