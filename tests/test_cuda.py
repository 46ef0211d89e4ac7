"""The CUDA target: PTX generation (assembled by ptxas for sm_80 and sm_90), numerics of the generated
kernels checked on the CPU through the host emulation (tests/cuda_emulation), and, where a GPU is
present, real execution through mlrt compared with eager PyTorch.

Tolerances (|a - r| <= tol * |r| + tol * max(1, max|r|)): fp32 1e-4 (as the CPU target); tf32 and
fp16 operands carry 10-11 mantissa bits: 2e-2; bf16 carries 8: 6e-2. The emulation rounds GEMM
operands exactly as the tensor cores see them, so these tolerances are the precision's, not slack.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_matches_eager, flat_outputs

sys.path.insert(0, str(Path(__file__).parent / "cuda_emulation"))

from test_cuda_runtime import HAS_GPU, fake_driver  # noqa: E402,F401 (fixture)
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
         ("small_cnn", "tf32"), ("small_cnn", "fp16"), ("small_cnn", "bf16"), ("mlp", "bf16"),
         # half-precision weights (fp16/bf16 store GEMM and conv weights in that type): every zoo
         # model above at both precisions
         ("mlp", "fp16"), ("mobilenet_v2", "fp16"), ("mobilenet_v2", "bf16"), ("encoder", "fp16"),
         ("encoder", "bf16")]


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


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
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
    if precision in HALF:  # the tensor-core tiles read the conv's filter stored in that type
        assert [w["dtype"] for w in result.manifest["weights"]] == [HALF[precision], "float32"]
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


# --------------------------------------------------------------------------- half-precision weights

HALF = {"fp16": "float16", "bf16": "bfloat16"}


def _weights_section_bytes(path: Path) -> int:
    from mlpack.bundle import read_bundle

    return next(s.size for s in read_bundle(path).sections if s.name == "weights")


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "mobilenet_v2", "encoder"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_weights_are_stored_narrowed(name, precision, cuda_dir):
    """--precision fp16/bf16 (cuda only): every GEMM and conv weight is stored in that type (the
    manifest says so, weight by weight), biases and everything a generated loop reads stay
    float32; the weights section is about half the fp32 build's; bf16 bundles are format version 3
    (older runtimes refuse them by the header), fp16 ones keep version 1."""
    from mlpack.bundle import read_bundle

    half, _, _ = build_cuda(name, precision, cuda_dir)
    full, _, _ = build_cuda(name, "fp32", cuda_dir)
    hw, fw = half.manifest["weights"], full.manifest["weights"]
    assert [w["name"] for w in hw] == [w["name"] for w in fw] and [w["shape"] for w in hw] == [w["shape"] for w in fw]
    narrowed = [i for i, w in enumerate(hw) if w["dtype"] == HALF[precision]]
    assert narrowed and {w["dtype"] for w in hw} <= {HALF[precision], "float32"}
    for i, (h, f) in enumerate(zip(hw, fw)):
        assert h["nbytes"] * (2 if i in narrowed else 1) == f["nbytes"]
        if len(h["shape"]) == 1:  # biases (and LayerNorm / BatchNorm params) stay float32
            assert h["dtype"] == "float32", h
    # Only weights whose every use is a GEMM operand or conv filter: the source reads them so.
    ctype = {"fp16": "half", "bf16": "__nv_bfloat16"}[precision]
    call = half.manifest["call"]
    for i in narrowed:
        assert f"(const {ctype} *)(A[{call.index(f'weight:{i}')}] + " in half.cuda_source
    ratio = _weights_section_bytes(half.path) / _weights_section_bytes(full.path)
    assert 0.49 < ratio < 0.55, ratio  # the encoder's 1 MB embedding table is a gather: float32
    # the whole file, where weights outweigh the code (small_cnn's is mostly cubins)
    assert half.bundle_bytes < (0.95 if name == "small_cnn" else 0.65) * full.bundle_bytes
    assert read_bundle(half.path).format_version == half.manifest["format_version"] == \
        (3 if precision == "bf16" else 1)


def test_half_weights_stay_float32_when_a_cpu_target_shares_them(cuda_dir):
    """cpu,cuda bundles share one weights section and the CPU kernels read float32: the CUDA
    kernels then read float32 weights too (operands still rounded to fp16 on the tensor cores)."""
    import mlrt
    from emulate import run_bundle_emulated

    result, inputs, reference = build_cuda("small_cnn", "fp16", cuda_dir, target="cpu,cuda")
    assert {w["dtype"] for w in result.manifest["weights"]} == {"float32"}
    assert result.manifest["format_version"] == 1 and "const half *" not in result.cuda_source
    assert_matches_eager(mlrt.load(str(result.path)).run_flat(*inputs), reference)
    emulated = run_bundle_emulated(result.cuda_source, result.manifest, _weights_blob(result.path), inputs)
    assert_matches_eager(emulated, reference, rtol=TOLERANCE["fp16"])


def test_weight_read_outside_a_gemm_stays_float32(tmp_path):
    """A weight that a GEMM and a generated loop both read is stored once, in float32; a
    weight only the GEMM reads is narrowed. Both agree with eager in emulation."""
    import torch

    import mlpack
    from emulate import run_bundle_emulated

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(1)
            self.shared = torch.nn.Parameter(torch.randn(64, 64, generator=g))
            self.only = torch.nn.Parameter(torch.randn(64, 32, generator=g))

        def forward(self, x, y):
            return (x @ self.shared) @ self.only, y * self.shared

    m = M().eval()
    x, y = torch.randn(8, 64), torch.randn(64, 64)
    with torch.no_grad():
        ref = flat_outputs(m(x, y))
    result = mlpack.build(m, (x, y), tmp_path / "m.bundle", target="cuda", precision="bf16", cuda_sass=())
    dtypes = {tuple(w["shape"]): w["dtype"] for w in result.manifest["weights"]}
    assert dtypes == {(64, 64): "float32", (64, 32): "bfloat16"}, dtypes
    out = run_bundle_emulated(result.cuda_source, result.manifest, _weights_blob(result.path), [x.numpy(), y.numpy()])
    assert_matches_eager(out, ref, rtol=TOLERANCE["bf16"])


def test_fp16_weights_out_of_range_are_refused(tmp_path):
    """A weight fp16 cannot hold (|w| > 65504) would turn to inf on the GPU: the build stops and
    says what to do; bf16 (float32's range) takes it."""
    import torch

    import mlpack
    from mlpack.errors import BuildError

    lin = torch.nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight[3, 5] = 1e5
    x = torch.randn(2, 16)
    with pytest.raises(BuildError, match=r"holds 100000, beyond float16's range .*--precision bf16"):
        mlpack.build(lin.eval(), (x,), tmp_path / "a.bundle", target="cuda", precision="fp16", cuda_sass=())
    result = mlpack.build(lin.eval(), (x,), tmp_path / "b.bundle", target="cuda", precision="bf16", cuda_sass=())
    assert "bfloat16" in {w["dtype"] for w in result.manifest["weights"]}


def test_bfloat16_rounding_is_nearest_even():
    import numpy as np

    from mlpack.targets.cuda.codegen import narrow_weight

    a = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40],
                 dtype=np.float32)
    bits = narrow_weight("w", a, "bfloat16")
    assert bits.dtype == np.uint16 and bits.shape == a.shape
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    # ties to even: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6
    np.testing.assert_array_equal(back[:6], [1.0, 1.0, 1 + 2 ** -6, -2.5, np.inf, -np.inf])
    assert np.isnan(back[6]) and back[7] == 0 and np.signbit(back[8]) and back[9] > 0
    import torch

    ref = torch.from_numpy(a).bfloat16().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits[~np.isnan(a)], ref[~np.isnan(a)])


