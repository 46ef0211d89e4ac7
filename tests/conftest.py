"""Shared fixtures: zoo bundles are built once per session and reused by every test."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))


@dataclass
class BuiltModel:
    name: str
    bundle: Path
    inputs: list[np.ndarray]
    inputs_npz: Path
    reference: list[np.ndarray]  # eager PyTorch outputs, flat
    manifest: dict
    build_seconds: float


def flat_outputs(out) -> list[np.ndarray]:
    import torch

    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [t.detach().numpy() for t in leaves]


def assert_matches_eager(actual: list[np.ndarray], reference: list[np.ndarray], rtol: float = 1e-4) -> None:
    """fp32 tolerance: |a - r| <= rtol * |r| + rtol * max(1, max|r|), elementwise, for every output."""
    assert len(actual) == len(reference)
    for a, r in zip(actual, reference):
        assert a.shape == r.shape and a.dtype == r.dtype
        scale = max(1.0, float(np.abs(r).max())) if r.size else 1.0
        np.testing.assert_allclose(a, r, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundles")


_BUILT: dict[str, BuiltModel] = {}


@pytest.fixture(scope="session")
def build_zoo(bundle_dir):
    """build_zoo(name) -> BuiltModel, built once per session."""
    import time

    import torch

    import mlpack
    import zoo

    def get(name: str) -> BuiltModel:
        if name not in _BUILT:
            model, inputs = zoo.make(name)
            with torch.no_grad():
                reference = flat_outputs(model(*inputs))
            path = bundle_dir / f"{name}.bundle"
            t0 = time.perf_counter()
            result = mlpack.build(model, inputs, path)
            elapsed = time.perf_counter() - t0
            arrays = [x.numpy() for x in inputs]
            npz = bundle_dir / f"{name}_inputs.npz"
            np.savez(npz, *arrays)
            _BUILT[name] = BuiltModel(name, path, arrays, npz, reference, result.manifest, elapsed)
        return _BUILT[name]

    return get


def run_without_torch(bundle: Path, inputs_npz: Path, tmp_path: Path) -> list[np.ndarray]:
    out = tmp_path / "outputs.npz"
    proc = subprocess.run([sys.executable, str(TESTS / "no_torch_run.py"), str(bundle), str(inputs_npz), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


@pytest.fixture(scope="session")
def cpp_sample(tmp_path_factory) -> Path:
    """The C++ sample built against the *installed* mlrt CMake package (find_package)."""
    import mlrt

    build = tmp_path_factory.mktemp("cpp_sample")
    subprocess.run(["cmake", "-S", str(ROOT / "samples" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    f"-Dmlrt_DIR={mlrt.get_cmake_dir()}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True)
    exe = build / "mlrt_run"
    assert exe.exists()
    return exe


def run_cpp_sample(exe: Path, bundle: Path, inputs: list[np.ndarray], tmp_path: Path) -> list[np.ndarray]:
    paths = []
    for i, a in enumerate(inputs):
        p = tmp_path / f"in{i}.npy"
        np.save(p, a)
        paths += ["-i", str(p)]
    prefix = tmp_path / "out"
    proc = subprocess.run([str(exe), str(bundle), *paths, "-o", str(prefix)], capture_output=True, text=True,
                          timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    outs = []
    i = 0
    while (tmp_path / f"out{i}.npy").exists():
        outs.append(np.load(tmp_path / f"out{i}.npy"))
        i += 1
    return outs


@pytest.fixture(scope="session")
def sanitizer_build(tmp_path_factory):
    """sanitizer_build('address' | 'thread') -> build dir of the runtime + samples + stress test,
    compiled warning-free (-Werror) with that sanitizer. Built once per session per kind."""
    builds: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in builds:
            build = tmp_path_factory.mktemp(f"sanitize-{kind}")
            configure = subprocess.run(
                ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug", f"-DMLRT_SANITIZE={kind}",
                 "-DMLRT_BUILD_PYTHON=OFF", "-DMLRT_BUILD_TOOLS=ON", "-DMLRT_BUILD_TESTS=ON",
                 "-DCMAKE_CXX_FLAGS=-Werror"], capture_output=True, text=True)
            assert configure.returncode == 0, configure.stdout + configure.stderr
            proc = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            builds[kind] = build
        return builds[kind]

    return get
