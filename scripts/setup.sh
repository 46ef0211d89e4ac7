#!/usr/bin/env bash
# Installs mlpack + mlrt with the compiler and test extras into the current Python.
# torch==2.13.0 goes first: it is a local CPU wheel here, and a bare `torch` requirement resolved
# by pip would pull a multi-GB CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# clang + libFuzzer for the bounded fuzz test (tests/test_trust.py); only where we may install
# system packages (CI runs as root). Without it that one test skips with a reason.
if ! command -v clang++-14 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-14 libclang-rt-14-dev) \
    >/dev/null 2>&1 || echo "setup: could not install clang-14 (the fuzz test will skip)" >&2
fi

# The aarch64 cross toolchain and user-mode qemu for tests/test_aarch64.py (aarch64 bundles built
# here, run emulated). Same rule: only as root with apt, only what is missing; else those tests skip.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing="$missing gcc-aarch64-linux-gnu"
  command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || missing="$missing g++-aarch64-linux-gnu"
  [ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || missing="$missing libc6-dev-arm64-cross"
  command -v qemu-aarch64 >/dev/null 2>&1 || missing="$missing qemu-user"
  if [ -n "$missing" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null 2>&1 \
      || echo "setup: could not install$missing (tests/test_aarch64.py will skip)" >&2
  fi
fi

"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install --quiet --disable-pip-version-check ".[compiler,test]"
# The real-model corpus (tests/corpus.py) builds models from torchvision, timm and transformers.
# torchvision and timm without their dependencies: resolved by pip they would replace torch with
# a CUDA build. (transformers comes with the test extra; it brings timm's other dependencies.)
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps "torchvision==0.28.0" "timm>=1.0"

# Triton Inference Server for tests/test_triton.py: the only full server on the package index is
# inside nvidia-pytriton (Triton 2.51, needs glibc >= 2.35). --no-deps: its numpy<2 pin would
# replace ours; --target: only its binary is used, from build/triton (ignored by git). Without it
# the Triton tests skip with the reason.
if [ ! -x build/triton/pytriton/tritonserver/bin/tritonserver ]; then
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target build/triton "nvidia-pytriton==0.7.0" \
    || echo "setup: could not install nvidia-pytriton (tests/test_triton.py will skip)" >&2
fi
