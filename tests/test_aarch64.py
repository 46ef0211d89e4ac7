"""aarch64 bundles built on this x86-64 machine, run under user-mode emulation (qemu-aarch64) by
the cross-built C++ sample (mlrt_run, cmake/aarch64-linux-gnu.cmake), and mixed x86-64 + aarch64
bundles run both ways: natively here by the Python binding, and under qemu.

Needs the cross toolchain and qemu (scripts/setup.sh installs them on CI: gcc/g++-aarch64-linux-gnu,
libc6-dev-arm64-cross, qemu-user); without them every test here skips, saying what is missing.
qemu runs the code at a fraction of native speed, so the models are the zoo's small ones plus
ResNet-18 (about a minute of emulation in all) and the kernel checks (about a minute)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_matches_eager, flat_outputs

ROOT = Path(__file__).parent.parent
SYSROOT = Path("/usr/aarch64-linux-gnu")
KERNELS = ROOT / "compiler" / "mlpack" / "targets" / "cpu_kernels"  # both CPU targets' C kernels


def _missing() -> list[str]:
    tools = ["aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64", "cmake"]
    out = [t for t in tools if shutil.which(t) is None]
    if not (SYSROOT / "lib" / "libc.so.6").exists():
        out.append(f"the aarch64 sysroot {SYSROOT} (libc6-dev-arm64-cross)")
    return out


pytestmark = pytest.mark.skipif(bool(_missing()), reason=f"needs {', '.join(_missing())} (scripts/setup.sh installs them)")


def flat(out) -> list[np.ndarray]:
    """mlrt's outputs (an array, or tuples / lists / dicts of them) as a flat list."""
    if isinstance(out, np.ndarray):
        return [out]
    items = out.values() if isinstance(out, dict) else out
    return [a for item in items for a in flat(item)]


def qemu(*args: str, cpu: str | None = None) -> list[str]:
    return ["qemu-aarch64", *(["-cpu", cpu] if cpu else []), "-L", str(SYSROOT), *args]


