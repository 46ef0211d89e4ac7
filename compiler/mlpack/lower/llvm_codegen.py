"""The LLVM path every CPU target shares: a planned program -> parallel loops -> OpenMP regions ->
the LLVM dialect -> LLVM IR text (`to_llvm_ir`), then objects for a target triple
(`compile_objects`, llvm_compile.py). What differs per CPU target (triple, CPU level, its
microkernels, the C toolchain that links them) is the target's; see targets/x86_64 and
targets/aarch64.

The LLVM IR comes from MLIR's own translation (`mlirTranslateModuleToLLVMIRToString`, reached with
ctypes because the wheel has no Python binding for it); llvmlite compiles it. The ExecutionEngine's
object would be non-PIC, large-code-model and host-tuned (TOOLCHAIN-NOTES §1), hence llvmlite.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
from dataclasses import dataclass, field

from ..errors import BuildError
from . import llvm_compile
from .bufferize import run_pipeline
from .kernel_calls import WEIGHT_LAYOUTS
from .loop_reductions import scalar_reductions
from .memory_plan import MemoryPlan, defining_op
from .outline_loops import finish_outlined, merge_identical_nests, outline_loop_nests
from .program import LoweringOptions, PlannedProgram

# Linalg ops left after kernel substitution become parallel loops (reshaped by
# split_parallel_loops), then OpenMP regions, which kernels/openmp_shim.c runs on the mlrt thread
# pool. (`canonicalize` must follow scf-to-openmp: TOOLCHAIN-NOTES §3.)
_TO_PARALLEL_LOOPS = "builtin.module(convert-linalg-to-parallel-loops,canonicalize)"
# bfloat16 <-> float32 casts (the ports of a bfloat16 model, model_io.float32_body) as integer ops:
# LLVM would call __truncsfbf2, which the bundle cannot link. Only run where bf16 occurs (arith-expand
# also rewrites max/min and integer divisions).
_EXPAND_BF16 = "builtin.module(func.func(arith-expand{include-bf16=true}))"
_TO_LLVM = (
    "builtin.module(convert-scf-to-openmp,canonicalize,"
    "lower-affine,convert-scf-to-cf,expand-strided-metadata,lower-affine,"
    "finalize-memref-to-llvm,convert-math-to-llvm,convert-math-to-libm,convert-arith-to-llvm,convert-index-to-llvm,"
    "convert-func-to-llvm{use-bare-ptr-memref-call-conv=true},convert-cf-to-llvm,convert-ub-to-llvm,"
    "convert-openmp-to-llvm,reconcile-unrealized-casts)"
)
# Functions the generated code may call besides the target's microkernels (the names its kernels
# define, passed to check_externals). Anything else (malloc above all) is a compiler bug.
_ALLOWED_EXTERNALS = {"memrefCopy", "memcpy", "memset", "memmove",
                      "__kmpc_fork_call", "__kmpc_global_thread_num",
                      "__kmpc_for_static_init_8u", "__kmpc_for_static_init_8", "__kmpc_for_static_init_4u",
                      "__kmpc_for_static_init_4", "__kmpc_for_static_fini", "__kmpc_barrier"}
_FORK_ARGS = re.compile(r"@__kmpc_fork_call\(ptr @[\w.]+, i32 (\d+),")
_LIBM = re.compile(r"^(exp|expm1|log|log1p|log2|log10|sqrt|cbrt|pow|fmod|erf|erfc|tanh|sinh|cosh|asinh|acosh|atanh|"
                   r"sin|cos|tan|asin|acos|atan|atan2|round|roundeven|trunc|floor|ceil|rint|nearbyint|fabs|copysign|"
                   r"fma|fmin|fmax)f?$")


# Code sections are page aligned (bundle.PAGE; lower/ does not import bundle/).
CODE_ALIGNMENT = 4096


@dataclass
class CpuCode:
    """One program's code for one CPU: a shared object exporting mlrt_entry (native_link.py)."""

    arch: str  # "x86_64" | "aarch64": the manifest's targets.cpu.arch
    shared_object: bytes
    memory_plan: MemoryPlan
    cpu: str  # the --cpu level
    features: list[str]  # what the runtime must find on the CPU (cpuid / HWCAP names)
    llvm_ir: str  # kept for --dump-ir and tests
    kernels: dict  # microkernel name -> number of call sites
    # The instruction sets the microkernels carry, the one used picked at run time from the CPU
    # (informational: the manifest's targets.cpu.kernel_isas)
    kernel_isas: list[str] = field(default_factory=list)

    def cpu_manifest(self) -> dict:
        """What every program of this CPU level needs of the host."""
        m = {"arch": self.arch, "cpu": self.cpu, "features": self.features, "host_abi": 1}
        if self.kernel_isas:
            m["kernel_isas"] = list(self.kernel_isas)
        return m

    # A static bundle: targets.cpu and the section cpu.so.
    def manifest(self) -> dict:
        return {**self.cpu_manifest(), "section": "cpu.so", "entry": "mlrt_entry", "kernels": self.kernels}

    def sections(self) -> list[tuple[str, bytes, int]]:
        return [("cpu.so", self.shared_object, CODE_ALIGNMENT)]

    # A dynamic bundle (format version 2): program n's section cpu.pN, named at the top level of
    # programs[n]; targets.cpu says what every program needs (the target's dynamic_manifest).
    def program_manifest(self, n: int) -> dict:
        return {"section": f"cpu.p{n}", "entry": "mlrt_entry"}

    def program_sections(self, n: int) -> list[tuple[str, bytes, int]]:
        return [(f"cpu.p{n}", self.shared_object, CODE_ALIGNMENT)]


