#!/usr/bin/env bash
# Installs mlpack + mlrt with the compiler and test extras into the current Python.
# torch==2.13.0 goes first: it is a local CPU wheel here, and a bare `torch` requirement resolved
# by pip would pull a multi-GB CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install --quiet --disable-pip-version-check ".[compiler,test]"
