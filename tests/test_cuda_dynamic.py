"""Dynamic dims on the CUDA target (issue 15), without a GPU: bundles built by mlpack with one CUDA
program per bucket (sections cuda.pN), run by mlrt's CUDA backend against the stand-in libcuda.so.1
of test_cuda_runtime.py, whose modules execute the generated kernels through the host emulation
(tests/cuda_emulation: the same generated CUDA source, compiled for the CPU, found by the PTX's
hash). So the runtime's program choice, zero-padding, cutting, per-bucket graphs and context
pooling run for real, and every size is checked against eager PyTorch: the lower bound, the upper
bound, every bucket and sizes between buckets. A real-GPU group at the end skips cleanly here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mlrt
from conftest import assert_matches_eager, flat_outputs
from test_cuda_runtime import HAS_GPU, fake_driver, stats  # noqa: F401 (fixture)

sys.path.insert(0, str(Path(__file__).parent / "cuda_emulation"))


def _nvcc():
    from mlpack.targets.cuda.codegen import find_nvcc

    return find_nvcc()


pytestmark = pytest.mark.skipif(_nvcc() is None, reason="the CUDA target needs nvcc (CUDA toolkit) to build PTX")

# name -> (target, --dynamic, --buckets, the bound's example input shape, sizes to run)
# The MLP shares its weights with a CPU target (packed B panels); the CNN is cuda-only, and its
# lower bound (1) is below its first bucket (2), so it always runs padded there.
CASES = {
    "mlp": ("cpu,cuda", "0:0=1..8", "0:0=1,4,8", (8, 256), [1, 2, 3, 4, 5, 7, 8, 8, 1, 6]),
    "small_cnn": ("cuda", "0:0=1..4", "0:0=2,4", (4, 3, 32, 32), [1, 2, 3, 4, 1]),
}


class Built:
    def __init__(self, name: str, directory: Path, precision: str = "fp32"):
        import torch

        import mlpack
        import zoo
        from emulate import Emulation, ptx_key
        from mlpack.bundle import section_bytes

        target, dynamic, buckets, shape, self.sizes = CASES[name]
        self.model, _ = zoo.make(name)
        self.x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        self.path = directory / f"{name}.bundle"
        # PTX only (no cubins): the stand-in driver runs PTX modules through the emulation.
        self.result = mlpack.build(self.model, [self.x], self.path, target=target, dynamic=[dynamic],
                                   buckets=[buckets], cuda_sass=(), precision=precision)
        self.manifest = self.result.manifest
        self.emulation = directory / "emulation"
        self.emulation.mkdir(exist_ok=True)
        for p, source in zip(self.manifest["programs"], self.result.cuda_sources):
            ptx = section_bytes(self.path, p["cuda"]["section"])[:-1].decode("ascii")
            work = directory / f"work-{p['cuda']['section']}"
            work.mkdir()
            Emulation(source, p["cuda"]["launches"], work, so=self.emulation / f"{ptx_key(ptx)}.so")
        np.save(directory / f"{name}-x.npy", self.x.numpy())
        self.x_path = directory / f"{name}-x.npy"

    def eager(self, n: int) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            return flat_outputs(self.model(self.x[:n]))

    def bucket(self, n: int) -> int:
        return next(b for b in self.manifest["dynamic_dims"][0]["buckets"] if b >= n)

    def program(self, n: int) -> dict:
        b = self.bucket(n)
        return next(p for p in self.manifest["programs"] if list(p["sizes"].values()) == [b])


_BUILT: dict[str, Built] = {}


@pytest.fixture(scope="module", params=list(CASES))
def built(request, tmp_path_factory) -> Built:
    if request.param not in _BUILT:
        _BUILT[request.param] = Built(request.param, tmp_path_factory.mktemp(f"cuda_dyn_{request.param}"))
    return _BUILT[request.param]


CHILD = textwrap.dedent("""
    import json, os, sys, threading
    import numpy as np
    import mlrt
    path, x_path, out_path = sys.argv[1:4]
    sizes = json.loads(os.environ["SIZES"])
    x = np.load(x_path)
    m = mlrt.load(path, device="cuda:0")
    print("DEVICE", m.device, [d.name for d in m.dynamic_dims])
    outs, device_bytes = {}, []
    for k, n in enumerate(sizes):
        assert m.output_shapes(x[:n]) == [(n, 10)], m.output_shapes(x[:n])
        y = m.run(x[:n])
        outs[str(k)] = y
        device_bytes.append(m.device_bytes)
    print("BYTES", json.dumps(device_bytes))
    np.savez(out_path, **outs)
    if os.environ.get("THREADS"):  # concurrent runs at different sizes, checked against the CPU target
        cpu = mlrt.load(path)
        errors = []
        def work(t):
            for i in range(6):
                n = 1 + (t * 3 + i * 5) % len(x)
                y = m.run(x[:n])
                if y.shape != (n, 10) or not np.allclose(y, cpu.run(x[:n]), rtol=1e-4, atol=1e-4):
                    errors.append((t, n))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(int(os.environ["THREADS"]))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print("CONCURRENT_ERRORS", errors)
    del m
    print("DONE")
