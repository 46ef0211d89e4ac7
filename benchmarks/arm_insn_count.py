"""Instructions per inference, aarch64 against x86-64, as a proxy for speed where no ARM hardware
is at hand: each zoo model is built ONCE as a two-variant bundle (--cpu x86-64-v3,aarch64), then
the same file is run by the C++ sample (mlrt_run, one thread) three ways:
  - aarch64 variant under qemu-aarch64, counted by a qemu plugin (benchmarks/qemu_insn_count.c);
  - x86-64-v3 variant under qemu-x86_64 -cpu max, the same plugin (same counting rules);
  - x86-64-v3 variant natively under valgrind --tool=callgrind (Ir), a cross-check of the above.
Per inference = (count at --repeat R) - (count at --repeat 1), divided by R - 1, so loading and
start-up cancel out. Outputs are checked against eager PyTorch first. It builds with the INSTALLED
mlpack (pip install . after changing kernels), like the tests.

Instruction counts are not time: NEON is 4 lanes where AVX2 is 8 (twice the vector instructions
for the same FLOPs is expected), and nothing here says how fast an ARM core retires them.

    python benchmarks/arm_insn_count.py [--models mlp,small_cnn,mobilenet_v2,resnet18] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
BUILD = ROOT / "build"
SYSROOT = "/usr/aarch64-linux-gnu"


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def tools() -> tuple[Path, Path, Path]:
    """(aarch64 mlrt_run, x86-64 mlrt_run, the plugin), built under build/ if missing."""
    a64, x86 = BUILD / "aarch64", BUILD / "x86-tools"
    common = ["-DCMAKE_BUILD_TYPE=Release", "-DMLRT_BUILD_TOOLS=ON", "-DMLRT_BUILD_PYTHON=OFF",
              "-DMLRT_BUILD_TRITON=OFF"]
    sh(["cmake", "-S", str(ROOT), "-B", str(a64), f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'aarch64-linux-gnu.cmake'}",
        *common])
    sh(["cmake", "--build", str(a64), "-j2", "--target", "mlrt_run"])
    sh(["cmake", "-S", str(ROOT), "-B", str(x86), *common])
    sh(["cmake", "--build", str(x86), "-j2", "--target", "mlrt_run"])
    plugin = BUILD / "qemu_insn_count.so"
    sh([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O2", str(ROOT / "benchmarks" / "qemu_insn_count.c"), "-o",
        str(plugin)])
    return a64 / "samples" / "cpp" / "mlrt_run", x86 / "samples" / "cpp" / "mlrt_run", plugin


def count(prefix: list[str], exe: Path, bundle: Path, args: list[str], repeat: int, pattern: str) -> int:
    env = {**os.environ, "MLRT_NUM_THREADS": "1"}
    proc = subprocess.run([*prefix, str(exe), str(bundle), *args, "--repeat", str(repeat)], capture_output=True,
                          text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return int(re.search(pattern, proc.stderr).group(1).replace(",", ""))


def main() -> None:
    import torch

    import mlpack
    import zoo

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,small_cnn,mobilenet_v2,resnet18")
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args()
    a64_run, x86_run, plugin = tools()
    qemu_a64 = ["qemu-aarch64", "-plugin", str(plugin), "-L", SYSROOT]
    qemu_x86 = ["qemu-x86_64", "-cpu", "max", "-plugin", str(plugin)]
    grind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"] if shutil.which("valgrind") else None
    print("| model | aarch64 (qemu) | x86-64-v3 (qemu) | x86-64-v3 (callgrind) | aarch64 / x86-64 (qemu) |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in opts.models.split(","):
            model, inputs = zoo.make(name)
            bundle = tmp / f"{name}.bundle"
            mlpack.build(model, inputs, bundle, cpu="x86-64-v3,aarch64", progress=None)
            args = []
            for i, x in enumerate(inputs):
                np.save(tmp / f"{name}{i}.npy", x.numpy())
                args += ["-i", str(tmp / f"{name}{i}.npy")]
            with torch.no_grad():
                ref = model(*inputs).numpy()
            for prefix, exe in ((["qemu-aarch64", "-L", SYSROOT], a64_run), ([], x86_run)):  # outputs match eager
                subprocess.run([*prefix, str(exe), str(bundle), *args, "-o", str(tmp / "out")], check=True,
                               capture_output=True)
                np.testing.assert_allclose(np.load(tmp / "out0.npy"), ref, rtol=1e-4,
                                           atol=1e-4 * max(1.0, float(np.abs(ref).max())))
            per = {}
            for key, prefix, exe, pattern in (("a64", qemu_a64, a64_run, r"qemu_insn_count: (\d+)"),
                                              ("x86", qemu_x86, x86_run, r"qemu_insn_count: (\d+)"),
                                              ("grind", grind, x86_run, r"Collected : ([\d,]+)")):
                if prefix is None:
                    continue
                many = count(prefix, exe, bundle, args, opts.repeat, pattern)
                one = count(prefix, exe, bundle, args, 1, pattern)
                per[key] = (many - one) / (opts.repeat - 1)
            grind_col = f"{per['grind'] / 1e6:.4g} M" if "grind" in per else "-"
            print(f"| {name} | {per['a64'] / 1e6:.4g} M | {per['x86'] / 1e6:.4g} M | {grind_col} | "
                  f"{per['a64'] / per['x86']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
