"""Reproducible builds: the same model built twice gives the same bytes. Users diff and sign
bundles, and caching builds keys on them.

Each pair of builds differs in everything that must not matter: the output folder (so the temp
folders the build links and compiles in), the kernel object cache ($MLPACK_CACHE_DIR cold, then
warm), the number of LLVM workers, and, across processes, Python's string hash seed (set order).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mlpack
from mlpack.bundle import read_bundle, section_bytes


def _model():
    """A conv (packed A panels), a Linear (packed B panels), a LayerNorm and GELU (loop nests)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LayerNorm(8 * 6 * 6), torch.nn.Linear(8 * 6 * 6, 16), torch.nn.GELU())
    return model.eval(), (torch.randn(2, 3, 6, 6),)


def _assert_same(a: Path, b: Path) -> None:
    if a.read_bytes() == b.read_bytes():
        return
    ia, ib = read_bundle(a), read_bundle(b)
    differ = [s.name for s, t in zip(ia.sections, ib.sections) if s.sha256 != t.sha256 or s.size != t.size]
    pytest.fail(f"two builds of one model differ: sections {differ or 'layout'} ({a}, {b})")


def _no_build_paths(bundle: Path, *paths: Path) -> None:
    """No temp folder, output folder or source folder of this machine in any section."""
    info = read_bundle(bundle)
    for s in info.sections:
        data = section_bytes(bundle, s.name)
        for needle in [b"mlpack-link-", b"mlpack-kernels-", b"mlpack-cuda-", b"mlpack-sass-",
                       *(str(p).encode() for p in paths)]:
            assert needle not in data, f"section {s.name} holds {needle!r}"


def test_cpu_bundle_is_reproducible(tmp_path, monkeypatch):
    from mlpack.lower import llvm_compile
    from mlpack.targets.x86_64.link import KERNELS_DIR

    model, inputs = _model()
    monkeypatch.setattr(llvm_compile, "PARTITION_LINES", 200)  # several partitions, so several workers
    monkeypatch.setenv("MLPACK_CACHE_DIR", str(tmp_path / "cache"))
    with monkeypatch.context() as m:  # cold cache, one LLVM worker
        m.setattr(llvm_compile.os, "sched_getaffinity", lambda pid: {0})
        first = mlpack.build(model, inputs, tmp_path / "a" / "m.bundle").path
    assert list((tmp_path / "cache" / "kernels").glob("*.o"))
    second = mlpack.build(model, inputs, tmp_path / "b-other-folder" / "m.bundle").path  # warm cache
    _assert_same(first, second)
    _no_build_paths(first, tmp_path, KERNELS_DIR, KERNELS_DIR.parent)


def test_cpu_bundle_is_reproducible_across_processes(tmp_path):
    """Two `mlpack build` processes with different hash seeds, each with a cold cache of its own."""
    model, inputs = _model()
    torch.export.save(torch.export.export(model, inputs), tmp_path / "m.pt2")
    out = []
    for seed in ("1", "2"):
        bundle = tmp_path / f"seed{seed}" / "m.bundle"
        env = {**os.environ, "PYTHONHASHSEED": seed, "MLPACK_CACHE_DIR": str(tmp_path / f"cache{seed}")}
        proc = subprocess.run([sys.executable, "-m", "mlpack.cli", "build", str(tmp_path / "m.pt2"), "-o", str(bundle),
                               "-q"], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        out.append(bundle)
    _assert_same(*out)


def test_dynamic_bundle_is_reproducible(tmp_path, monkeypatch):
    model, inputs = _model()
    monkeypatch.setenv("MLPACK_CACHE_DIR", str(tmp_path / "cache"))
    builds = [mlpack.build(model, inputs, tmp_path / d / "m.bundle", dynamic=["input:0=1..4"]).path for d in ("a", "b")]
    assert len(read_bundle(builds[0]).manifest["programs"]) == 3
    _assert_same(*builds)


def _nvcc():
    from mlpack.targets.cuda.codegen import find_nvcc, find_ptxas

    return find_nvcc() and find_ptxas()


@pytest.mark.skipif(not _nvcc(), reason="the CUDA target needs nvcc and ptxas")
def test_cuda_bundle_is_reproducible(tmp_path, monkeypatch):
    """PTX and the sm_80 / sm_90 cubins, beside the CPU code sharing the weights; and a dynamic
    CUDA-only bundle (a program per bucket)."""
    model, inputs = _model()
    monkeypatch.setenv("MLPACK_CACHE_DIR", str(tmp_path / "cache"))
    builds = [mlpack.build(model, inputs, tmp_path / d / "m.bundle", target="cpu,cuda").path for d in ("a", "b")]
    assert {"cuda.ptx", "cuda.sm_80", "cuda.sm_90", "cpu.so"} <= {s.name for s in read_bundle(builds[0]).sections}
    _assert_same(*builds)
    _no_build_paths(builds[0], tmp_path)
    dynamic = [mlpack.build(model, inputs, tmp_path / d / "d.bundle", target="cuda", dynamic=["input:0=1..2"],
                            cuda_sass=(80,)).path for d in ("a", "b")]
    _assert_same(*dynamic)