""")


def run_child(fake_driver: Path, b: Built, sizes: list[int], tmp_path: Path, **env) -> tuple[list, str, str]:
    out_path = tmp_path / "out.npz"
    full = {**os.environ, "LD_LIBRARY_PATH": f"{fake_driver}:{os.environ.get('LD_LIBRARY_PATH', '')}",
            "FAKE_CUDA_STATS": "1", "FAKE_CUDA_EMULATION": str(b.emulation), "SIZES": json.dumps(sizes),
            "FAKE_CUDA_VERSION": "13000",  # nvcc 13 writes PTX ISA 9.0
            **{k: str(v) for k, v in env.items()}}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(b.path), str(b.x_path), str(out_path)],
                          capture_output=True, text=True, timeout=300, env=full)
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stdout + proc.stderr
    assert "FAKE_CUDA_STATS" in proc.stderr, proc.stderr  # the stand-in, not a real driver, was loaded
    assert "FAKE_CUDA_LEAK" not in proc.stderr, proc.stderr  # every handle and allocation released
    outs = np.load(out_path)
    return [outs[str(k)] for k in range(len(sizes))], proc.stdout, proc.stderr


# --------------------------------------------------------------------------- the bundle


def test_one_cuda_program_per_bucket_sharing_weights(built):
    from mlpack.bundle import read_bundle

    m = built.manifest
    targets = m["targets"]
    assert set(targets["cuda"]) == {"ptx_isa", "min_sm", "min_driver", "precision"}  # shared; code per program
    assert m["format_version"] == 2 and len(m["programs"]) == len(m["dynamic_dims"][0]["buckets"])
    sections = {s.name for s in read_bundle(built.path).sections}
    for n, p in enumerate(m["programs"]):
        assert p["cuda"]["section"] == f"cuda.p{n}" and f"cuda.p{n}" in sections and p["cuda"]["sass"] == {}
        assert ("cpu" in targets) == (p.get("section") == f"cpu.p{n}")
        assert p["cuda"]["arena_bytes"] <= 1.1 * p["cuda"]["memory_plan"]["lower_bound_bytes"] + 256
        # every program reads every stored weight: each is stored once, whatever the bucket count
        assert {int(a.split(":")[1]) for a in p["call"] if a.startswith("weight:")} == set(range(len(m["weights"])))
    # each program is planned at its own sizes: the device arena grows with the bucket
    arenas = [p["cuda"]["arena_bytes"] for p in m["programs"]]
    assert arenas == sorted(arenas) and arenas[0] < arenas[-1]


def test_inspect_shows_each_cuda_program(built):
    proc = subprocess.run([sys.executable, "-m", "mlpack.cli", "inspect", str(built.path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "one CUDA program per bucket combination" in proc.stdout, proc.stdout
    for n, p in enumerate(built.manifest["programs"]):
        assert f"cuda.p{n}: {len(p['cuda']['launches'])} launches, device arena" in proc.stdout, proc.stdout


def test_cuda_only_dynamic_bundle_on_cpu(built):
    if "cpu" in built.manifest["targets"]:
        assert mlrt.load(built.path).dynamic_dims[0].buckets == (1, 4, 8)
        return
    with pytest.raises(mlrt.Error, match=r"no CPU code \(it was built for cuda only\)"):
        mlrt.load(built.path)


def _edit(built: Built, path: Path, edit) -> Path:
    import copy

    from mlpack import bundle as bf

    info = bf.read_bundle(built.path)
    manifest = copy.deepcopy(info.manifest)
    edit(manifest)
    sections = [(s.name, bf.section_bytes(built.path, s.name), s.alignment) for s in info.sections if s.name != "manifest"]
    bf.write_bundle(path, manifest, sections)
    data = bytearray(path.read_bytes())
    data[8:12] = (2).to_bytes(4, "little")  # write_bundle writes version 1 headers
    path.write_bytes(bytes(data))
    return path


def _code(key, value, program=0):
    return lambda m: m["programs"][program]["cuda"].__setitem__(key, value)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["programs"][1].pop("cuda"), r"programs\[1\]: needs an object 'cuda' \(the bundle has a CUDA target\)"),
    (_code("section", "cuda.nope"), "CUDA section 'cuda.nope' is missing"),
    (_code("section", "weights"), r"programs\[0\]\.cuda\.section may not be 'weights'"),
    (_code("arena_bytes", -1), r"programs\[0\]\.cuda\.arena_bytes out of range"),
    (_code("launches", {}, 1), r"programs\[1\]\.cuda needs string section, integer arena_bytes and array launches"),
    (lambda m: m["programs"][0]["cuda"]["launches"][0].__setitem__("grid", [0, 1, 1]),
     r"programs\[0\]\.cuda\.launches\[0\]: grid must be 3 integers"),
    (_code("sass", {"90": "cuda.p1"}), r"programs\[0\]\.cuda\.sass section 'cuda.p1' is not an ELF cubin"),
    (lambda m: m["targets"]["cuda"].pop("precision"), "targets.cuda needs string ptx_isa and precision"),
    (lambda m: m.__setitem__("targets", {}), "needs targets.cpu or targets.cuda"),
])
def test_hostile_cuda_programs(built, tmp_path, edit, message):
    """Every program's CUDA code is validated with the manifest, before any driver is touched."""
    path = _edit(built, tmp_path / "hostile.bundle", edit)
    for device in ("cpu", "cuda:0"):
        with pytest.raises(mlrt.Error, match=message):
            mlrt.load(path, device=device)