class LlvmCpuTarget:
    """What the CPU targets (targets/x86_64, targets/aarch64) share of targets.Target: a named
    level (LEVELS, DEFAULT_CPU), every stored weight layout (their C kernels read them all), one
    lowering, one section per program. A subclass sets `arch`, `LEVELS`, `DEFAULT_CPU` and
    `compile_level(planned, cpu, dump, stage) -> CpuCode`."""

    name = "cpu"
    arch = ""
    LEVELS: tuple = ()
    DEFAULT_CPU = ""
    weight_layouts = frozenset(WEIGHT_LAYOUTS)
    packs_weights = True

    def __init__(self, options):
        self.cpu = options.cpu or self.DEFAULT_CPU
        self.winograd = options.winograd

    def lowering(self, weight_layouts: frozenset) -> LoweringOptions:
        if self.cpu not in self.LEVELS:
            raise BuildError(f"unknown {self.arch} --cpu {self.cpu!r}: one of {', '.join(self.LEVELS)}")
        # Elementwise fusion and collapsed loop dims pay on the CPU's loops (vectorized by LLVM).
        # The same for every CPU target, so variants of one bundle share the planned program.
        return LoweringOptions(weight_layouts=weight_layouts, winograd=self.winograd, fuse_elementwise=True,
                               noalias_arguments=True, collapse_loop_dims=True)

    def compile(self, planned, dump=None, stage=None) -> CpuCode:
        return self.compile_level(planned, self.cpu, dump, stage)

    @staticmethod
    def compile_level(planned, cpu: str, dump, stage) -> CpuCode:
        raise NotImplementedError

    def sections_per_program(self) -> int:
        return 1

    def dynamic_manifest(self, codes: list[CpuCode], sizes: list[dict]) -> dict:
        last = codes[-1]  # every program has the same CPU level; the kernel counts are the last one's
        return {**last.cpu_manifest(), "kernels": dict(last.kernels)}


# Loops doing fewer innermost iterations than this stay serial: a fork-join costs more than it
# saves. (Counted through the serial reduction loops nested inside, e.g. LayerNorm statistics.)
MIN_PARALLEL_ITERATIONS = 4096
# Keep this many outer iterations parallel; the remaining dimensions run as serial inner loops,
# which LLVM vectorizes (an N-d parallel loop would be collapsed into one index with div/mod).
MIN_OUTER_ITERATIONS = 16


