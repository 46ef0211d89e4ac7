"""aarch64 codegen: a planned program -> LLVM IR (lower/llvm_codegen.py, shared with x86_64) ->
objects for aarch64-linux-gnu at a named level (llvmlite's LLVM has the AArch64 backend) -> a PIC
shared object linked with targets/cpu_kernels/*.c (shared with x86_64: their NEON blocks here) by a
C compiler for aarch64 Linux: a cross compiler on any other machine (aarch64-linux-gnu-gcc, or
$MLPACK_AARCH64_CC), the system's on an aarch64 one.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from ...errors import BuildError
from ...lower.llvm_codegen import CpuCode, compile_objects, to_llvm_ir
from ...lower.native_link import link_shared_object
from ...lower.program import PlannedProgram, hooks

TRIPLE = "aarch64-unknown-linux-gnu"
# The CPU targets' one set of kernel sources (x86_64 links the same folder).
KERNELS_DIR = Path(__file__).parent.parent / "cpu_kernels"
# The microkernels cpu_kernels/*.c define (mlrt_kernels.h): the same entry points as x86_64's.
KERNELS = frozenset({"mlrt_matmul_f32", "mlrt_conv2d_f32", "mlrt_conv2d_packed_f32", "mlrt_depthwise_conv2d_f32",
                     "mlrt_depthwise_mult_conv2d_f32", "mlrt_conv2d_winograd_f32", "mlrt_conv2d_small_f32",
                     "mlrt_conv2d_grouped_f32", "mlrt_conv3d_f32", "mlrt_pool2d_f32"})

_V8_2 = ["fp", "asimd", "crc32", "atomics", "asimdrdm"]
_CORE_V8_2 = [*_V8_2, "fphp", "asimdhp", "asimddp", "lrcpc", "dcpop"]


class Level:
    """A --cpu level: LLVM's CPU and features, the C compiler's flags, and the features (Linux
    HWCAP names, as /proc/cpuinfo lists them) the runtime must find on the CPU."""

    def __init__(self, llvm_cpu: str, llvm_features: str, cc_flags: list[str], features: list[str], note: str):
        self.llvm_cpu, self.llvm_features, self.cc_flags, self.features, self.note = (
            llvm_cpu, llvm_features, cc_flags, features, note)


# What a level's code may use must be in its features: LLVM and gcc emit any instruction the
# level has (half-precision arithmetic at fphp, SVE loops at neoverse-v1), and the runtime
# refuses a CPU whose HWCAP lacks one.
CPU_LEVELS = {
    "aarch64": Level("generic", "+neon,+fp-armv8", ["-march=armv8-a"], ["fp", "asimd"],
                     "any 64-bit ARM (ARMv8-A with NEON): Raspberry Pi 3/4, every server core"),
    "armv8-a": Level("generic", "+neon,+fp-armv8", ["-march=armv8-a"], ["fp", "asimd"], "the same as aarch64"),
    "armv8.2-a": Level("generic", "+v8.2a,+neon,+fp-armv8", ["-march=armv8.2-a"], _V8_2, "ARMv8.2-A"),
    "armv8.2-a+dotprod": Level("generic", "+v8.2a,+neon,+fp-armv8,+dotprod", ["-march=armv8.2-a+dotprod"],
                               [*_V8_2, "asimddp"], "ARMv8.2-A with the dot-product instructions"),
    "cortex-a72": Level("cortex-a72", "", ["-mcpu=cortex-a72"], ["fp", "asimd", "crc32"], "Raspberry Pi 4"),
    "cortex-a76": Level("cortex-a76", "", ["-mcpu=cortex-a76"], _CORE_V8_2, "Raspberry Pi 5"),
    "cortex-a78": Level("cortex-a78", "", ["-mcpu=cortex-a78"], _CORE_V8_2, "NVIDIA Jetson Orin (Cortex-A78AE)"),
    "neoverse-n1": Level("neoverse-n1", "", ["-mcpu=neoverse-n1"], _CORE_V8_2, "AWS Graviton2, Ampere Altra"),
    "neoverse-v1": Level("neoverse-v1", "", ["-mcpu=neoverse-v1"],
                         [*_CORE_V8_2, "sve", "bf16", "i8mm"], "AWS Graviton3 (SVE)"),
}
DEFAULT_CPU = "aarch64"


def cross_compiler() -> str:
    """The C compiler that builds and links aarch64 Linux code here, or a BuildError saying what to
    install."""
    cc = os.environ.get("MLPACK_AARCH64_CC")
    if not cc:
        cc = "cc" if platform.machine() in ("aarch64", "arm64") else "aarch64-linux-gnu-gcc"
    if shutil.which(cc) is None:
        raise BuildError(
            f"building for aarch64 needs a C compiler for aarch64 Linux to link the microkernels: {cc!r} is not "
            "on PATH. Install the cross toolchain (Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu "
            "libc6-dev-arm64-cross) or set MLPACK_AARCH64_CC to one (e.g. clang --target=aarch64-linux-gnu "
            "wrapped in a script)")
    return cc


def compile_cpu(planned: PlannedProgram, cpu: str = DEFAULT_CPU, dump=None, stage=None) -> CpuCode:
    """A planned program -> an aarch64 shared object. `dump(name, text)` sees the IR after each
    step; `stage(name)` is a context manager timing each step (codegen, link)."""
    level = CPU_LEVELS[cpu]
    cc = cross_compiler()  # before the codegen's seconds: a missing toolchain is the first thing said
    dump, stage = hooks(dump, stage)
    with stage("codegen"):
        llvm_ir, call = to_llvm_ir(planned, KERNELS, "aarch64", dump)
        objs = compile_objects(llvm_ir, TRIPLE, level.llvm_cpu, level.llvm_features)
    with stage("link"):
        so = link_shared_object(objs, planned.num_args, cc, level.cc_flags, KERNELS_DIR,
                                f"the aarch64 C compiler {cc!r} is not installed", call)
    return CpuCode("aarch64", so, planned.memory_plan, cpu, list(level.features), llvm_ir, planned.kernels,
                   kernel_isas=["neon"])