# --------------------------------------------------------------------------- through the stand-in driver


def test_bf16_weights_in_a_dynamic_bundle(fake_driver, tmp_path):
    """Half-precision weights with dynamic dims: bfloat16 GEMM/conv weights stored once for every
    program, format version 3 (dynamic programs as in version 2), and every size runs through the
    runtime's CUDA backend within bf16's tolerance."""
    from mlpack.bundle import read_bundle
    from zoo import PRECISION_TOLERANCE

    b = Built("small_cnn", tmp_path, precision="bf16")
    m = b.manifest
    assert m["format_version"] == 3 and len(m["programs"]) == 2
    dtypes = [w["dtype"] for w in m["weights"]]
    assert dtypes.count("bfloat16") == 4 and set(dtypes) == {"bfloat16", "float32"}  # 3 convs + the Linear
    for p in m["programs"]:  # one copy of each weight, read by both programs
        assert {int(a.split(":")[1]) for a in p["call"] if a.startswith("weight:")} == set(range(len(m["weights"])))
    sizes = [1, 3, 4, 2]
    outs, stdout, _ = run_child(fake_driver, b, sizes, tmp_path)
    for n, y in zip(sizes, outs):
        assert_matches_eager([y], b.eager(n), rtol=PRECISION_TOLERANCE["bf16"])
    weights = next(s.size for s in read_bundle(b.path).sections if s.name == "weights")
    assert json.loads(stdout.split("BYTES ")[1].splitlines()[0])[0] > weights  # weights + a context




def test_every_size_matches_eager_with_one_graph_per_bucket(fake_driver, built, tmp_path):
    """Lower bound, upper bound, every bucket and sizes between them, in an order that revisits
    buckets: each output matches eager, each bucket's graph is captured once (one context: the
    runs are sequential) and replayed on every later run at any size it covers, and device memory
    stays what the first run allocated (a context fits the largest program)."""
    sizes = built.sizes
    buckets = built.manifest["dynamic_dims"][0]["buckets"]
    lo, hi = built.manifest["dynamic_dims"][0]["min"], built.manifest["dynamic_dims"][0]["max"]
    assert lo in sizes and hi in sizes and set(buckets) <= set(sizes) and set(sizes) - set(buckets)
    outs, stdout, stderr = run_child(fake_driver, built, sizes, tmp_path)
    for n, y in zip(sizes, outs):
        assert y.shape == (n, 10)
        assert_matches_eager([y], built.eager(n))
    s = stats(stderr)
    assert s["captures"] == len({built.bucket(n) for n in sizes}) == len(buckets)
    assert s["graph_launches"] == len(sizes)
    assert s["launches"] == sum(len(built.program(n)["cuda"]["launches"]) for n in sizes)
    device_bytes = json.loads(stdout.split("BYTES ")[1].splitlines()[0])
    assert len(set(device_bytes)) == 1, device_bytes


