#!/usr/bin/env bash
# Sets up, compiles the sample model with `mlpack build`, runs it with mlrt and compares it with
# PyTorch (output check and latency).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" samples/demo.py "$@"