_HALF_CHILD = """
import sys
import numpy as np
import mlrt
path, x_path, out_path = sys.argv[1:4]
m = mlrt.load(path, device="cuda:0")
print("LOADED", m.device_bytes)
y = m.run(np.load(x_path))
y = m.run(np.load(x_path))  # the replayed graph
np.save(out_path, y)
print("DONE")
"""


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_runtime_runs_half_weight_bundles_on_the_stand_in_driver(precision, fake_driver, cuda_dir, tmp_path):
    """mlrt's CUDA backend loads a half-weight bundle (bf16: format version 3), uploads its
    weights section (half the fp32 build's device bytes) and runs it: the stand-in libcuda.so.1 of
    test_cuda_runtime.py executes the bundle's generated kernels through the host emulation."""
    import os

    import numpy as np
    import torch

    import mlpack
    import zoo
    from emulate import Emulation, ptx_key

    model, inputs = zoo.make("small_cnn")
    with torch.no_grad():
        reference = flat_outputs(model(*inputs))
    path = tmp_path / f"cnn-{precision}.bundle"
    result = mlpack.build(model, inputs, path, target="cuda", precision=precision, cuda_sass=())  # PTX: emulated
    emulation = tmp_path / "emulation"
    emulation.mkdir()
    (tmp_path / "work").mkdir()
    Emulation(result.cuda_source, result.manifest["targets"]["cuda"]["launches"], tmp_path / "work",
              so=emulation / f"{ptx_key(_ptx(path))}.so")
    np.save(tmp_path / "x.npy", inputs[0].numpy())
    env = {**os.environ, "LD_LIBRARY_PATH": f"{fake_driver}:{os.environ.get('LD_LIBRARY_PATH', '')}",
           "FAKE_CUDA_STATS": "1", "FAKE_CUDA_EMULATION": str(emulation), "FAKE_CUDA_VERSION": "13000"}
    proc = subprocess.run([sys.executable, "-c", _HALF_CHILD, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stdout + proc.stderr
    assert "FAKE_CUDA_STATS" in proc.stderr and "FAKE_CUDA_LEAK" not in proc.stderr, proc.stderr
    # device memory at load: the weights section, as stored (no context yet)
    loaded = int(proc.stdout.split("LOADED ")[1].split()[0])
    assert loaded == _weights_section_bytes(path)
    full, _, _ = build_cuda("small_cnn", "fp32", cuda_dir)
    assert loaded < 0.51 * _weights_section_bytes(full.path)
    assert_matches_eager([np.load(tmp_path / "y.npy")], reference, rtol=TOLERANCE[precision])


def test_bfloat16_weights_need_format_version_3(cuda_dir, tmp_path):
    """A manifest may say bfloat16 only for weights, and only in a version-3 bundle: the runtime
    refuses one that claims a lower version (a runtime from before version 3 refuses the real one
    by its header: "format version 3 is newer than this runtime supports (2)")."""
    import json

    import mlrt
    from mlpack import bundle as bundle_fmt

    result, _, _ = build_cuda("small_cnn", "bf16", cuda_dir)
    info = bundle_fmt.read_bundle(result.path)
    sections = [(s.name, bundle_fmt.section_bytes(result.path, s.name), s.alignment) for s in info.sections
                if s.name != "manifest"]

    def rewrite(edit, name):
        manifest = json.loads(json.dumps(info.manifest))
        edit(manifest)
        bundle_fmt.write_bundle(tmp_path / name, manifest, sections)
        return tmp_path / name

    for device in ("cpu", "cuda:0"):  # the manifest is checked before any driver is touched
        with pytest.raises(mlrt.Error, match=r"weights\[0\]: dtype 'bfloat16' needs bundle format version 3, "
                                             r"the header says 2"):
            mlrt.load(rewrite(lambda m: m.update(format_version=2), "v2.bundle"), device=device)
    with pytest.raises(mlrt.Error, match=r"inputs\[0\]: unknown dtype 'bfloat16'"):
        mlrt.load(rewrite(lambda m: m["inputs"][0].update(dtype="bfloat16"), "in.bundle"), device="cuda:0")
    with pytest.raises(mlrt.Error, match="nbytes does not match dtype x shape"):
        mlrt.load(rewrite(lambda m: m["weights"][0].update(nbytes=m["weights"][0]["nbytes"] * 2), "nb.bundle"),
                  device="cuda:0")
    proc = subprocess.run([sys.executable, "-m", "mlpack.cli", "inspect", str(result.path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "format v3" in proc.stdout, proc.stdout + proc.stderr
    assert re.search(r"weights: 8 tensors, .* \(bfloat16 [\d.]+ MiB, float32 [\d.]+ MiB\)", proc.stdout), proc.stdout


# --------------------------------------------------------------------------- on a real GPU


GPU_CASES = [("mlp", "fp32"), ("small_cnn", "fp32"), ("mobilenet_v2", "fp32"), ("encoder", "fp32"),
             ("resnet18", "fp32"), ("small_cnn", "tf32"), ("small_cnn", "fp16"), ("small_cnn", "bf16"),
             ("resnet18", "tf32"), ("encoder", "bf16"), ("resnet18", "fp16"), ("mobilenet_v2", "bf16")]


@pytest.mark.skipif(not HAS_GPU, reason="needs a real NVIDIA GPU and driver (libcuda.so.1)")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_half_weights_halve_device_memory(precision, cuda_dir):
    import mlrt

    half, _, _ = build_cuda("mobilenet_v2", precision, cuda_dir)
    full, _, _ = build_cuda("mobilenet_v2", "fp32", cuda_dir)
    at_load = [mlrt.load(str(b.path), device="cuda:0").device_bytes for b in (half, full)]
    assert at_load == [_weights_section_bytes(half.path), _weights_section_bytes(full.path)]
    assert at_load[0] < 0.55 * at_load[1]


@pytest.mark.skipif(not HAS_GPU, reason="needs a real NVIDIA GPU and driver (libcuda.so.1)")
@pytest.mark.parametrize("name,precision", GPU_CASES)
def test_gpu_run_matches_eager(name, precision, cuda_dir):
    import mlrt

    result, inputs, reference = build_cuda(name, precision, cuda_dir)
    model = mlrt.load(str(result.path), device="cuda:0")
    for _ in range(3):  # first run captures the CUDA graph, later runs replay it
        assert_matches_eager(model.run_flat(*inputs), reference, rtol=TOLERANCE[precision])
