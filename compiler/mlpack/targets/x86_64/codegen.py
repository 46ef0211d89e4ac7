"""x86-64 codegen: a planned program -> LLVM IR (lower/llvm_codegen.py, shared by the CPU targets)
-> objects for x86_64 at a named level (llvmlite) -> a PIC shared object linked with kernels/*.c
by the system C compiler (link.py).
"""

from __future__ import annotations

from ...lower.llvm_codegen import CpuCode, compile_objects, to_llvm_ir
from ...lower.program import PlannedProgram, hooks
from .link import KERNELS, link

# Named x86-64 micro-architecture levels -> the CPU features the runtime must find (cpuid names).
CPU_LEVELS = {
    "x86-64": [],
    "x86-64-v2": ["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"],
    "x86-64-v3": ["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "bmi", "bmi2", "f16c", "fma",
                  "lzcnt", "movbe"],
}
DEFAULT_CPU = "x86-64-v3"
TRIPLE = "x86_64-unknown-linux-gnu"


def compile_cpu(planned: PlannedProgram, cpu: str = DEFAULT_CPU, dump=None, stage=None) -> CpuCode:
    """A planned program -> a shared object. `dump(name, text)` sees the IR after each step;
    `stage(name)` is a context manager timing each step (codegen, link)."""
    dump, stage = hooks(dump, stage)
    with stage("codegen"):
        llvm_ir, call = to_llvm_ir(planned, KERNELS, "x86_64", dump)
        objs = compile_objects(llvm_ir, TRIPLE, cpu)
    with stage("link"):
        so = link(objs, planned.num_args, cpu, call)
    # With AVX2 the GEMM also carries AVX-512F register tiles, used where the CPU has them.
    isas = ["avx2", "avx512f"] if "avx2" in CPU_LEVELS[cpu] else ["c"]
    return CpuCode("x86_64", so, planned.memory_plan, cpu, CPU_LEVELS[cpu], llvm_ir, planned.kernels, isas)