@pytest.fixture(scope="module")
def mlrt_run_a64(tmp_path_factory) -> Path:
    """libmlrt and mlrt_run cross-built for aarch64 with the repo's toolchain file, warning-free
    (the CUDA executor included: it dlopens libcuda, so no CUDA at build time)."""
    build = tmp_path_factory.mktemp("aarch64-build")
    configure = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'aarch64-linux-gnu.cmake'}",
         "-DCMAKE_BUILD_TYPE=Release", "-DMLRT_BUILD_TOOLS=ON", "-DMLRT_BUILD_PYTHON=OFF", "-DMLRT_BUILD_TRITON=OFF",
         "-DCMAKE_CXX_FLAGS=-Werror"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    proc = subprocess.run(["cmake", "--build", str(build), "-j2", "--target", "mlrt_run"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    exe = build / "samples" / "cpp" / "mlrt_run"
    assert exe.read_bytes()[18:20] == struct.pack("<H", 183)  # ELF e_machine: EM_AARCH64
    return exe


def run_qemu(exe: Path, bundle: Path, inputs: list[np.ndarray], tmp_path: Path, cpu: str | None = None):
    """mlrt_run under qemu: (completed process, outputs)."""
    args = []
    for i, a in enumerate(inputs):
        np.save(tmp_path / f"in{i}.npy", a)
        args += ["-i", str(tmp_path / f"in{i}.npy")]
    for old in tmp_path.glob("out*.npy"):
        old.unlink()
    proc = subprocess.run(qemu(str(exe), str(bundle), *args, "-o", str(tmp_path / "out"), cpu=cpu),
                          capture_output=True, text=True, timeout=900)
    outs, i = [], 0
    while (tmp_path / f"out{i}.npy").exists():
        outs.append(np.load(tmp_path / f"out{i}.npy"))
        i += 1
    return proc, outs


_BUILT: dict = {}


def build(name: str, cpu: str, tmp_path_factory):
    """A zoo model built for `cpu`, once per module: (bundle, inputs, eager reference)."""
    import torch

    import mlpack
    import zoo

    key = (name, cpu)
    if key not in _BUILT:
        model, inputs = zoo.make(name)
        with torch.no_grad():
            reference = flat_outputs(model(*inputs))
        path = tmp_path_factory.mktemp("a64-bundles") / f"{name}.bundle"
        mlpack.build(model, inputs, path, cpu=cpu)
        _BUILT[key] = (path, [x.numpy() for x in inputs], reference)
    return _BUILT[key]


MIXED = "x86-64-v3,aarch64"
# Small enough to emulate; each is one mixed bundle, run both ways.
MODELS = ["mlp", "small_cnn", "encoder", "mobilenet_v2", "resnet18"]


@pytest.mark.parametrize("name", MODELS)
def test_mixed_bundle_matches_eager_on_x86_and_under_qemu(name, mlrt_run_a64, tmp_path, tmp_path_factory):
    import mlrt

    bundle, inputs, reference = build(name, MIXED, tmp_path_factory)
    variants = mlrt.load(bundle).manifest["targets"]["cpu"]["variants"]
    assert [(v["arch"], v["cpu"], v["section"]) for v in variants] == [
        ("x86_64", "x86-64-v3", "cpu.so"), ("aarch64", "aarch64", "cpu.v1.so")]
    # One weights section, one plan: the variants share the planned program.
    from mlpack.bundle import read_bundle

    sections = [s.name for s in read_bundle(bundle).sections]
    assert sections.count("weights") == 1 and {"cpu.so", "cpu.v1.so"} <= set(sections)

    native = mlrt.load(bundle)
    assert native.cpu_variant == "x86-64-v3 (x86_64)"
    assert_matches_eager(flat(native.run(*inputs)), reference)

    proc, outs = run_qemu(mlrt_run_a64, bundle, inputs, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cpu code: aarch64 (aarch64)" in proc.stdout
    assert_matches_eager(outs, reference)


def test_aarch64_only_bundle_is_refused_on_x86_naming_both(tmp_path_factory):
    import mlrt

    bundle, _, _ = build("small_cnn", "neoverse-n1", tmp_path_factory)
    with pytest.raises(mlrt.Error) as e:
        mlrt.load(bundle)
    message = str(e.value)
    assert "FAILED_PRECONDITION" in message or "neoverse-n1 (aarch64)" in message
    assert "neoverse-n1 (aarch64): code for aarch64" in message
    assert "this CPU: x86_64 with" in message


def test_level_runs_where_hwcap_has_its_features_and_is_refused_where_not(mlrt_run_a64, tmp_path, tmp_path_factory):
    """neoverse-n1 code needs ARMv8.2 atomics, dot product, fp16...: qemu's default CPU ('max')
    has them; a Cortex-A53 (ARMv8.0) does not, and the runtime reads that from HWCAP."""
    bundle, inputs, reference = build("small_cnn", "neoverse-n1", tmp_path_factory)
    proc, outs = run_qemu(mlrt_run_a64, bundle, inputs, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cpu code: neoverse-n1 (aarch64)" in proc.stdout
    assert_matches_eager(outs, reference)

    proc, outs = run_qemu(mlrt_run_a64, bundle, inputs, tmp_path, cpu="cortex-a53")
    assert proc.returncode == 1 and not outs
    assert "FAILED_PRECONDITION" in proc.stderr
    assert re.search(r"neoverse-n1 \(aarch64\): needs CPU features this machine lacks: .*atomics.*asimddp", proc.stderr)
    assert "this CPU: aarch64 with fp, asimd" in proc.stderr


def test_x86_only_bundle_is_refused_under_qemu(mlrt_run_a64, tmp_path, tmp_path_factory):
    bundle, inputs, _ = build("mlp", "x86-64-v3", tmp_path_factory)
    proc, _ = run_qemu(mlrt_run_a64, bundle, inputs, tmp_path)
    assert proc.returncode == 1
    assert "x86-64-v3 (x86_64): code for x86_64" in proc.stderr and "this CPU: aarch64 with" in proc.stderr


def test_variant_order_decides_and_a_later_variant_is_taken_when_the_first_cannot_run(
        mlrt_run_a64, tmp_path, tmp_path_factory):
    """aarch64 first: x86 still loads (the second variant); an older x86 runtime would refuse it
    cleanly (targets.cpu is the aarch64 variant)."""
    import mlrt

    bundle, inputs, reference = build("mlp", "neoverse-n1,aarch64,x86-64", tmp_path_factory)
    m = mlrt.load(bundle)
    assert m.cpu_variant == "x86-64 (x86_64)"
    assert_matches_eager(flat(m.run(*inputs)), reference)
    proc, outs = run_qemu(mlrt_run_a64, bundle, inputs, tmp_path, cpu="cortex-a53")
    assert proc.returncode == 0, proc.stderr
    assert "cpu code: aarch64 (aarch64)" in proc.stdout
    assert_matches_eager(outs, reference)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:len(b) // 2], "header says the file is"),
    (lambda b: b[:40], "shorter than the 64-byte header"),
    ("code", "fails its sha256 check"),
    ("manifest", "fails its sha256 check"),
])
def test_malformed_bundles_are_refused_under_qemu(damage, message, mlrt_run_a64, tmp_path, tmp_path_factory):
    from mlpack.bundle import read_bundle

    bundle, inputs, _ = build("mlp", MIXED, tmp_path_factory)
    data = bytearray(bundle.read_bytes())
    if isinstance(damage, str):
        section = next(s for s in read_bundle(bundle).sections if s.name == ("cpu.v1.so" if damage == "code" else "manifest"))
        data[section.offset + section.size // 2] ^= 0x40
    else:
        data = damage(bytes(data))
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(bytes(data))
    proc, outs = run_qemu(mlrt_run_a64, bad, inputs, tmp_path)
    assert proc.returncode == 1 and not outs
    assert "DATA_LOSS" in proc.stderr and message in proc.stderr, proc.stderr


def test_variant_manifest_errors(tmp_path, tmp_path_factory):
    """A manifest whose targets.cpu disagrees with variants[0], or names a missing section, is
    refused (natively; the reader is the same code on both architectures)."""
    import mlrt
    from test_runtime import _rewrite_manifest

    bundle, _, _ = build("mlp", MIXED, tmp_path_factory)
    for edit, message in [
        (lambda m: m["targets"]["cpu"].update(cpu="x86-64"), "targets.cpu disagrees with targets.cpu.variants"),
        (lambda m: m["targets"]["cpu"]["variants"][1].update(section="cpu.v7.so"), "code section 'cpu.v7.so' is missing"),
        (lambda m: m["targets"]["cpu"].update(variants=[]), "targets.cpu.variants must be an array"),
    ]:
        dst = tmp_path / "edited.bundle"
        _rewrite_manifest(bundle, dst, edit)
        with pytest.raises(mlrt.Error, match=re.escape(message)):
            mlrt.load(dst)


def test_inspect_lists_the_variants(tmp_path_factory):
    bundle, _, _ = build("mlp", MIXED, tmp_path_factory)
    from click.testing import CliRunner

    from mlpack.cli import main

    out = CliRunner().invoke(main, ["inspect", str(bundle)]).output
    assert "target cpu: 2 code variants" in out
    assert "x86-64-v3 (x86_64) in cpu.so needs [" in out and "aarch64 (aarch64) in cpu.v1.so needs [fp, asimd]" in out


def test_missing_cross_compiler_is_a_clear_build_error(tmp_path, monkeypatch):
    import torch

    import mlpack
    from mlpack.errors import BuildError

    monkeypatch.setenv("MLPACK_AARCH64_CC", "no-such-aarch64-gcc")
    with pytest.raises(BuildError, match=r"'no-such-aarch64-gcc' is not on PATH.*apt-get install gcc-aarch64-linux-gnu"):
        mlpack.build(torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),), tmp_path / "m.bundle", cpu="aarch64")


def test_unknown_cpu_level_names_every_level(tmp_path):
    import torch

    import mlpack
    from mlpack.errors import BuildError

    with pytest.raises(BuildError, match=r"unknown --cpu level 'armv9-z'.*x86_64: x86-64.*aarch64: aarch64.*neoverse-n1"):
        mlpack.build(torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),), tmp_path / "m.bundle", cpu="x86-64-v3,armv9-z")


