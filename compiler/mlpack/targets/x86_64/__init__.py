"""The x86-64 target (`--target cpu`, `--cpu x86-64*`): LLVM IR from the CPU path shared with
aarch64 (lower/llvm_codegen.py) compiled by llvmlite for x86_64 (codegen.py), linked with the C
microkernels in kernels/ into one shared object (lower/native_link.py)."""

from __future__ import annotations

from ...errors import BuildError
from ...lower.kernel_calls import WEIGHT_LAYOUTS
from ...lower.program import LoweringOptions
from ...lower.llvm_codegen import CpuCode
from .codegen import CPU_LEVELS, DEFAULT_CPU, compile_cpu


class X86_64:
    """targets.Target for x86-64 CPUs at a named micro-architecture level."""

    name = "cpu"
    arch = "x86_64"
    LEVELS = tuple(CPU_LEVELS)
    weight_layouts = frozenset(WEIGHT_LAYOUTS)  # the C kernels read every stored layout
    packs_weights = True

    def __init__(self, options):
        self.cpu = options.cpu or DEFAULT_CPU
        self.winograd = options.winograd

    def lowering(self, weight_layouts: frozenset) -> LoweringOptions:
        if self.cpu not in CPU_LEVELS:
            raise BuildError(f"unknown --cpu {self.cpu!r}: one of {', '.join(CPU_LEVELS)}")
        # Elementwise fusion and collapsed loop dims pay on the CPU's loops (vectorized by LLVM).
        return LoweringOptions(weight_layouts=weight_layouts, winograd=self.winograd, fuse_elementwise=True,
                               noalias_arguments=True, collapse_loop_dims=True)

    def compile(self, planned, dump=None, stage=None) -> CpuCode:
        return compile_cpu(planned, self.cpu, dump, stage)

    def sections_per_program(self) -> int:
        return 1

    def dynamic_manifest(self, codes: list[CpuCode], sizes: list[dict]) -> dict:
        last = codes[-1]  # every program has the same CPU level; the kernel counts are the last one's
        return {**last.cpu_manifest(), "kernels": dict(last.kernels)}
