"""The optional C extension, micromono/_speedups.c: everything else about the package is in pyproject.toml.

Declared here because setuptools still calls `[tool.setuptools] ext-modules` experimental and warns on every build.
`optional=True`: without a C compiler the build skips it and micromono runs in pure Python. The sha256 of the source
is compiled in (`SOURCE_SHA256`), so that micromono/_accelerate.py uses the extension only while it is current.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "micromono/_speedups.c"
DIGEST = hashlib.sha256((Path(__file__).resolve().parent / SOURCE).read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "micromono._speedups",
            sources=[SOURCE],
            define_macros=[("MICROMONO_SOURCE_SHA256", f'"{DIGEST}"')],
            optional=True,
        )
    ]
)