def _entry_points(header: Path) -> dict[str, str]:
    text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.S)
    return {m.group(1): " ".join(m.group(2).split()) for m in re.finditer(r"\bvoid (mlrt_\w+_f32)\(([^;]*)\);", text)}


def test_aarch64_links_the_x86_64_kernel_sources():
    """Both CPU targets link one set of kernel sources (targets/cpu_kernels, ISA blocks inside) and
    may call the same entry points, each declared in its header."""
    from mlpack.targets.aarch64.codegen import KERNELS as A64
    from mlpack.targets.aarch64.codegen import KERNELS_DIR as A64_DIR
    from mlpack.targets.x86_64.link import KERNELS as X86
    from mlpack.targets.x86_64.link import KERNELS_DIR as X86_DIR

    assert A64 == X86
    assert A64_DIR.resolve() == X86_DIR.resolve()
    assert set(A64) <= set(_entry_points(KERNELS / "mlrt_kernels.h"))


@pytest.mark.parametrize("check", ["conv_check", "depthwise_check", "gemm_check"])
def test_aarch64_kernels_match_the_reference_loops_under_qemu(check, tmp_path):
    """tests/kernels_c's reference checks (the same ones the x86 kernels pass) against the kernels
    cross-compiled for aarch64 (their NEON blocks: GEMM tile, GEMV, depthwise) and emulated."""
    exe = tmp_path / check
    sources = [ROOT / "tests" / "kernels_c" / f"{check}.c",
               *(KERNELS / f for f in ("conv.c", "gemm.c", "host.c", "winograd.c", "pool.c"))]
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                    f"-I{KERNELS}", *map(str, sources), "-o", str(exe), "-lm"], check=True)
    run = subprocess.run(qemu(str(exe)), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout[-2000:] + run.stderr[-2000:]
    if check == "gemm_check":
        assert run.stdout.split()[-1] == "neon", run.stdout  # mlrt_kernel_isa: the NEON blocks were compiled


def test_dynamic_mixed_bundle_runs_both_ways(mlrt_run_a64, tmp_path):
    """A dynamic bundle (a program per bucket) with two CPU variants: programs[n].variants name each
    variant's section; x86 runs variant 0's programs, qemu variant 1's, at a bucket size and between."""
    import torch

    import mlpack
    import mlrt
    import zoo

    model, (x,) = zoo.make("mlp")
    bundle = tmp_path / "dyn.bundle"
    mlpack.build(model, (x,), bundle, cpu=MIXED, dynamic=["x:0=1..4"])
    manifest = mlrt.load(bundle).manifest
    for n, program in enumerate(manifest["programs"]):
        assert program["variants"] == [{"section": f"cpu.p{n}", "entry": "mlrt_entry"},
                                       {"section": f"cpu.p{n}.v1", "entry": "mlrt_entry"}]
    assert [v["arch"] for v in manifest["targets"]["cpu"]["variants"]] == ["x86_64", "aarch64"]
    m = mlrt.load(bundle)
    for batch in (3, 4):
        xs = torch.randn(batch, x.shape[1], generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            reference = flat_outputs(model(xs))
        assert_matches_eager(flat(m.run(xs.numpy())), reference)
        proc, outs = run_qemu(mlrt_run_a64, bundle, [xs.numpy()], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "cpu code: aarch64 (aarch64)" in proc.stdout
        assert_matches_eager(outs, reference)


def test_jetson_bundle_aarch64_cpu_with_cuda_sm_87(mlrt_run_a64, tmp_path):
    """A Jetson Orin bundle: aarch64 CPU code plus CUDA PTX and an sm_87 cubin (--cuda-sass 87).
    Only the CPU side can run here (under qemu); the CUDA side is built and checked, not run."""
    import torch

    import mlpack
    from mlpack.bundle import read_bundle
    from mlpack.targets.cuda.codegen import find_nvcc, find_ptxas

    if not (find_nvcc() and find_ptxas()):
        pytest.skip("the CUDA target needs nvcc and ptxas")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    x = torch.randn(2, 32)
    bundle = tmp_path / "orin.bundle"
    mlpack.build(model, (x,), bundle, target="cpu,cuda", cpu="cortex-a78", cuda_sass=(87,))
    info = read_bundle(bundle)
    assert {"cpu.so", "cuda.ptx", "cuda.sm_87"} <= {s.name for s in info.sections}
    assert info.manifest["targets"]["cpu"]["arch"] == "aarch64"
    assert info.manifest["targets"]["cuda"]["sass"] == {"87": "cuda.sm_87"}
    proc, outs = run_qemu(mlrt_run_a64, bundle, [x.numpy()], tmp_path)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        assert_matches_eager(outs, [model(x).numpy()])


def test_mixed_bundle_is_reproducible(tmp_path, tmp_path_factory):
    """The same model and --cpu list give the same bytes (both variants' code, cross-linked)."""
    import mlpack
    import zoo

    first, _, _ = build("mlp", MIXED, tmp_path_factory)
    model, inputs = zoo.make("mlp")
    again = mlpack.build(model, inputs, tmp_path / "elsewhere" / "mlp.bundle", cpu=MIXED).path
    assert Path(again).read_bytes() == first.read_bytes()
