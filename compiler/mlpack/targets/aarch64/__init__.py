"""The aarch64 target (`--target cpu` with an aarch64 `--cpu` level: aarch64, armv8.2-a+dotprod,
neoverse-n1, ...): the CPU path shared with x86_64 (lower/llvm_codegen.py) compiled by llvmlite for
aarch64-linux-gnu (codegen.py), linked with the microkernels of targets/cpu_kernels/ (x86_64's
sources: their NEON blocks, else the portable C) by an aarch64 C compiler (lower/native_link.py). It lowers exactly as x86_64 does (same kernels, same
stored weight layouts, same arena plan), so one bundle can carry both (docs/bundle-format.md,
"CPU code variants")."""

from __future__ import annotations

from ...lower.llvm_codegen import LlvmCpuTarget
from .codegen import CPU_LEVELS, DEFAULT_CPU, compile_cpu


class Aarch64(LlvmCpuTarget):
    """targets.Target for 64-bit ARM Linux CPUs at a named level."""

    arch = "aarch64"
    LEVELS = tuple(CPU_LEVELS)
    DEFAULT_CPU = DEFAULT_CPU
    compile_level = staticmethod(compile_cpu)
