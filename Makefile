# micromono's single entry point. Every target installs what it needs first.
#   make run      build the example app and serve it (micromono serve services.toml)
#   make test     build everything and run the test suite
#   make check    ruff + mypy --strict
#   make bench    the benchmarks in benches/ (prints ratios; see benches/RESULTS.md)
#   make bench-peers  only bench_peers: micromono against workerd (from npm) and two-process Python peers

PYTHON3 ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.installed
WORKERD := benches/peers/workerd
WORKERD_STAMP := $(WORKERD)/node_modules/.installed

.PHONY: install system-deps examples run test check bench bench-peers clean

install: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml scripts/install-system-deps.sh micromono/_speedups.c
	bash scripts/install-system-deps.sh
	$(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

examples: install
	$(MAKE) -C examples PYTHON=$(PY)

run: examples
	$(PY) -m micromono serve services.toml

# The suite, then the parts that run guests again with the optional compiled path (micromono/_speedups.c), which
# must give the same results; the pure-Python path stays the default.
test: examples
	$(PY) -m pytest -q
	MICROMONO_SPEEDUPS=1 MICROMONO_REQUIRE_SPEEDUPS=1 $(PY) -m pytest -q tests/test_speedups.py tests/test_engine.py \
		tests/test_router.py tests/test_ingress.py tests/test_hostile.py tests/test_isolation.py tests/test_examples.py

check: install
	$(PY) -m ruff check micromono tests benches
	$(PY) -m mypy

# workerd for bench_peers (needs npm on the PATH): the version package.json pins, exactly as package-lock.json has it.
$(WORKERD_STAMP): $(WORKERD)/package.json $(WORKERD)/package-lock.json
	@command -v npm >/dev/null || { echo "micromono: bench_peers needs Node.js and npm for workerd: install them (Debian: apt-get install nodejs npm), or run the other benches one by one (see benches/README.md)" >&2; exit 1; }
	npm ci --prefix $(WORKERD)
	touch $@

bench: examples $(WORKERD_STAMP)
	$(PY) benches/bench_call.py
	$(PY) benches/bench_ingress.py
	$(PY) benches/bench_reload.py
	$(PY) benches/bench_isolation.py
	$(PY) benches/bench_peers.py
	$(PY) benches/bench_density.py

bench-peers: examples $(WORKERD_STAMP)
	$(PY) benches/bench_peers.py

clean:
	$(MAKE) -C examples clean
	rm -rf $(VENV) .micromono .pytest_cache .mypy_cache .ruff_cache $(WORKERD)/node_modules micromono/*.so build
