#!/usr/bin/env bash
# Installs the Debian packages micromono's build, tests and benchmarks need, only if some are missing.
#   python3-venv            Debian's python3 ships without venv/pip
#   clang lld wasi-libc     the C guests in examples/ (WASI reactor modules)
#   libclang-rt-dev-wasm32  compiler-rt builtins for wasm32 (64-bit integer helpers and the like)
#   wrk                     the ingress benchmark (benches/bench_ingress.py)
#   curl                    the README's examples
#   gcc python3-dev         the optional compiled path (micromono/_speedups.c); python3-dev only for Debian's python3
#   rustc libstd-rust-dev-wasm32  the Rust guests in examples/: Debian's rustc 1.63 and its prebuilt std for
#                           wasm32-unknown-unknown (docs/lang-rust.md says why this and not rustc-web, with which it
#                           conflicts). The Makefile calls /usr/bin/rustc by path: rustup's rustc, often first on PATH,
#                           has no wasm32 std offline. cargo is not needed.
#   xxd                     embeds the web example's page and JS client in examples/web.c (xxd -i)
#   chromium                the browser tests (tests/test_browser.py drive it with Playwright; Playwright's own
#                           browser builds are never downloaded). Its dependencies bring fontconfig and a font.
#   nodejs npm              only when there is no npm: the AssemblyScript compiler for the examples (`make examples`,
#                           so also `make test`, which builds them; examples/Makefile runs npm ci in
#                           sdk/assemblyscript), and workerd for bench_peers
#   prometheus              tests/test_prometheus.py: a real Prometheus server scrapes the daemon and answers queries, and
#                           its promtool checks the /metrics text. The test starts its own prometheus (own config,
#                           storage in a tmp dir, a free port) and never uses a system service; so the package's own
#                           service is kept from starting (policy-rc.d, below) and disabled: on a CI machine or a
#                           laptop it would otherwise sit on 9090 with an unasked-for scraper.
#   systemd                 systemd-analyze, which tests/test_deploy.py runs on deploy/micromono.service (`verify`);
#                           a full Debian install has it, a container image (debian:12) does not. Nothing is started.
#   valgrind                with the argument `bench`: bench_instructions counts instructions under callgrind
# Zig and the Python packages come from PyPI into .venv (see the Makefile).
# Usage: install-system-deps.sh [bench]
set -euo pipefail

packages=(python3-venv clang lld wasi-libc libclang-rt-dev-wasm32 rustc libstd-rust-dev-wasm32 wrk curl gcc python3-dev xxd
  chromium prometheus systemd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-venv is only needed when python3 itself cannot make a venv (pyenv and python.org builds can).
if python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
fi
# python3-dev is only needed when python3 has no headers (pyenv and python.org builds have them).
if python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
  missing=("${missing[@]/python3-dev}")
fi
# The AssemblyScript examples and bench_peers (workerd) install from npm; any npm will do (Debian's, or NodeSource's
# nodejs, which bundles it). AssemblyScript 0.28 declares Node.js >= 20; Debian 12's is 18.20 (npm ci then warns
# EBADENGINE; not tried here), so NodeSource's nodejs 20 is the tried route.
if ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
if [ "${1:-}" = bench ] && ! command -v valgrind >/dev/null; then
  missing+=(valgrind)
fi
read -r -a missing <<<"${missing[*]}"
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "micromono: missing ${missing[*]}, and this is not a Debian/Ubuntu machine; install the equivalents by hand" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "micromono: run as root to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "micromono: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# No package here needs a service started: policy-rc.d exiting 101 ("action forbidden") stops invoke-rc.d and
# deb-systemd-invoke from starting any during the install (prometheus's above all), unless the machine has its own.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  policy=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
# ... nor enabled for the next boot.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
