"""The tools around the runtime: mlpack inspect/bench, the C++ bench and service samples, and the
C++ package consumed through pkg-config (shared and static)."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mlrt
import zoo
from conftest import ROOT, assert_matches_eager, flat_outputs
from mlpack.cli import main as cli


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    model, inputs = zoo.make("small_cnn")
    torch.export.save(torch.export.export(model, inputs), d / "cnn.pt2")
    assert CliRunner().invoke(cli, ["build", str(d / "cnn.pt2"), "-o", str(d / "cnn.bundle"), "-q"]).exit_code == 0
    return d, model, inputs


def test_inspect_human_json_and_plot(cnn_files):
    d, _, _ = cnn_files
    out = CliRunner().invoke(cli, ["inspect", str(d / "cnn.bundle"), "--plot", str(d / "plan.png")])
    assert out.exit_code == 0, out.output
    for needle in ("inputs:", "x: float32[1, 3, 32, 32]", "target cpu: x86-64-v3", "sections:", "weights ",
                   "memory plan: arena", "kernels (cpu): mlrt_conv2d_packed_f32 x3", "signature: none"):
        assert needle in out.output
    assert (d / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    js = CliRunner().invoke(cli, ["inspect", str(d / "cnn.bundle"), "--json"])
    import json

    manifest = json.loads(js.output)
    assert manifest["inputs"][0]["shape"] == [1, 3, 32, 32]


def test_bench_compares_with_eager(cnn_files):
    d, _, _ = cnn_files
    out = CliRunner().invoke(cli, ["bench", str(d / "cnn.bundle"), "-n", "10", "--warmup", "2", "--threads", "1",
                                   "--compare", str(d / "cnn.pt2"), "--no-cold"])
    assert out.exit_code == 0, out.output
    assert "mlrt   min" in out.output and "eager  min" in out.output and "p99" in out.output
    assert "mlrt / eager:" in out.output


def test_bench_cold_start_and_rss(cnn_files):
    d, _, _ = cnn_files
    out = CliRunner().invoke(cli, ["bench", str(d / "cnn.bundle"), "-n", "3", "--warmup", "1"])
    assert out.exit_code == 0, out.output
    assert "cold start" in out.output and "peak RSS" in out.output


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    build = tmp_path_factory.mktemp("samples")
    subprocess.run(["cmake", "-S", str(ROOT / "samples" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    f"-Dmlrt_DIR={mlrt.get_cmake_dir()}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True)
    return build


def test_cpp_bench(cnn_files, samples):
    d, _, _ = cnn_files
    proc = subprocess.run([str(samples / "mlrt_bench"), str(d / "cnn.bundle"), "-n", "20"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "median" in proc.stdout and "p99" in proc.stdout and "load + first run" in proc.stdout


def test_cpp_service_line_protocol(cnn_files, samples):
    d, model, inputs = cnn_files
    x = inputs[0].numpy()
    with torch.no_grad():
        ref = model(*inputs).numpy()
    requests = ["INFO", "RUN r1 " + ",".join(repr(float(v)) for v in x.ravel()), "RUN r2 1,2,3", "RUN r3 1,zz",
                "HELLO", "QUIT"]
    proc = subprocess.run([str(samples / "mlrt_serve"), str(d / "cnn.bundle"), "--workers", "2"],
                          input="\n".join(requests) + "\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == lines[1] == "READY x float32 1x3x32x32"
    replies = {line.split()[1]: line for line in lines[2:]}
    ok = replies["r1"].split()
    assert ok[0] == "OK"
    out = np.array([float(v) for v in ok[3].split(",")], np.float32).reshape(ref.shape)
    assert_matches_eager([out], [ref])
    assert replies["r2"].startswith("ERR r2 expected 3072 values, got 3")
    assert replies["r3"].startswith("ERR r3 not a number")
    assert any(line.startswith("ERR ? unknown command") for line in lines)


@pytest.mark.parametrize("link", ["shared", "static"])
def test_pkg_config_package(cnn_files, tmp_path, link):
    d, model, inputs = cnn_files
    env = {**os.environ, "PKG_CONFIG_PATH": mlrt.get_pkgconfig_dir()}
    cflags = subprocess.run(["pkg-config", "--cflags", "mlrt"], env=env, capture_output=True, text=True, check=True)
    if link == "shared":
        libs = subprocess.run(["pkg-config", "--libs", "mlrt"], env=env, capture_output=True, text=True,
                              check=True).stdout.split()
    else:
        libs = [str(Path(mlrt.get_pkgconfig_dir()).parent / "libmlrt.a"), "-ldl", "-pthread"]
    exe = tmp_path / "runner"
    sample = ROOT / "samples" / "cpp"
    subprocess.run(["c++", "-std=c++17", "-O1", *cflags.stdout.split(), str(sample / "run_bundle.cc"),
                    str(sample / "npy.cc"), *libs, "-o", str(exe)], check=True)
    np.save(tmp_path / "x.npy", inputs[0].numpy())
    proc = subprocess.run([str(exe), str(d / "cnn.bundle"), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        assert_matches_eager([np.load(tmp_path / "y0.npy")], [model(*inputs).numpy()])
    if link == "static":
        ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
        assert "libmlrt" not in ldd


def test_cmake_install_prefix_and_find_package(cnn_files, tmp_path):
    """The runtime built from source with plain CMake, installed to a prefix, and found by a
    consumer through CMAKE_PREFIX_PATH (not only through the wheel's copy)."""
    d, model, inputs = cnn_files
    build, prefix, consumer = tmp_path / "build", tmp_path / "prefix", tmp_path / "consumer"
    for cmd in (["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build), "-j2"],
                ["cmake", "--install", str(build), "--prefix", str(prefix)],
                ["cmake", "-S", str(ROOT / "samples" / "cpp"), "-B", str(consumer), f"-DCMAKE_PREFIX_PATH={prefix}"],
                ["cmake", "--build", str(consumer), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in ("include/mlrt/mlrt.h", "lib/libmlrt.so", "lib/libmlrt.a", "lib/cmake/mlrt/mlrtConfig.cmake",
                 "lib/pkgconfig/mlrt.pc"):
        assert (prefix / path).exists(), path
    np.save(tmp_path / "x.npy", inputs[0].numpy())
    proc = subprocess.run([str(consumer / "mlrt_run"), str(d / "cnn.bundle"), "-i", str(tmp_path / "x.npy"), "-o",
                           str(tmp_path / "y")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        assert_matches_eager([np.load(tmp_path / "y0.npy")], [model(*inputs).numpy()])


def test_build_no_winograd_keeps_plain_conv_weights(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 48, 3, padding=1)).eval()
    inputs = (torch.randn(1, 32, 24, 24),)
    d = tmp_path
    torch.export.save(torch.export.export(model, inputs), d / "cnn.pt2")
    assert CliRunner().invoke(cli, ["build", str(d / "cnn.pt2"), "-q", "-o", str(d / "cnn.bundle")]).exit_code == 0
    args = [str(d / "cnn.pt2"), "-q", "--no-winograd", "-o", str(d / "plain.bundle")]
    assert CliRunner().invoke(cli, ["build", *args]).exit_code == 0
    plain, wino = mlrt.load(d / "plain.bundle"), mlrt.load(d / "cnn.bundle")
    import json

    kernels = {}
    for name in ("plain", "cnn"):
        manifest = json.loads(CliRunner().invoke(cli, ["inspect", str(d / f"{name}.bundle"), "--json"]).output)
        kernels[name] = manifest["targets"]["cpu"]["kernels"]
    assert kernels["plain"]["mlrt_conv2d_packed_f32"] == 2 and "mlrt_conv2d_winograd_f32" not in kernels["plain"]
    assert kernels["cnn"]["mlrt_conv2d_winograd_f32"] == 2
    with torch.no_grad():
        ref = flat_outputs(model(*inputs))
    x = [t.numpy() for t in inputs]
    assert_matches_eager(plain.run_flat(*x), ref)
    assert_matches_eager(wino.run_flat(*x), ref)
    assert (d / "plain.bundle").stat().st_size < (d / "cnn.bundle").stat().st_size  # 16 vs 9 floats per 3x3
