"""The x86-64 target (`--target cpu`, `--cpu x86-64*`): LLVM IR from the CPU path shared with
aarch64 (lower/llvm_codegen.py) compiled by llvmlite for x86_64 (codegen.py), linked with the C
microkernels in kernels/ into one shared object (link.py)."""

from __future__ import annotations

from ...lower.llvm_codegen import LlvmCpuTarget
from .codegen import CPU_LEVELS, DEFAULT_CPU, compile_cpu


class X86_64(LlvmCpuTarget):
    """targets.Target for x86-64 CPUs at a named micro-architecture level."""

    arch = "x86_64"
    LEVELS = tuple(CPU_LEVELS)
    DEFAULT_CPU = DEFAULT_CPU
    compile_level = staticmethod(compile_cpu)