def split_parallel_loops(func_op) -> int:
    """Rewrite each top-level `scf.parallel` so that only its leading dimensions (enough for the
    threads) stay parallel and the rest become nested `scf.for`; small loops become fully serial.
    Returns how many loops stay parallel."""
    from torch_mlir import ir
    from torch_mlir.dialects import scf

    block = func_op.regions[0].blocks[0]
    parallel = 0
    for op in list(block.operations):
        op = op.operation
        if op.name != "scf.parallel" or len(op.results):
            continue
        body = op.regions[0].blocks[0]
        ivs = list(body.arguments)
        n = len(ivs)
        operands = list(op.operands)
        lbs, ubs, steps = operands[:n], operands[n:2 * n], operands[2 * n:3 * n]
        trips = []
        for lb, ub, st in zip(lbs, ubs, steps):
            c = [_index_constant(v) for v in (lb, ub, st)]
            trips.append(None if None in c or c[2] <= 0 else max(0, -(-(c[1] - c[0]) // c[2])))
        if None in trips:
            parallel += 1
            continue  # dynamic bounds: leave as is
        total = _nested_trip_count(body)
        for t in trips:
            total *= t
        keep, outer = 0, 1
        if total >= MIN_PARALLEL_ITERATIONS:
            while keep < n and outer < MIN_OUTER_ITERATIONS:
                outer *= trips[keep]
                keep += 1
        if keep == n:
            parallel += 1
            continue
        index = ir.IndexType.get()
        with ir.InsertionPoint(op), op.location:
            new_ivs = []
            if keep:
                par = scf.ParallelOp([], lbs[:keep], ubs[:keep], steps[:keep], [])
                par_block = par.regions[0].blocks.append(*([index] * keep))
                new_ivs += list(par_block.arguments)
                with ir.InsertionPoint(par_block):
                    terminator = scf.ReduceOp([], 0)
                point = ir.InsertionPoint(terminator)
                parallel += 1
            else:
                point = ir.InsertionPoint(op)
            for d in range(keep, n):
                with point:
                    loop = scf.ForOp(lbs[d], ubs[d], steps[d])
                with ir.InsertionPoint(loop.body):
                    terminator = scf.YieldOp([])
                new_ivs.append(loop.induction_variable)
                point = ir.InsertionPoint(terminator)
        for old, new in zip(ivs, new_ivs):
            old.replace_all_uses_with(new)
        inner_end = terminator
        for inner in list(body.operations)[:-1]:  # all but the scf.reduce terminator
            inner.operation.move_before(inner_end)
        op.erase()
    return parallel


def _nested_trip_count(block) -> int:
    """Iterations of the deepest chain of constant-bound scf.for loops in `block` (1 if none)."""
    best = 1
    for op in block.operations:
        op = op.operation
        if op.name == "scf.for":
            lb, ub, step = (_index_constant(v) for v in list(op.operands)[:3])
            trips = -(-(ub - lb) // step) if None not in (lb, ub, step) and step > 0 else 1
            best = max(best, max(trips, 0) * _nested_trip_count(op.regions[0].blocks[0]))
    return best


def _index_constant(value):
    """The integer an `arith.constant` index Value holds, else None."""
    from torch_mlir import ir

    op = defining_op(value)
    if op is None or op.name != "arith.constant":
        return None
    return ir.IntegerAttr(op.attributes["value"]).value


def translate_to_llvm_ir(module) -> str:
    """MLIR LLVM dialect -> LLVM IR text via the C API of the wheel's aggregate library."""
    import torch_mlir._mlir_libs as libs

    lib = ctypes.CDLL(os.path.join(os.path.dirname(libs.__file__), "libTorchMLIRAggregateCAPI.so"))
    fn = lib.mlirTranslateModuleToLLVMIRToString
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype = ctypes.c_void_p
    get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    op_ptr = get_ptr(module.operation._CAPIPtr, b"torch_mlir.ir.Operation._CAPIPtr")
    out = fn(op_ptr)
    if not out:
        raise BuildError("translating MLIR to LLVM IR failed")
    return ctypes.string_at(out).decode()  # the C string is intentionally not freed: one per build


def check_externals(llvm_ir: str, kernels: frozenset, target: str) -> None:
    """Refuses IR that calls anything but libc's memory functions, libm, the OpenMP entry points
    of openmp_shim.c and `kernels` (the microkernels `target` links)."""
    declared = re.findall(r"^declare [^@]*@([\w.$]+)\(", llvm_ir, flags=re.M)
    bad = [f for f in declared if f.startswith("mlrt_") and f not in kernels]
    if bad:
        raise BuildError(f"the {target} target has no microkernel {', '.join(sorted(bad))} (the model needs it); "
                         "build for another --cpu or add the kernel to that target's kernels/")
    bad = [f for f in declared
           if not (f in _ALLOWED_EXTERNALS or f in kernels or f.startswith("llvm.") or _LIBM.match(f))]
    if bad:
        raise BuildError(f"generated code calls unexpected external function(s): {', '.join(sorted(bad))} "
                         "(heap allocation or a missing runtime library); refusing to build")
    if any(int(n) > 8 for n in _FORK_ARGS.findall(llvm_ir)):
        raise BuildError("internal: a parallel region shares more than 8 arguments (kernels/openmp_shim.c)")


_SPECIAL_FP = re.compile(r"(?<![\w.%@$\"])([+-]?inf|[+-]?qnan|[+-]?nan)(?![\w(])")
_SPECIAL_BITS = {"inf": "0x7FF0000000000000", "-inf": "0xFFF0000000000000", "qnan": "0x7FF8000000000000",
                 "-qnan": "0xFFF8000000000000", "nan": "0x7FF8000000000000", "-nan": "0xFFF8000000000000"}
_SPECIAL_HALF_BITS = {"inf": "0xH7C00", "-inf": "0xHFC00", "qnan": "0xH7E00", "-qnan": "0xHFE00", "nan": "0xH7E00",
                      "-nan": "0xHFE00"}
_NEW_FP_LITERAL = re.compile(r"(?<![\w.%@$])f0x([0-9A-Fa-f]+)\b")


_DECIMAL_FP = re.compile(r"(?<![\w.%@])[-+]?\d\.\d+e[-+]\d+\b")


def legacy_fp_literals(llvm_ir: str) -> str:
    """The wheel's LLVM prints FP constants as `f0x3727C5AC`; llvmlite's LLVM 22.1 only reads the
    classic form (floats and doubles as the 64-bit double pattern `0x...`, halves as `0xH....`)."""

    def repl(m: re.Match) -> str:
        digits = m.group(1)
        if len(digits) == 16:
            return "0x" + digits.upper()
        if len(digits) == 8:
            (value,) = struct.unpack("<f", int(digits, 16).to_bytes(4, "little"))
            return _f(value)
        if len(digits) == 4 and "bfloat" not in llvm_ir:
            return "0xH" + digits.upper()
        raise BuildError(f"cannot translate floating-point literal f0x{digits} for llvmlite")

    llvm_ir = _NEW_FP_LITERAL.sub(repl, llvm_ir)
    # Decimal literals on float-only lines (e.g. a folded `fptrunc double -0.1`, printed as
    # -1.000000e-01): the newer reader wants a float literal exact, so write the float's bits.
    llvm_ir = "\n".join(_DECIMAL_FP.sub(lambda m: _f(float(m.group(0))), line)
                         if "float" in line and "double" not in line else line for line in llvm_ir.split("\n"))
    # Special values: the double pattern also serves float operands (exactly representable); a
    # line of halves only (a float16 model's output casts) takes the half pattern.
    def special(line: str) -> str:
        if not _SPECIAL_FP.search(line):
            return line
        if "half" not in line:
            return _SPECIAL_FP.sub(lambda m: _SPECIAL_BITS[m.group(1).lstrip("+")], line)
        if "float" in line or "double" in line:
            raise BuildError("cannot translate half-precision inf/nan literals for llvmlite")
        return _SPECIAL_FP.sub(lambda m: _SPECIAL_HALF_BITS[m.group(1).lstrip("+")], line)

    return "\n".join(special(line) for line in llvm_ir.split("\n"))


def _f(v: float) -> str:
    """An LLVM IR float constant (the float32 value written as a double bit pattern)."""
    (single,) = struct.unpack("<f", struct.pack("<f", v))
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", single))[0]


# exp, erf and tanh written in LLVM IR, so LLVM inlines and vectorizes them: through libm they are
# scalar calls (transformers' softmax and GELU spent ~10% of their time there). tanhf: Cephes'
# odd polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) above (GELU's tanh form, Mish);
# logf: Cephes' mantissa in [sqrt(1/2), sqrt(2)) and degree-8 polynomial (softplus, Mish). expf: Cephes' range
# reduction and degree-6 polynomial (~1 ulp), 2^n applied as two factors so the whole float range
# including denormal results is covered. Inputs below exp's underflow (a softmax's -inf or
# dtype-min mask) are computed as exp(0) and replaced by 0: clamped instead, every masked lane
# produced a denormal product, slow enough that two small GPT-2 softmaxes took a quarter of
# its time. erff: x * P(x^2) / Q(x^2) on |x| <= 3.92 (beyond it erf rounds to +-1 within 6e-8),
# P of degree 6 and Q of degree 4, fitted to erf's relative error by scripts/fit_erf.py (7e-8 in
# exact arithmetic, 3.4e-7 evaluated in float32). One division and 11 FMAs: the two-branch form it
# replaced (an odd polynomial below 1; exp and a division above; both computed for every lane)
# took 10% of an MLP-Mixer's time in its GELUs.
# Polynomial coefficients, highest degree first (Cephes; erf's fitted as above).
_EXP_POLY = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
             5.0000001201e-1]
_ERF_P = [1.9909396326012185e-08, -1.969367986125181e-06, 1.4434930454578182e-04, 3.801469991442748e-03,
          5.0889616763970004e-02, 2.0222703624988406e-01, 1.128379096976025]  # scripts/fit_erf.py
_ERF_Q = [9.805254987989816e-04, 1.4555695231915449e-02, 1.1596031580568364e-01, 5.125503494013509e-01, 1.0]
_TANH_POLY = [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1]
_LOG_POLY = [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1]


def _horner(name: str, x: str, coeffs: list[float]) -> str:
    """LLVM IR evaluating the polynomial coeffs[0] * x^(n-1) + ... + coeffs[-1] by Horner's rule
    in fma steps %name0, %name1, ...; the result is %name{n-2}."""
    steps, acc = [], _f(coeffs[0])
    for k, c in enumerate(coeffs[1:]):
        steps.append(f"  %{name}{k} = call float @llvm.fma.f32(float {acc}, float {x}, float {_f(c)})")
        acc = f"%{name}{k}"
    return "\n".join(steps)


_VECTOR_MATH = f"""
define internal float @mlrt_expf(float %x) alwaysinline {{
  %c1 = call float @llvm.minnum.f32(float %x, float {_f(88.72283172607421875)})
  %small = fcmp olt float %x, {_f(-103.97208404541015625)}
  %c = select i1 %small, float 0.0, float %c1
  %t = fmul float %c, {_f(1.44269504088896341)}
  %n = call float @llvm.rint.f32(float %t)
  %r0 = call float @llvm.fma.f32(float %n, float {_f(-0.693359375)}, float %c)
  %r = call float @llvm.fma.f32(float %n, float {_f(2.12194440e-4)}, float %r0)
{_horner("p", "%r", _EXP_POLY)}
  %rr = fmul float %r, %r
  %y0 = call float @llvm.fma.f32(float %p4, float %rr, float %r)
  %y = fadd float %y0, {_f(1.0)}
  %ni = fptosi float %n to i32
  %h = ashr i32 %ni, 1
  %l = sub i32 %ni, %h
  %eh = add i32 %h, 127
  %el = add i32 %l, 127
  %bh = shl i32 %eh, 23
  %bl = shl i32 %el, 23
  %sh = bitcast i32 %bh to float
  %sl = bitcast i32 %bl to float
  %v0 = fmul float %y, %sh
  %v = fmul float %v0, %sl
  %big = fcmp ogt float %x, {_f(88.72283172607421875)}
  %v1 = select i1 %big, float 0x7FF0000000000000, float %v
  %v2 = select i1 %small, float 0.0, float %v1
  %nan = fcmp uno float %x, 0.0
  %v3 = select i1 %nan, float %x, float %v2
  ret float %v3
}}

define internal float @mlrt_erff(float %x) alwaysinline {{
  %lo = call float @llvm.maxnum.f32(float %x, float {_f(-3.92)})
  %c = call float @llvm.minnum.f32(float %lo, float {_f(3.92)})
  %z = fmul float %c, %c
{_horner("p", "%z", _ERF_P)}
{_horner("q", "%z", _ERF_Q)}
  %cp = fmul float %c, %p5
  %r0 = fdiv float %cp, %q3
  %r1 = call float @llvm.maxnum.f32(float %r0, float {_f(-1.0)})
  %r2 = call float @llvm.minnum.f32(float %r1, float {_f(1.0)})
  %nan = fcmp uno float %x, 0.0
  %r = select i1 %nan, float %x, float %r2
  ret float %r
}}

define internal float @mlrt_tanhf(float %x) alwaysinline {{
  %a = call float @llvm.fabs.f32(float %x)
  %z = fmul float %x, %x
{_horner("p", "%z", _TANH_POLY)}
  %pz = fmul float %p3, %z
  %near = call float @llvm.fma.f32(float %pz, float %x, float %x)
  %a2 = fmul float %a, {_f(2.0)}
  %e = call float @mlrt_expf(float %a2)
  %d = fadd float %e, {_f(1.0)}
  %q = fdiv float {_f(2.0)}, %d
  %o = fsub float {_f(1.0)}, %q
  %far = call float @llvm.copysign.f32(float %o, float %x)
  %big = fcmp ogt float %a, {_f(0.625)}
  %r = select i1 %big, float %far, float %near
  ret float %r
}}

define internal float @mlrt_logf(float %x) alwaysinline {{
  %sub = fcmp olt float %x, {_f(1.17549435e-38)}
  %xs = fmul float %x, {_f(8388608.0)}
  %xn = select i1 %sub, float %xs, float %x
  %eadj = select i1 %sub, i32 -23, i32 0
  %i = bitcast float %xn to i32
  %eb = lshr i32 %i, 23
  %eb1 = and i32 %eb, 255
  %e0 = sub i32 %eb1, 126
  %e = add i32 %e0, %eadj
  %mi = and i32 %i, 8388607
  %mb = or i32 %mi, 1056964608
  %m = bitcast i32 %mb to float
  %lt = fcmp olt float %m, {_f(0.707106781186547524)}
  %m2 = fadd float %m, %m
  %ma = select i1 %lt, float %m2, float %m
  %t = fsub float %ma, {_f(1.0)}
  %ef = sitofp i32 %e to float
  %ef1 = fsub float %ef, {_f(1.0)}
  %k = select i1 %lt, float %ef1, float %ef
  %z = fmul float %t, %t
{_horner("p", "%t", _LOG_POLY)}
  %pz = fmul float %p7, %z
  %y0 = fmul float %pz, %t
  %y1 = call float @llvm.fma.f32(float %k, float {_f(-2.12194440e-4)}, float %y0)
  %y2 = call float @llvm.fma.f32(float %z, float {_f(-0.5)}, float %y1)
  %r0 = fadd float %t, %y2
  %r = call float @llvm.fma.f32(float %k, float {_f(0.693359375)}, float %r0)
  %zero = fcmp oeq float %x, 0.0
  %v0 = select i1 %zero, float 0xFFF0000000000000, float %r
  %neg = fcmp olt float %x, 0.0
  %v1 = select i1 %neg, float 0x7FF8000000000000, float %v0
  %inf = fcmp oeq float %x, 0x7FF0000000000000
  %v2 = select i1 %inf, float %x, float %v1
  %nan = fcmp uno float %x, 0.0
  %v3 = select i1 %nan, float %x, float %v2
  ret float %v3
}}
"""
_VECTOR_MATH_INTRINSICS = [("llvm.minnum.f32", "(float, float)"), ("llvm.maxnum.f32", "(float, float)"),
                           ("llvm.rint.f32", "(float)"), ("llvm.fabs.f32", "(float)"),
                           ("llvm.fma.f32", "(float, float, float)"), ("llvm.copysign.f32", "(float, float)")]


_ROUTED = {"@llvm.exp.f32(": "@mlrt_expf(", "@erff(": "@mlrt_erff(", "@llvm.tanh.f32(": "@mlrt_tanhf(",
           "@tanhf(": "@mlrt_tanhf(", "@llvm.log.f32(": "@mlrt_logf(", "@logf(": "@mlrt_logf("}


def vectorizable_math(llvm_ir: str) -> str:
    """Route exp / erf / tanh / log calls on floats to the IR definitions above."""
    if not any(name in llvm_ir for name in _ROUTED):
        return llvm_ir
    llvm_ir = re.sub(r"^declare [^\n]*@(?:erff|tanhf|logf|llvm\.tanh\.f32|llvm\.log\.f32)\(float\)[^\n]*\n", "", llvm_ir,
                     flags=re.M)
    llvm_ir = re.sub(r"(call [^\n]*?)(@(?:llvm\.exp\.f32|erff|llvm\.tanh\.f32|tanhf|llvm\.log\.f32|logf)\()",
                     lambda m: m.group(1) + _ROUTED[m.group(2)], llvm_ir)
    decls = [f"declare float @{name}{sig}" for name, sig in _VECTOR_MATH_INTRINSICS
             if not re.search(rf"^declare [^\n]*@{re.escape(name)}\(", llvm_ir, flags=re.M)]
    return llvm_ir + _VECTOR_MATH + "\n".join(decls) + "\n"


def compile_objects(llvm_ir: str, triple: str, cpu: str, features: str = "") -> list[bytes]:
    """LLVM IR -> objects for `triple` at `cpu` (an LLVM CPU name) with `features` (`+neon,...`)."""
    try:
        return llvm_compile.compile_objects(legacy_fp_literals(llvm_ir), triple, cpu, features)
    except llvm_compile.CompileError as e:
        raise BuildError(f"compiling the model's code failed: {e}") from e


_FORWARD_DEF = re.compile(r"^define [^\n]*@forward\(([^)]*)\)", re.M)


def _forward_params(llvm_ir: str) -> list[str]:
    """The LLVM types of `@forward`'s parameters ('ptr', 'i64', ...)."""
    m = _FORWARD_DEF.search(llvm_ir)
    if not m:
        raise BuildError("internal: the LLVM IR defines no @forward")
    return [p.split()[0] for p in m.group(1).split(",") if p.strip()]


def entry_call(llvm_ir: str, arg_shapes: list[tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """How mlrt_entry calls @forward: (C parameter types, C arguments), from `a`, the runtime's
    pointer per argument. Normally one pointer per memref (bare-pointer convention). MLIR falls
    back to full memref descriptors for the whole function when any argument's layout has no
    bare-pointer form, as a memref with a zero-size dimension (memref<3x0xf32>): then each
    argument is (allocated, aligned, offset, sizes..., strides...), built here from its static
    shape. Anything else is refused: a wrong call would crash at run time."""
    params = _forward_params(llvm_ir)
    if params == ["ptr"] * len(arg_shapes):
        return ["void *"] * len(arg_shapes), [f"a[{i}]" for i in range(len(arg_shapes))]
    types, args = [], []
    for i, shape in enumerate(arg_shapes):
        strides = [1] * len(shape)
        for d in range(len(shape) - 1, 0, -1):
            strides[d - 1] = strides[d] * shape[d]
        types += ["void *", "void *"] + ["int64_t"] * (1 + 2 * len(shape))
        args += [f"a[{i}]", f"a[{i}]", "0", *map(str, shape), *map(str, strides)]
    expected = ["ptr" if t == "void *" else "i64" for t in types]
    if params != expected:
        raise BuildError(f"internal: @forward takes ({', '.join(params)}), which is neither one pointer per "
                         f"argument nor memref descriptors for the {len(arg_shapes)} arguments")
    return types, args


def to_llvm_ir(planned: PlannedProgram, kernels: frozenset, target: str, dump) -> tuple[str, tuple]:
    """A planned program (rewritten in place) -> (LLVM IR text, how mlrt_entry calls @forward:
    entry_call's C parameter types and arguments). `kernels`: the microkernels the target links;
    `dump(name, text)` sees the loops and the LLVM IR."""
    from torch_mlir import ir

    module, func_op = planned.module, planned.func
    run_pipeline(module, _TO_PARALLEL_LOOPS, "lowering linalg to loops")
    with module.context, ir.Location.unknown():
        split_parallel_loops(func_op)
        scalar_reductions(func_op)
        outline_loop_nests(func_op)
        merge_identical_nests(module, func_op)
    dump("loops", module)
    if "bf16" in str(module.operation):
        run_pipeline(module, _EXPAND_BF16, "expanding bfloat16 casts")
    run_pipeline(module, _TO_LLVM, "lowering to the LLVM dialect")
    finish_outlined(module)
    llvm_ir = vectorizable_math(translate_to_llvm_ir(module))
    dump("llvm", llvm_ir)
    check_externals(llvm_ir, kernels, target)
    return llvm_ir, entry_call(llvm_ir, planned.arg_shapes)