def test_without_graphs_every_run_launches(fake_driver, built, tmp_path):
    sizes = [built.manifest["dynamic_dims"][0]["min"], 3]
    outs, _, stderr = run_child(fake_driver, built, sizes, tmp_path, MLRT_CUDA_GRAPHS=0)
    for n, y in zip(sizes, outs):
        assert_matches_eager([y], built.eager(n))
    s = stats(stderr)
    assert s["captures"] == 0 and s["graph_launches"] == 0
    assert s["launches"] == sum(len(built.program(n)["cuda"]["launches"]) for n in sizes)


def test_concurrent_runs_at_different_sizes(fake_driver, built, tmp_path):
    if "cpu" not in built.manifest["targets"]:
        pytest.skip("checked against the bundle's CPU target")
    _, stdout, stderr = run_child(fake_driver, built, [8], tmp_path, THREADS=4)
    assert "CONCURRENT_ERRORS []" in stdout, stdout
    s = stats(stderr)
    # at most one context per thread (plus the first run's), each capturing a bucket's graph at most once
    assert 1 <= s["captures"] <= 5 * len(built.manifest["programs"])


def test_run_dlpack_pads_and_cuts_on_the_device(fake_driver, built):
    """RunDevice (DLPack inputs in device memory): the same program choice, with the padding and the
    cut done by device-to-device copies ordered after the caller's stream; same results as run."""
    from test_dlpack import run_dlpack_child

    sizes = sorted(set(built.sizes))
    run_dlpack_child(fake_driver, built.path, f'''
        x = np.load({str(built.x_path)!r})
        for n in {sizes}:
            y = m.run_dlpack(FakeCudaTensor(np.ascontiguousarray(x[:n])))
            assert y.shape == (n, 10) and y.nbytes == n * 40, (n, y.shape)
            assert np.array_equal(y.numpy(), m.run(x[:n])), n
        assert count("dtod_unordered") == 0
        try:
            m.run_dlpack(FakeCudaTensor(np.ascontiguousarray(np.concatenate([x, x[:1]]))))
            raise AssertionError("above the bound ran")
        except mlrt.Error as e:
            assert "is outside" in str(e), e
    ''', FAKE_CUDA_EMULATION=built.emulation, FAKE_CUDA_VERSION=13000)


# --------------------------------------------------------------------------- a real GPU


@pytest.mark.skipif(not HAS_GPU, reason="needs a real NVIDIA GPU and driver (libcuda.so.1)")
@pytest.mark.parametrize("name", list(CASES))
def test_gpu_every_size_matches_eager(name, tmp_path):
    """On a real GPU: the same models with machine code for sm_80/sm_90, every size, twice (the
    second pass replays the captured graphs), and run_dlpack with torch CUDA tensors."""
    import torch

    import mlpack
    import zoo

    target, dynamic, buckets, shape, sizes = CASES[name]
    model, _ = zoo.make(name)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    path = tmp_path / f"{name}.bundle"
    mlpack.build(model, [x], path, target=target, dynamic=[dynamic], buckets=[buckets])
    gpu = mlrt.load(str(path), device="cuda:0")
    for _ in range(2):
        for n in sizes:
            with torch.no_grad():
                ref = flat_outputs(model(x[:n]))
            assert_matches_eager([gpu.run(x[:n].numpy())], ref)
    if torch.cuda.is_available():
        for n in sorted(set(sizes)):
            y = torch.from_dlpack(gpu.run_dlpack(x[:n].cuda().contiguous()))
            with torch.no_grad():
                assert_matches_eager([y.cpu().numpy()], flat_outputs(model(x[:n])))
