"""The aarch64 target (`--target cpu` with an aarch64 `--cpu` level: aarch64, armv8.2-a+dotprod,
neoverse-n1, ...): the CPU path shared with x86_64 (lower/llvm_codegen.py) compiled by llvmlite for
aarch64-linux-gnu (codegen.py), linked with the portable C + NEON microkernels in kernels/ by an
aarch64 C compiler (lower/native_link.py). It lowers exactly as x86_64 does (same kernels, same
stored weight layouts, same arena plan), so one bundle can carry both (docs/bundle-format.md,
"CPU code variants")."""

from __future__ import annotations

from ...errors import BuildError
from ...lower.kernel_calls import WEIGHT_LAYOUTS
from ...lower.llvm_codegen import CpuCode
from ...lower.program import LoweringOptions
from .codegen import CPU_LEVELS, DEFAULT_CPU, compile_cpu


class Aarch64:
    """targets.Target for 64-bit ARM Linux CPUs at a named level."""

    name = "cpu"
    arch = "aarch64"
    LEVELS = tuple(CPU_LEVELS)
    weight_layouts = frozenset(WEIGHT_LAYOUTS)  # the kernels read every layout x86_64's read
    packs_weights = True

    def __init__(self, options):
        self.cpu = options.cpu or DEFAULT_CPU
        self.winograd = options.winograd

    def lowering(self, weight_layouts: frozenset) -> LoweringOptions:
        if self.cpu not in CPU_LEVELS:
            raise BuildError(f"unknown aarch64 --cpu {self.cpu!r}: one of {', '.join(CPU_LEVELS)}")
        # The same options as x86_64's: variants of one bundle share the planned program.
        return LoweringOptions(weight_layouts=weight_layouts, winograd=self.winograd, fuse_elementwise=True,
                               noalias_arguments=True, collapse_loop_dims=True)

    def compile(self, planned, dump=None, stage=None) -> CpuCode:
        return compile_cpu(planned, self.cpu, dump, stage)

    def sections_per_program(self) -> int:
        return 1

    def dynamic_manifest(self, codes: list[CpuCode], sizes: list[dict]) -> dict:
        last = codes[-1]  # every program has the same CPU level; the kernel counts are the last one's
        return {**last.cpu_manifest(), "kernels": dict(last.kernels)}
