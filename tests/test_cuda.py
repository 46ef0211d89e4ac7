"""The CUDA target: PTX generation (assembled by ptxas for sm_80 and sm_90), numerics of the generated
kernels checked on the CPU through the host emulation (tests/cuda_emulation), and, where a GPU is
present, real execution through mlrt compared with eager PyTorch.

Tolerances (|a - r| <= tol * |r| + tol * max(1, max|r|)): fp32 1e-4 (as the CPU target); tf32 and
fp16 operands carry 10-11 mantissa bits: 2e-2; bf16 carries 8: 6e-2. The emulation rounds GEMM
operands exactly as the tensor cores see them, so these tolerances are the precision's, not slack.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_matches_eager, flat_outputs

sys.path.insert(0, str(Path(__file__).parent / "cuda_emulation"))

from test_cuda_runtime import HAS_GPU  # noqa: E402
from zoo import PRECISION_TOLERANCE as TOLERANCE  # noqa: E402


def _nvcc():
    from mlpack.targets.cuda.codegen import find_nvcc

    return find_nvcc()


def _ptxas():
    from mlpack.targets.cuda.codegen import find_ptxas

    return find_ptxas()


pytestmark = pytest.mark.skipif(_nvcc() is None, reason="the CUDA target needs nvcc (CUDA toolkit) to build PTX")

_CACHE: dict = {}


def build_cuda(name: str, precision: str, tmp_dir: Path, target: str = "cuda"):
    """(BuildResult, example inputs, eager reference), built once per session."""
    import torch

    import mlpack
    import zoo

    key = (name, precision, target)
    if key not in _CACHE:
        model, inputs = zoo.make(name)
        with torch.no_grad():
            reference = flat_outputs(model(*inputs))
        path = tmp_dir / f"{name}-{precision}-{target.replace(',', '+')}.bundle"
        result = mlpack.build(model, inputs, path, target=target, precision=precision)
        _CACHE[key] = (result, [x.numpy() for x in inputs], reference)
    return _CACHE[key]


@pytest.fixture(scope="module")
def cuda_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cuda")


def _weights_blob(path: Path) -> bytes:
    from mlpack.bundle import read_bundle

    info = read_bundle(path)
    sec = next(s for s in info.sections if s.name == "weights")
    with open(path, "rb") as f:
        f.seek(sec.offset)
        return f.read(sec.size)


def _ptx(path: Path) -> str:
    from mlpack.bundle import read_bundle

    info = read_bundle(path)
    sec = next(s for s in info.sections if s.name == "cuda.ptx")
    with open(path, "rb") as f:
        f.seek(sec.offset)
        data = f.read(sec.size)
    assert data.endswith(b"\0")
    return data[:-1].decode("ascii")


CASES = [("mlp", "fp32"), ("small_cnn", "fp32"), ("mobilenet_v2", "fp32"), ("encoder", "fp32"),
         ("small_cnn", "tf32"), ("small_cnn", "fp16"), ("small_cnn", "bf16"), ("mlp", "bf16")]


@pytest.mark.parametrize("name,precision", CASES)
def test_ptx_assembles_for_sm80_and_sm90(name, precision, cuda_dir, tmp_path):
    ptxas = _ptxas()
    if ptxas is None:
        pytest.skip("ptxas not found beside nvcc")
    result, _, _ = build_cuda(name, precision, cuda_dir)
    cuda = result.manifest["targets"]["cuda"]
    ptx = _ptx(result.path)
    assert f".version {cuda['ptx_isa']}" in ptx and f".target sm_{cuda['min_sm']}" in ptx
    assert cuda["precision"] == precision and cuda["min_driver"] >= 11000
    kernels = {l["kernel"] for l in cuda["launches"]}
    for k in kernels:
        assert f".entry {k}(" in ptx
    (tmp_path / "m.ptx").write_text(ptx)
    for arch in ("sm_80", "sm_90"):
        proc = subprocess.run([ptxas, f"-arch={arch}", str(tmp_path / "m.ptx"), "-o", str(tmp_path / f"{arch}.cubin")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"ptxas {arch}: {proc.stderr[-2000:]}"
    # Machine code for sm_80 and sm_90 ships beside the PTX (no JIT on those GPUs).
    from mlpack.bundle import read_bundle, section_bytes

    assert cuda["sass"] == {"80": "cuda.sm_80", "90": "cuda.sm_90"}
    names = {s.name for s in read_bundle(result.path).sections}
    for section in cuda["sass"].values():
        assert section in names and section_bytes(result.path, section)[:4] == b"\x7fELF"


@pytest.mark.parametrize("name,precision", CASES)
def test_generated_kernels_match_eager_in_emulation(name, precision, cuda_dir):
    from emulate import run_bundle_emulated

    result, inputs, reference = build_cuda(name, precision, cuda_dir)
    outputs = run_bundle_emulated(result.cuda_source, result.manifest, _weights_blob(result.path), inputs)
    assert_matches_eager(outputs, reference, rtol=TOLERANCE[precision])


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_large_gemms_use_big_tiles_and_match(precision, tmp_path):
    """A conv with enough output tiles takes the 128x128 GEMM (grid sized for it); its output
    matches eager through the emulation and the PTX assembles for sm_80 and sm_90."""
    import torch

    import mlpack
    from emulate import run_bundle_emulated

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 128, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(4, 16, 64, 64)
    with torch.no_grad():
        ref = [model(x).numpy()]
    result = mlpack.build(model, (x,), tmp_path / "conv.bundle", target="cuda", precision=precision)
    assert "mlrt::conv2d<128>" in result.cuda_source
    assert set(result.manifest["targets"]["cuda"]["sass"]) == {"80", "90"}  # ptxas took it
    if precision != "fp32":  # large GEMMs run on tensor cores: WMMA lowers to mma.sync in the PTX
        ptx = _ptx(result.path)
        assert "mma.sync" in ptx or "wmma.mma" in ptx
    launch = next(l for l in result.manifest["targets"]["cuda"]["launches"] if l["grid"][2] == 4)
    assert launch["grid"][:2] == [64 * 64 // 128, 1]
    out = run_bundle_emulated(result.cuda_source, result.manifest, _weights_blob(result.path), [x.numpy()])
    assert_matches_eager(out, ref, rtol=TOLERANCE[precision])


def test_constant_tables_and_unfused_clamps_match(tmp_path):
    """Scalar constants torch-mlir keeps as memref.global (ReLU6 bounds on a non-conv input) become
    __device__ tables; results match eager through the emulation."""
    import torch

    import mlpack
    from emulate import run_bundle_emulated

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.relu6(x * 2.0 + 1.0), torch.clamp(x, min=-0.5)

    x = torch.randn(4, 33)
    result = mlpack.build(M(), (x,), tmp_path / "g.bundle", target="cuda", cuda_sass=())
    assert "__device__ const unsigned g_" in result.cuda_source
    out = run_bundle_emulated(result.cuda_source, result.manifest, _weights_blob(result.path), [x.numpy()])
    assert_matches_eager(out, flat_outputs(M()(x)))


def test_cpu_and_cuda_in_one_bundle(cuda_dir):
    """One bundle, both targets: the CPU target runs as before, the CUDA target's kernels agree."""
    import mlrt
    from emulate import run_bundle_emulated

    result, inputs, reference = build_cuda("small_cnn", "fp32", cuda_dir, target="cpu,cuda")
    assert set(result.manifest["targets"]) == {"cpu", "cuda"}
    model = mlrt.load(str(result.path))
    assert_matches_eager(model.run_flat(*inputs), reference)
    emulated = run_bundle_emulated(result.cuda_source, result.manifest, _weights_blob(result.path), inputs)
    assert_matches_eager(emulated, reference)


