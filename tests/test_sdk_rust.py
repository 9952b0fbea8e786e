"""The Rust SDK's own unit tests (sdk/rust/src: HTTP decoding and response encoding, kv list blocks, SQL values),
compiled for the host with the same Debian rustc that builds the examples, and run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

RUSTC = Path("/usr/bin/rustc")  # by path, as examples/Makefile: rustup's rustc may come first on PATH


@pytest.mark.skipif(not RUSTC.exists(), reason="no Debian rustc: run scripts/install-system-deps.sh")
def test_rust_sdk_unit_tests_pass_on_the_host(tmp_path: Path) -> None:
    """`rustc --test` of the SDK crate builds without warnings and every test passes."""
    binary = tmp_path / "micromono_tests"
    build = subprocess.run(
        [RUSTC, "--edition", "2021", "--test", "--crate-name", "micromono", "-o", binary, ROOT / "sdk/rust/src/lib.rs"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    assert "warning" not in build.stderr, build.stderr
    run = subprocess.run([binary], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "test result: ok" in run.stdout
