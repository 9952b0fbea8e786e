# micromono's single entry point. Every target installs what it needs first.
#   make run      build the example app and serve it (micromono serve services.toml)
#   make test     build everything, run `make check`, then the test suite on both paths (what CI runs)
#   make check    ruff (lint and format) + mypy --strict
#   make bench    the benchmarks in benches/ (prints ratios; see benches/RESULTS.md)
#   make bench-peers  only bench_peers: micromono against workerd (from npm) and two-process Python peers

PYTHON3 ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.installed
# The optional compiled hot path (scripts/build_compiled.py): rebuilt whenever one of its sources changes.
HOTPATH := $(addprefix micromono/,channels.py service.py registry.py runs.py router.py ingress/__init__.py ingress/http.py ingress/heads.py ingress/routes.py ingress/responses.py ingress/websocket.py)
COMPILED := micromono/_compiled/sources.sha256
WORKERD := benches/peers/workerd
WORKERD_STAMP := $(WORKERD)/node_modules/.installed

.PHONY: install system-deps examples run test check bench bench-peers clean

install: $(STAMP) $(COMPILED)

system-deps:
	bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml setup.py scripts/install-system-deps.sh micromono/_speedups.c
	bash scripts/install-system-deps.sh
	$(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# Optional like micromono/_speedups.c: without a C compiler micromono runs in pure Python, with a warning (`make test`
# then fails its compiled-path run, which requires both parts).
$(COMPILED): $(STAMP) $(HOTPATH) scripts/build_compiled.py
	-$(PY) scripts/build_compiled.py --quiet

examples: install
	$(MAKE) -C examples PYTHON=$(PY)

run: examples
	$(PY) -m micromono serve services.toml

# Lint, format and types first (`check`), then the suite twice: in pure Python (forced), then on the compiled path
# (micromono/_speedups.c and the mypyc-compiled hot-path modules, used when built and current), which must give the
# same results. `--require-path` (tests/conftest.py) fails a run at once if micromono does not run the path it names.
test: examples check
	MICROMONO_PURE=1 $(PY) -m pytest -q --require-path=pure
	MICROMONO_PURE=0 $(PY) -m pytest -q --require-path=compiled

check: install
	$(PY) -m ruff check setup.py micromono tests benches scripts sdk
	$(PY) -m ruff format --check setup.py micromono tests benches scripts sdk
	$(PY) -m mypy

# workerd for bench_peers (Node.js and npm are installed first if there is no npm): the version package.json pins,
# exactly as package-lock.json has it.
$(WORKERD_STAMP): $(WORKERD)/package.json $(WORKERD)/package-lock.json
	bash scripts/install-system-deps.sh bench
	@command -v npm >/dev/null || { echo "micromono: bench_peers needs Node.js and npm for workerd: install them, or run the other benches one by one (see benches/README.md)" >&2; exit 1; }
	npm ci --prefix $(WORKERD)
	touch $@

bench: examples $(WORKERD_STAMP)
	bash scripts/install-system-deps.sh bench
	$(PY) benches/bench_call.py
	$(PY) benches/bench_ingress.py
	$(PY) benches/bench_instructions.py
	$(PY) benches/bench_reload.py
	$(PY) benches/bench_isolation.py
	$(PY) benches/bench_peers.py
	$(PY) benches/bench_density.py
	$(PY) benches/bench_actors.py
	$(PY) benches/bench_ws.py
	$(PY) benches/bench_sdks.py
	$(PY) benches/bench_console.py

bench-peers: examples $(WORKERD_STAMP)
	$(PY) benches/bench_peers.py

clean:
	$(MAKE) -C examples clean
	rm -rf $(VENV) .micromono .pytest_cache .mypy_cache .ruff_cache $(WORKERD)/node_modules sdk/assemblyscript/node_modules micromono/*.so micromono/_compiled build