def test_cuda_kernels_are_fused_and_planned(cuda_dir):
    """Convs/matmuls become tiled GEMM kernels with their bias/activation fused (no separate ReLU
    launches), and the device arena is planned like the CPU one (no packing scratch: smaller)."""
    result, _, _ = build_cuda("small_cnn", "fp32", cuda_dir)
    cuda = result.manifest["targets"]["cuda"]
    assert cuda["kernels"]["conv2d"] == 3 and cuda["kernels"]["matmul"] == 1
    plan = cuda["memory_plan"]
    assert plan["arena_bytes"] <= 1.1 * plan["lower_bound_bytes"]
    both, _, _ = build_cuda("small_cnn", "fp32", cuda_dir, target="cpu,cuda")
    assert cuda["arena_bytes"] < both.manifest["targets"]["cuda"]["arena_bytes"] + 1
    assert cuda["arena_bytes"] < both.manifest["memory_plan"]["arena_bytes"]  # CPU packs B into arena scratch


def test_encoder_kernels_are_fused_and_reduce_per_warp(cuda_dir):
    """LayerNorm / softmax chains collapse into few kernels, and their row reductions are split
    over a warp's lanes (the emulation above checks their numbers; shuffles run on a GPU only)."""
    result, _, _ = build_cuda("encoder", "fp32", cuda_dir)
    cuda = result.manifest["targets"]["cuda"]
    assert len(cuda["launches"]) < 150  # 282 without fusion
    assert cuda["kernels"]["warp_reductions"] >= 9 * 2  # 9 LayerNorms: mean and variance each
    assert "mlrt::warp_sum" in result.cuda_source  # (softmax's max comes with its index: serial)


