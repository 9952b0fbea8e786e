"""The optional C extension, micromono/_speedups.c: everything else about the package is in pyproject.toml.

Declared here because setuptools still calls `[tool.setuptools] ext-modules` experimental and warns on every build.
`optional=True`: without a C compiler the build skips it and micromono runs in pure Python, its default anyway.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("micromono._speedups", sources=["micromono/_speedups.c"], optional=True)])