def test_unknown_precision_is_refused(cuda_dir):
    import mlpack
    import zoo
    from mlpack.errors import BuildError

    model, inputs = zoo.make("mlp")
    with pytest.raises(BuildError, match="precision"):
        mlpack.build(model, inputs, cuda_dir / "bad.bundle", target="cuda", precision="fp8")


def test_cli_builds_and_inspects_a_cuda_bundle(cuda_dir, tmp_path):
    import torch

    import zoo

    model, inputs = zoo.make("mlp")
    torch.export.save(torch.export.export(model, inputs), tmp_path / "mlp.pt2")
    out = tmp_path / "mlp.bundle"
    proc = subprocess.run([sys.executable, "-m", "mlpack.cli", "build", str(tmp_path / "mlp.pt2"), "-o", str(out),
                           "--target", "cpu,cuda", "--precision", "tf32"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "cuda:" in proc.stdout and "tf32" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "mlpack.cli", "inspect", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "target cuda: PTX ISA" in proc.stdout and "cuda.ptx" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "mlpack.cli", "run", str(out), "--random", "--device", "cuda:0"],
                          capture_output=True, text=True)
    if HAS_GPU:
        assert proc.returncode == 0, proc.stderr
    else:  # no GPU here: a clear message, not a crash
        assert proc.returncode == 1 and "error:" in proc.stderr and "cuda" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- on a real GPU


GPU_CASES = [("mlp", "fp32"), ("small_cnn", "fp32"), ("mobilenet_v2", "fp32"), ("encoder", "fp32"),
             ("resnet18", "fp32"), ("small_cnn", "tf32"), ("small_cnn", "fp16"), ("small_cnn", "bf16"),
             ("resnet18", "tf32"), ("encoder", "bf16")]


@pytest.mark.skipif(not HAS_GPU, reason="needs a real NVIDIA GPU and driver (libcuda.so.1)")
@pytest.mark.parametrize("name,precision", GPU_CASES)
def test_gpu_run_matches_eager(name, precision, cuda_dir):
    import mlrt

    result, inputs, reference = build_cuda(name, precision, cuda_dir)
    model = mlrt.load(str(result.path), device="cuda:0")
    for _ in range(3):  # first run captures the CUDA graph, later runs replay it
        assert_matches_eager(model.run_flat(*inputs), reference, rtol=TOLERANCE[precision])
