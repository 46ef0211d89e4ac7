"""CUDA codegen: a planned program (the same bufferized, memory-planned IR as the x86-64 target's)
-> CUDA C++ -> PTX.

Why CUDA C++ and not MLIR's gpu/NVVM lowering: after the arena plan every buffer is an argument
pointer plus a constant offset, so each op becomes one kernel whose addresses are all constants
off a single argument table (docs/bundle-format.md, "The CUDA target"), which is what makes a CUDA
graph captured once stay valid. The heavy ops reuse lowering's kernel substitution and fusion
(lower/kernel_calls.py: conv / depthwise / matmul with bias, residual and clamp folded in) and map
onto the tiled shared-memory / tensor-core templates in kernels/ (64x64 tiles with split-K for
small GEMMs, 128x128 for large ones). Every remaining linalg op is generalized and emitted as a
kernel with one thread per output point; consecutive ops over the same thread space share one
kernel, and row reductions are split over a warp's lanes. nvcc turns the source into PTX for
`compute_<min_sm>` and ptxas into cubins for the architectures asked for; the driver JITs the PTX
only on other GPUs. (MLIR's gpu-to-NVVM route works on simple IR, see TOOLCHAIN-NOTES §4, but
gives naive kernels and a launch table to reconstruct from the host IR; generating C++ is the
route TVM takes as well.)
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ...errors import BuildError
from ...lower.memory_plan import MemoryPlan, defining_op
from ...lower.program import PlannedProgram, hooks

KERNELS_DIR = Path(__file__).parent / "kernels"
PRECISIONS = {"fp32": 0, "tf32": 1, "fp16": 2, "bf16": 3}
# --precision -> (C type, manifest dtype) of the GEMM and conv weights the bundle stores narrowed
# (docs/bundle-format.md, "Half-precision weights"); fp32 and tf32 keep float32 weights.
HALF_WEIGHTS = {"fp16": ("half", "float16"), "bf16": ("__nv_bfloat16", "bfloat16")}
# Kernel calls and the operand positions that may be a narrowed weight: the GEMM operands and the
# conv filters (never biases, residuals or outputs: those stay float32 in the epilogue).
_WEIGHT_OPERANDS = {"mlrt_matmul_f32": (0, 1), "mlrt_conv2d_f32": (1,), "mlrt_depthwise_conv2d_f32": (1,)}
DEFAULT_SM = 80  # tensor-core WMMA for tf32/bf16 needs sm_80; the PTX JITs forward to sm_90
THREADS = 256
TILE = 64  # GEMM output tiles (square); large GEMMs use BIG_TILE (gemm_tile)
BIG_TILE = 128
# Split-K aims for this many GEMM blocks (about two per multiprocessor of an A100/H100/H200) when a
# GEMM has fewer output tiles, e.g. late ResNet convs at batch 1 (7x7 outputs, K = 4608).
TARGET_BLOCKS = 256
MIN_SPLIT_K = 256  # a K slice shorter than this is not worth a partial-sum round trip


def split_k(batch: int, m: int, n: int, k: int) -> int:
    tiles = -(-m // TILE) * -(-n // TILE) * batch
    if tiles * 2 > TARGET_BLOCKS:
        return 1
    return max(1, min(-(-TARGET_BLOCKS // tiles), k // MIN_SPLIT_K, 16))


def gemm_tile(batch: int, m: int, n: int) -> int:
    """128x128 tiles (more multiply-adds per shared-memory load) when both output dims fill them and
    they alone give the GPU a full wave of blocks; 64x64 otherwise (a 16-channel conv would waste
    7/8 of a 128-row tile: MobileNetV2 at batch 32 got slower with it)."""
    big = -(-m // BIG_TILE) * -(-n // BIG_TILE) * batch
    return BIG_TILE if m >= BIG_TILE and n >= BIG_TILE and big >= TARGET_BLOCKS // 2 else TILE


def split_k_scratch(batch: int, m: int, n: int, k: int) -> int:
    """Floats of arena scratch a GEMM call needs for its split-K partial sums (0: no split)."""
    s = split_k(batch, m, n, k)
    return s * batch * m * n if s > 1 else 0


# PTX ISA version -> the CUDA driver version (cuDriverGetVersion) that first reads it.
_PTX_ISA_DRIVER = {
    "7.0": 11000, "7.1": 11010, "7.2": 11020, "7.3": 11030, "7.4": 11040, "7.5": 11050, "7.6": 11060,
    "7.7": 11070, "7.8": 11080, "8.0": 12000, "8.1": 12010, "8.2": 12020, "8.3": 12030, "8.4": 12040,
    "8.5": 12050, "8.6": 12070, "8.7": 12080, "8.8": 12090, "9.0": 13000, "9.1": 13010, "9.2": 13020,
}
_ALIAS_OPS = {"memref.subview", "memref.expand_shape", "memref.collapse_shape", "memref.cast",
              "memref.reinterpret_cast", "memref.transpose"}
_SKIP_OPS = {"arith.constant", "memref.view", "memref.extract_aligned_pointer_as_index", "arith.index_cast",
             "memref.get_global", "func.return", *_ALIAS_OPS}


@dataclass
class CudaArtifact:
    """The CUDA code of one program: PTX, cubins and the launch table (targets.TargetCode)."""

    ptx: str
    source: str  # the generated CUDA C++ (kept for --dump-ir and tests)
    memory_plan: MemoryPlan
    launches: list
    kernels: dict
    precision: str
    min_sm: int
    ptx_isa: str
    min_driver: int
    sass: dict  # compute capability -> cubin bytes (machine code: no JIT at load on those GPUs)
    weight_dtypes: dict = None  # weight index -> the dtype the kernels read it as, where not float32

    def stored_weights(self, weights: list) -> list:
        """The program's weights as this code reads them: those in `weight_dtypes` narrowed to
        (name, array, dtype) with dtype float16 or bfloat16 (a bfloat16 array is its uint16 bits)."""
        out = list(weights)
        for i, dtype in (self.weight_dtypes or {}).items():
            name, arr = out[i][:2]
            out[i] = (name, narrow_weight(name, arr, dtype), dtype)
        return out

    def manifest(self) -> dict:
        return {"section": "cuda.ptx", "ptx_isa": self.ptx_isa, "min_sm": self.min_sm, "min_driver": self.min_driver,
                "precision": self.precision, "arena_bytes": self.memory_plan.arena_bytes,
                "memory_plan": self.memory_plan.to_json(), "kernels": self.kernels, "launches": self.launches,
                "sass": {str(cc): f"cuda.sm_{cc}" for cc in sorted(self.sass)}}

    def sections(self) -> list[tuple[str, bytes, int]]:
        return [("cuda.ptx", self.ptx.encode("ascii") + b"\0", 8)] + \
               [(f"cuda.sm_{cc}", cubin, 8) for cc, cubin in sorted(self.sass.items())]

    # A dynamic bundle (format version 2): what every program shares goes in targets.cuda, the
    # code of program n in programs[n].cuda, with sections cuda.pN (PTX) and cuda.pN.sm_NN (cubins).
    def shared_manifest(self) -> dict:
        return {"ptx_isa": self.ptx_isa, "min_sm": self.min_sm, "min_driver": self.min_driver,
                "precision": self.precision}

    def program_manifest(self, n: int) -> dict:
        return {"cuda": {"section": f"cuda.p{n}", "arena_bytes": self.memory_plan.arena_bytes,
                         "memory_plan": self.memory_plan.to_json(), "kernels": self.kernels, "launches": self.launches,
                         "sass": {str(cc): f"cuda.p{n}.sm_{cc}" for cc in sorted(self.sass)}}}

    def program_sections(self, n: int) -> list[tuple[str, bytes, int]]:
        return [(f"cuda.p{n}", self.ptx.encode("ascii") + b"\0", 8)] + \
               [(f"cuda.p{n}.sm_{cc}", cubin, 8) for cc, cubin in sorted(self.sass.items())]


def narrow_weight(name: str, arr, dtype: str):
    """A float32 weight rounded to nearest even in `dtype`: a float16 array, or for bfloat16 the
    upper 16 bits of each float32 (numpy has no bfloat16). A finite value the type cannot hold is
    refused: it would become inf on the GPU."""
    import numpy as np

    a = np.ascontiguousarray(arr, dtype=np.float32)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            out = a.astype(np.float16)
        overflow = np.isinf(out) & np.isfinite(a)
        largest = "65504"
    elif dtype == "bfloat16":
        bits = a.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        out = np.where(np.isnan(a), np.uint16(0x7FC0), rounded).astype(np.uint16)
        overflow = ((out & 0x7F80) == 0x7F80) & np.isfinite(a)
        largest = "3.39e38"
    else:
        raise BuildError(f"internal: no narrowed weight type {dtype}")
    if overflow.any():
        worst = float(np.abs(a[overflow]).max())
        raise BuildError(f"weight '{name}' holds {worst:g}, beyond {dtype}'s range (±{largest}): --precision "
                         f"{'fp16' if dtype == 'float16' else 'bf16'} stores GEMM and conv weights in {dtype}; "
                         "build with --precision bf16, tf32 or fp32")
    return out.reshape(a.shape)


# --------------------------------------------------------------------------- scalar types and literals

_CTYPES = {"f32": "float", "f64": "double", "f16": "half", "bf16": "__nv_bfloat16", "i1": "bool", "i8": "int8_t",
           "i16": "int16_t", "i32": "int32_t", "i64": "int64_t", "index": "int64_t", "ui8": "uint8_t"}


def _ctype(t) -> str:
    s = str(t)
    if s not in _CTYPES:
        raise BuildError(f"CUDA backend: element type {s} is not supported")
    return _CTYPES[s]


def _float_literal(v: float) -> str:
    """A float constant, bit-exact (also inf / nan)."""
    if v != v:
        return "__int_as_float(0x7fc00000)"
    (bits,) = struct.unpack("<I", struct.pack("<f", v))
    return f"__int_as_float({bits:#x})"


def _literal(attr, ctype: str) -> str:
    from torch_mlir import ir

    if isinstance(attr, ir.FloatAttr):
        v = attr.value
        if ctype == "float" or v != v or v in (float("inf"), float("-inf")):
            lit = _float_literal(v)
            return lit if ctype == "float" else f"(({ctype}){lit})"
        if ctype == "double":
            (bits,) = struct.unpack("<q", struct.pack("<d", v))
            return f"__longlong_as_double({bits}LL)"
        return f"(({ctype}){v!r})"
    if isinstance(attr, ir.IntegerAttr):
        if ctype == "bool":
            return "true" if attr.value else "false"
        if attr.value == -(1 << 63):  # the literal 9223372036854775808 does not fit int64
            return f"(({ctype})(-9223372036854775807LL - 1))"
        return f"(({ctype}){attr.value}LL)"
    raise BuildError(f"CUDA backend: unsupported constant {attr}")


_CMPF = {0: "false", 1: "({a} == {b})", 2: "({a} > {b})", 3: "({a} >= {b})", 4: "({a} < {b})", 5: "({a} <= {b})",
         6: "({a} < {b} || {a} > {b})", 7: "({a} == {a} && {b} == {b})", 8: "!({a} < {b} || {a} > {b})",
         9: "!({a} <= {b})", 10: "!({a} < {b})", 11: "!({a} >= {b})", 12: "!({a} > {b})", 13: "({a} != {b})",
         14: "({a} != {a} || {b} != {b})", 15: "true"}
_CMPI = {0: "==", 1: "!=", 2: "<", 3: "<=", 4: ">", 5: ">=", 6: "<", 7: "<=", 8: ">", 9: ">="}
_BINARY = {"arith.addf": "+", "arith.subf": "-", "arith.mulf": "*", "arith.divf": "/", "arith.addi": "+",
           "arith.subi": "-", "arith.muli": "*", "arith.divsi": "/", "arith.remsi": "%", "arith.andi": "&",
           "arith.ori": "|", "arith.xori": "^", "arith.shli": "<<", "arith.shrsi": ">>", "arith.divui": "/",
           "arith.remui": "%"}
_CASTS = {"arith.extf", "arith.truncf", "arith.sitofp", "arith.uitofp", "arith.fptosi", "arith.fptoui",
          "arith.index_cast", "arith.index_castui", "arith.extsi", "arith.extui", "arith.trunci"}
# math op -> (float function, double function)
_MATH = {"math.exp": ("expf", "exp"), "math.exp2": ("exp2f", "exp2"), "math.expm1": ("expm1f", "expm1"),
         "math.log": ("logf", "log"), "math.log1p": ("log1pf", "log1p"), "math.log2": ("log2f", "log2"),
         "math.log10": ("log10f", "log10"), "math.sqrt": ("sqrtf", "sqrt"), "math.rsqrt": ("rsqrtf", "rsqrt"),
         "math.tanh": ("tanhf", "tanh"), "math.erf": ("erff", "erf"), "math.absf": ("fabsf", "fabs"),
         "math.floor": ("floorf", "floor"), "math.ceil": ("ceilf", "ceil"), "math.round": ("roundf", "round"),
         "math.roundeven": ("rintf", "rint"), "math.trunc": ("truncf", "trunc"), "math.sin": ("sinf", "sin"),
         "math.cos": ("cosf", "cos"), "math.tan": ("tanf", "tan"), "math.atan": ("atanf", "atan"),
         "math.powf": ("powf", "pow"), "math.atan2": ("atan2f", "atan2"), "math.fma": ("fmaf", "fma"),
         "math.sinh": ("sinhf", "sinh"), "math.cosh": ("coshf", "cosh"), "math.asin": ("asinf", "asin"),
         "math.acos": ("acosf", "acos"), "math.cbrt": ("cbrtf", "cbrt"), "math.copysign": ("copysignf", "copysign")}


def _affine_c(expr) -> str:
    """An affine expression over loop dims as C (`d1 * 2 + d4` -> `i1 * 2 + i4`)."""
    s = str(expr)
    if "ceildiv" in s or re.search(r"\bs\d", s):
        raise BuildError(f"CUDA backend: affine expression {s} is not supported")
    s = re.sub(r"\bd(\d+)\b", r"i\1", s).replace("floordiv", "/").replace("mod", "%")
    if not re.fullmatch(r"[i0-9\s+\-*/%()]*", s):
        raise BuildError(f"CUDA backend: affine expression {expr} is not supported")
    return s if re.fullmatch(r"i\d+|\d+", s) else f"({s})"


# --------------------------------------------------------------------------- the emitter

# Reduction combiners a warp can split: op -> (warp helper, identity, how to merge a and b).
_COMBINERS = {
    "arith.addf": ("sum", "(({t})0)", "({a} + {b})"),
    "arith.maximumf": ("max", "(({t})-INFINITY)", "mlrt::maximumf({a}, {b})"),
    "arith.minimumf": ("min", "(({t})INFINITY)", "mlrt::minimumf({a}, {b})"),
}

_SIZES = {"float": 4, "double": 8, "half": 2, "__nv_bfloat16": 2, "bool": 1, "int8_t": 1, "uint8_t": 1,
          "int16_t": 2, "int32_t": 4, "int64_t": 8}


@dataclass
class _Generic:
    """One linalg.generic (or memref.copy, op None) as loops: its operands' index expressions are C
    over `i<d>` loop variables."""

    op: object
    position: int  # index among the function's top-level ops
    ins: list
    outs: list
    maps: list  # per operand: index expressions
    ranges: list
    par: list
    red: list

    @property
    def total(self) -> int:
        n = 1
        for d in self.par:
            n *= self.ranges[d]
        return n

    @property
    def space(self) -> tuple:
        """The thread space: the parallel extents, size-1 dims dropped (so [1,128,1] ~ [1,128])."""
        return tuple(self.ranges[d] for d in self.par if self.ranges[d] != 1)

    def dim_names(self, j: int) -> dict[int, str]:
        """Loop variable of each dim for group member j: parallel dims -> the group's thread indices
        t0, t1, ... (size-1 dims -> 0), reduction dims -> member-local loop variables."""
        names, k = {}, 0
        for d in range(len(self.ranges)):
            if d in self.red:
                names[d] = f"o{j}_r{d}"
            elif self.ranges[d] == 1:
                names[d] = "0"
            else:
                names[d] = f"t{k}"
                k += 1
        return names

    def index(self, operand: int, names: dict[int, str]) -> list[str]:
        return [re.sub(r"\bi(\d+)\b", lambda m: names[int(m.group(1))], e) for e in self.maps[operand]]


class _Emitter:
    def __init__(self, module, func_op, precision: str = "fp32", call: list | None = None, half_weights: bool = False):
        from torch_mlir import ir

        self.ir = ir
        self.precision = precision
        self.module = module
        self.func = func_op
        self.block = func_op.regions[0].blocks[0]
        # Argument number -> C type of each weight stored narrowed (half_weights: fp16/bf16 bundles
        # whose weights section no other target reads).
        self.narrowed: dict[int, str] = {}
        if half_weights and precision in HALF_WEIGHTS:
            for n, entry in enumerate(call or []):
                arg = self.block.arguments[n]
                if (entry.startswith("weight:") and isinstance(arg.type, ir.MemRefType)
                        and str(arg.type.element_type) == "f32" and self._gemm_operand_only(arg)):
                    self.narrowed[n] = HALF_WEIGHTS[precision][0]
        self.globals: dict[str, str] = {}  # symbol -> C declaration
        self.global_ops = {}
        for op in module.body.operations:
            if op.operation.name == "memref.global":
                self.global_ops[ir.StringAttr(op.attributes["sym_name"]).value] = op
        self.kernels: list[str] = []
        self.launches: list[dict] = []
        self.counts: Counter = Counter()

    # ---------------------------------------------------------------- buffers

    def _gemm_operand_only(self, value) -> bool:
        """Whether every use of `value` (through views) is the address of a GEMM operand or conv
        filter of a kernel call (_WEIGHT_OPERANDS), and there is at least one: only such a weight
        can be stored narrowed, since generated loops and epilogues read float32."""
        ir = self.ir
        uses = list(value.uses)
        if not uses:
            return False
        for use in uses:
            op = use.owner
            op = op.operation if hasattr(op, "operation") else op
            if op.name in _ALIAS_OPS:
                if not all(self._gemm_operand_only(r) for r in op.results):
                    return False
                continue
            if op.name != "memref.extract_aligned_pointer_as_index":
                return False
            for cast_use in op.results[0].uses:
                cast = cast_use.owner
                cast = cast.operation if hasattr(cast, "operation") else cast
                if cast.name != "arith.index_cast" or not list(cast.results[0].uses):
                    return False
                for call_use in cast.results[0].uses:
                    call = call_use.owner
                    call = call.operation if hasattr(call, "operation") else call
                    if call.name != "func.call":
                        return False
                    callee = ir.FlatSymbolRefAttr(call.attributes["callee"]).value
                    if call_use.operand_number not in _WEIGHT_OPERANDS.get(callee, ()):
                        return False
        return True

    def narrowed_type(self, value) -> str | None:
        """The C type a narrowed weight is stored in, if `value` is a view of one."""
        from ...lower.memory_plan import root_buffer

        root = root_buffer(value)
        if defining_op(root) is not None or root.owner != self.block:
            return None
        return self.narrowed.get(root.arg_number)

    def weight_dtypes(self, call: list) -> dict[int, str]:
        """Weight index -> manifest dtype of each weight stored narrowed."""
        dtype = HALF_WEIGHTS[self.precision][1] if self.narrowed else None
        return {int(call[n].split(":")[1]): dtype for n in sorted(self.narrowed)}

    def base(self, value) -> tuple[str, int]:
        """(C expression of the base pointer as char*, byte offset) of a memref value."""
        ir = self.ir
        op = defining_op(value)
        if op is None:
            if value.owner != self.block:
                raise BuildError("CUDA backend: a memref block argument inside a region is not supported")
            return f"A[{value.arg_number}]", 0
        if op.name == "memref.view":
            src, shift = self.base(op.operands[0])
            byte = self.index_constant(op.operands[1])
            return src, shift + byte
        if op.name in _ALIAS_OPS:
            return self.base(op.operands[0])
        if op.name == "memref.get_global":
            name = ir.FlatSymbolRefAttr(op.attributes["name"]).value
            self.declare_global(name)
            return f"(char *)g_{self._ident(name)}", 0
        raise BuildError(f"CUDA backend: cannot locate the buffer produced by {op.name}")

    def declare_global(self, name: str) -> None:
        """A constant global (e.g. a 0-d clamp bound) as a __device__ table; floats as raw bits."""
        import numpy as np

        ir = self.ir
        if name in self.globals:
            return
        glob = self.global_ops[name]
        mtype = ir.MemRefType(ir.TypeAttr(glob.attributes["type"]).value)
        ctype = _ctype(mtype.element_type)
        n = int(np.prod(mtype.shape)) if mtype.rank else 1
        init = glob.attributes["initial_value"] if "initial_value" in glob.attributes else None
        try:
            dense = ir.DenseElementsAttr(init)
        except (ValueError, TypeError) as e:
            raise BuildError(f"CUDA backend: global {name} has no dense initializer") from e
        if dense.is_splat:
            v = dense.get_splat_value()
            values = np.full(n, ir.FloatAttr(v).value if isinstance(v, ir.FloatAttr) else ir.IntegerAttr(v).value)
        else:
            values = np.array(dense).reshape(-1)
        ident = self._ident(name)
        if ctype == "float":
            bits = values.astype(np.float32).view(np.uint32)
            self.globals[name] = (f"__device__ const unsigned g_{ident}_bits[{n}] = {{{', '.join(map(hex, bits.tolist()))}}};\n"
                                  f"#define g_{ident} ((const float *)g_{ident}_bits)\n")
        elif ctype in ("half", "__nv_bfloat16", "double"):
            raise BuildError(f"CUDA backend: {ctype} constant tables are not supported (global {name})")
        else:
            self.globals[name] = (f"__device__ const {ctype} g_{ident}[{n}] = "
                                  f"{{{', '.join(str(int(x)) for x in values.tolist())}}};\n")

    @staticmethod
    def _ident(name: str) -> str:
        return re.sub(r"\W", "_", name)

    def index_constant(self, value) -> int:
        ir = self.ir
        op = defining_op(value)
        if op is None or op.name != "arith.constant":
            raise BuildError("CUDA backend: a buffer offset is not a constant")
        return ir.IntegerAttr(op.attributes["value"]).value

    def layout(self, value):
        """(element C type, shape, strides, element offset) of a static memref."""
        t = value.type
        strides, offset = t.get_strides_and_offset()
        dyn = -(1 << 63)
        if not t.has_static_shape or offset == dyn or any(s == dyn for s in strides):
            raise BuildError(f"CUDA backend: memref {t} has a dynamic shape or layout")
        return _ctype(t.element_type), list(t.shape), list(strides), offset

    def pointer(self, value, ptrs: dict, decls: list) -> tuple[str, list, list, int]:
        """A named local pointer for `value`'s base (declared once per kernel) + its layout."""
        ctype, shape, strides, offset = self.layout(value)
        base, shift = self.base(value)
        key = (base, shift, ctype)
        if key not in ptrs:
            ptrs[key] = f"p{len(ptrs)}"
            decls.append(f"  {ctype} *__restrict__ {ptrs[key]} = ({ctype} *)({base} + {shift});\n")
        return ptrs[key], shape, strides, offset

    @staticmethod
    def element(ptr: str, strides: list, offset: int, idx: list[str]) -> str:
        terms = [str(offset)] if offset else []
        terms += [f"{i} * {s}" if s != 1 else i for i, s in zip(idx, strides) if s != 0]
        return f"{ptr}[{' + '.join(terms) or '0'}]"

    # ---------------------------------------------------------------- kernels

    def add_kernel(self, body: str, grid: list[int], block: list[int], kind: str) -> None:
        name = f"k{len(self.kernels)}"
        # fp32 GEMMs: at most 128 registers, so two 256-thread blocks fit per multiprocessor (the
        # tensor-core tiles hold more accumulators and would spill under that cap).
        two = kind in ("conv2d", "matmul") and self.precision == "fp32"
        bounds = f"{block[0] * block[1] * block[2]}" + (", 2" if two else "")
        self.kernels.append(f'extern "C" __global__ void __launch_bounds__({bounds}) '
                            f"{name}(void *const *__restrict__ A_) {{\n"
                            "  char *const *A = (char *const *)A_;\n" + body + "}\n")
        self.launches.append({"kernel": name, "grid": grid, "block": block, "shared_bytes": 0})
        self.counts[kind] += 1

    @staticmethod
    def _grid(total: int) -> tuple[list[int], list[int]]:
        threads = THREADS if total >= THREADS else max(32, (total + 31) // 32 * 32)
        blocks = max(1, -(-total // threads))
        if blocks >= 2 ** 31:
            raise BuildError("CUDA backend: an op has too many elements for one launch")
        return [blocks, 1, 1], [threads, 1, 1]

    def analyze_generic(self, op, position: int):
        """The loop structure of a linalg.generic, or None when it has no iterations."""
        ir = self.ir
        operands = list(op.operands)
        if len(op.results):
            raise BuildError("CUDA backend: a linalg op on tensors survived bufferization")
        segs = list(ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"]))
        maps = [ir.AffineMapAttr(m).value for m in ir.ArrayAttr(op.attributes["indexing_maps"])]
        iters = ["reduction" if "reduction" in str(a) else "parallel" for a in ir.ArrayAttr(op.attributes["iterator_types"])]
        ranges: list[int | None] = [None] * len(iters)
        for v, m in zip(operands, maps):
            if not isinstance(v.type, ir.MemRefType):
                continue
            for r, e in enumerate(m.results):
                mm = re.fullmatch(r"d(\d+)", str(e))
                if mm and ranges[int(mm.group(1))] is None:
                    ranges[int(mm.group(1))] = v.type.shape[r]
        if None in ranges:
            raise BuildError("CUDA backend: cannot infer the loop ranges of a linalg.generic")
        g = _Generic(op, position, operands[:segs[0]], operands[segs[0]:], [[_affine_c(e) for e in m.results] for m in maps],
                     ranges, [d for d in range(len(iters)) if iters[d] == "parallel"],
                     [d for d in range(len(iters)) if iters[d] == "reduction"])
        return g if g.total else None

    def analyze_copy(self, op, position: int):
        src, dst = op.operands
        shape = list(dst.type.shape)
        idx = [f"i{d}" for d in range(len(shape))]
        g = _Generic(None, position, [src], [dst], [idx, idx], shape, list(range(len(shape))), [])
        return g if g.total else None

    def access(self, value, idx: list[str]):
        """(base, first byte, end byte, element key) of `value` accessed at `idx`, for hazard checks."""
        ctype, shape, strides, offset = self.layout(value)
        base, shift = self.base(value)
        size = _SIZES[ctype]
        last = offset + sum((d - 1) * st for d, st in zip(shape, strides))
        return base, shift + offset * size, shift + (last + 1) * size, (base, shift, ctype, tuple(strides), offset, tuple(idx))

    def accesses(self, g, j: int):
        names = g.dim_names(j)
        reads = [self.access(v, g.index(k, names)) for k, v in enumerate(g.ins) if isinstance(v.type, self.ir.MemRefType)]
        writes = [self.access(v, g.index(len(g.ins) + k, names)) for k, v in enumerate(g.outs)]
        if g.op is not None:  # data-dependent reads (an embedding gather): any element may be read
            for o in g.op.regions[0].blocks[0].operations:
                if o.operation.name == "memref.load":
                    base, lo, hi, _ = self.access(o.operands[0], [])
                    reads.append((base, lo, hi, ("gather", g.position)))
        return reads, writes

    def can_fuse(self, group: list, g) -> bool:
        """g may join `group` in one kernel when it has the same thread space (its parallel extents;
        reduction dims loop inside each thread) and no thread can see an element another thread
        writes: any overlap between what g touches and what the group writes (or between what g
        writes and what the group reads) must be the very same element, at the same thread index."""
        if g.space != group[0].space:
            return False
        reads, writes = self.accesses(g, len(group))
        g_reads, g_writes = [], []
        for j, m in enumerate(group):
            r, w = self.accesses(m, j)
            g_reads += r
            g_writes += w

        def clash(a, b):
            return a[0] == b[0] and a[1] < b[2] and b[1] < a[2] and a[3] != b[3]

        return not (any(clash(a, w) for a in reads + writes for w in g_writes)
                    or any(clash(w, r) for w in writes for r in g_reads))

    def dead_after(self, value, position: int) -> bool:
        """True if nothing after top-level op `position` reads `value`'s buffer (an arena buffer)."""
        from ...lower.memory_plan import collect_users

        root = value
        while True:
            op = defining_op(root)
            if op is None:
                return False  # a function argument: an output, or the raw arena
            if op.name == "memref.view":
                break
            if op.name not in _ALIAS_OPS:
                return False
            root = op.operands[0]
        users: list = []
        collect_users(root, users)
        return all(self.position_of(u) <= position for u in users)

    def position_of(self, op) -> int:
        op = op.operation if hasattr(op, "operation") else op
        while op not in self.positions:
            op = op.parent
        return self.positions[op]

    def combiner(self, g) -> str | None:
        """For a member with one innermost reduction dim whose body ends in `out = op(x, out)` with
        op an add / max / min and `out` used nowhere else: op, so lanes of a warp can each reduce a
        slice and combine the partials. None otherwise (the member loops serially)."""
        if g.op is None or len(g.red) != 1 or len(g.outs) != 1 or g.red[0] != len(g.ranges) - 1:
            return None
        body = g.op.regions[0].blocks[0]
        out_arg = list(body.arguments)[-1]
        ops = [o.operation for o in body.operations]
        term = ops[-1]
        if len(term.operands) != 1:
            return None
        final = defining_op(term.operands[0])
        uses = [u.owner for u in out_arg.uses]
        if final is None or final.name not in _COMBINERS or len(uses) != 1 or uses[0] != final:
            return None
        if _ctype(out_arg.type) not in ("float", "double"):
            return None
        return final.name

    def emit_generics(self, group: list) -> None:
        """One kernel for `group`: one thread per point of the shared thread space runs every
        member in order (its reduction loops inside); values written by one member and read by a
        later one at the same element stay in registers, and stores to buffers nobody reads after
        the group are dropped. When a member reduces along its innermost dim with an add/max/min
        over at least 32 elements, a whole warp takes each point instead: its lanes split those
        reductions (coalesced loads) and combine with shuffles, everything else runs redundantly on
        every lane, and lane 0 stores."""
        ir = self.ir
        space = group[0].space
        total = group[0].total
        combiners = [self.combiner(g) for g in group]
        warp = any(c and g.ranges[g.red[0]] >= 32 for c, g in zip(combiners, group))
        ptrs: dict = {}
        decls: list[str] = []
        if warp:
            lines = ["  int64_t t_ = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;\n",
                     "  const int lane_ = threadIdx.x % 32;\n",
                     f"  if (t_ >= {total}LL || lane_ >= MLRT_LANES) return;\n"]
        else:
            lines = [f"  int64_t t_ = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;\n  if (t_ >= {total}LL) return;\n"]
        for k in reversed(range(len(space))):  # last dim fastest: coalesced for row-major outputs
            lines.append(f"  const int64_t t{k} = t_ % {space[k]}; t_ /= {space[k]};\n")
        regs: dict[str, str] = {}  # element reference -> the register holding its current value
        dirty: dict[str, tuple[str, object]] = {}  # element reference -> (register, value) to store
        for j, g in enumerate(group):
            names = g.dim_names(j)
            split = warp and combiners[j] is not None
            args = list(g.op.regions[0].blocks[0].arguments) if g.op is not None else [None, None]
            env: dict = {}
            pre: list[str] = []
            inner: list[str] = []
            out_refs = []
            for k, v in enumerate(g.outs):
                ptr, _, strides, offset = self.pointer(v, ptrs, decls)
                out_refs.append(self.element(ptr, strides, offset, g.index(len(g.ins) + k, names)))
            for k, v in enumerate(g.outs):
                arg = args[len(g.ins) + k]
                acc = f"o{j}_acc{k}"
                used = arg is not None and list(arg.uses)
                ctype = _ctype(v.type.element_type)
                if arg is not None:
                    env[arg] = f"o{j}_part{k}" if split else acc
                pre.append(f"  {ctype} {acc} = {regs.get(out_refs[k], out_refs[k]) if used else '0'};\n")
                if split:
                    pre.append(f"  {ctype} o{j}_part{k} = {_COMBINERS[combiners[j]][1].format(t=ctype)};\n")
            loaded = []
            for k, v in enumerate(g.ins):
                arg = args[k]
                if arg is not None and not list(arg.uses):
                    continue
                if isinstance(v.type, ir.MemRefType):
                    ptr, _, strides, offset = self.pointer(v, ptrs, decls)
                    ref = self.element(ptr, strides, offset, g.index(k, names))
                    if ref in regs:
                        loaded.append(regs[ref])
                    else:
                        inner.append(f"  const {_ctype(v.type.element_type)} o{j}_in{k} = {ref};\n")
                        loaded.append(f"o{j}_in{k}")
                else:
                    loaded.append(self.scalar(v))
                if arg is not None:
                    env[arg] = loaded[-1]
            if g.op is None:  # memref.copy
                yields = loaded
            else:
                yields = self.emit_body(g.op.regions[0].blocks[0], env, inner, ptrs, decls, prefix=f"o{j}_", dims=names)
            target = "part" if split else "acc"
            for k, y in enumerate(yields):
                inner.append(f"  o{j}_{target}{k} = {y};\n")
            lines += pre
            for d in g.red:
                start, step = ("lane_", "MLRT_LANES") if split else ("0", "1")
                lines.append(f"  for (int64_t {names[d]} = {start}; {names[d]} < {g.ranges[d]}; {names[d]} += {step}) {{\n")
            lines += inner + ["  }\n" * len(g.red)]
            if split:
                op = combiners[j]
                lines.append(f"  o{j}_part0 = mlrt::warp_{_COMBINERS[op][0]}(o{j}_part0);\n")
                lines.append(f"  o{j}_acc0 = {_COMBINERS[op][2].format(a=f'o{j}_acc0', b=f'o{j}_part0')};\n")
            for k, v in enumerate(g.outs):
                regs[out_refs[k]] = f"o{j}_acc{k}"
                dirty.pop(out_refs[k], None)
                dirty[out_refs[k]] = (f"o{j}_acc{k}", v)
        last = group[-1].position
        stores = [f"  {ref} = {reg};\n" for ref, (reg, v) in dirty.items()
                  if len(group) == 1 or not self.dead_after(v, last)]
        if warp and stores:
            lines.append("  if (lane_ == 0) {\n")
            lines += stores
            lines.append("  }\n")
        else:
            lines += stores
        grid, block = self._grid(total * 32 if warp else total)
        kind = "fused" if len(group) > 1 else ("copy" if group[0].op is None else "generic")
        self.add_kernel("".join(decls) + "".join(lines), grid, block, kind)
        if len(group) > 1:
            self.counts["fused_ops"] += len(group)
        if warp:
            self.counts["warp_reductions"] += 1

    def scalar(self, value) -> str:
        """A scalar defined outside a linalg body (a top-level constant)."""
        op = defining_op(value)
        if op is not None and op.name == "arith.constant":
            return _literal(op.attributes["value"], _ctype(value.type))
        raise BuildError(f"CUDA backend: a linalg body uses a value defined by {op.name if op else 'an argument'}")

    def emit_body(self, body, env: dict, out: list, ptrs, decls, prefix: str = "", dims=None) -> list[str]:
        ir = self.ir
        counter = [0]

        def get(v):
            if v in env:
                return env[v]
            if isinstance(v.type, ir.MemRefType):
                raise BuildError("CUDA backend: memref value used as a scalar")
            s = self.scalar(v)
            env[v] = s
            return s

        for o in body.operations:
            o = o.operation
            name = o.name
            if name == "linalg.yield":
                return [get(v) for v in o.operands]
            res = o.results[0] if len(o.results) == 1 else None
            if res is None:
                raise BuildError(f"CUDA backend: unsupported op {name} in a linalg body")
            ct = _ctype(res.type)
            if name == "arith.constant":
                expr = _literal(o.attributes["value"], ct)
            elif name == "linalg.index":
                d = ir.IntegerAttr(o.attributes["dim"]).value
                expr = dims[d] if dims else f"i{d}"
            elif name in _BINARY:
                a = [get(v) for v in o.operands]
                expr = f"({a[0]} {_BINARY[name]} {a[1]})"
            elif name == "arith.remf":
                a = [get(v) for v in o.operands]
                expr = f"fmod({a[0]}, {a[1]})"
            elif name == "arith.negf":
                expr = f"(-{get(o.operands[0])})"
            elif name in ("arith.maximumf", "arith.minimumf"):
                a = [get(v) for v in o.operands]
                expr = f"mlrt::{name[6:]}({a[0]}, {a[1]})"
            elif name in ("arith.maxnumf", "arith.minnumf"):
                a = [get(v) for v in o.operands]
                expr = f"{'fmax' if 'max' in name else 'fmin'}({a[0]}, {a[1]})"
            elif name in ("arith.maxsi", "arith.minsi", "arith.maxui", "arith.minui"):
                a = [get(v) for v in o.operands]
                cmp = ">" if "max" in name else "<"
                expr = f"(({a[0]}) {cmp} ({a[1]}) ? ({a[0]}) : ({a[1]}))"
            elif name == "arith.cmpf":
                a = [get(v) for v in o.operands]
                expr = _CMPF[ir.IntegerAttr(o.attributes["predicate"]).value].format(a=a[0], b=a[1])
            elif name == "arith.cmpi":
                a = [get(v) for v in o.operands]
                pred = ir.IntegerAttr(o.attributes["predicate"]).value
                if pred >= 6:
                    a = [f"(uint64_t)({x})" for x in a]
                expr = f"({a[0]} {_CMPI[pred]} {a[1]})"
            elif name == "arith.select":
                a = [get(v) for v in o.operands]
                expr = f"({a[0]} ? {a[1]} : {a[2]})"
            elif name in _CASTS:
                expr = f"(({ct})({get(o.operands[0])}))"
            elif name == "arith.bitcast":
                expr = f"__builtin_bit_cast({ct}, {get(o.operands[0])})"
            elif name in _MATH:
                fn = _MATH[name][0 if ct == "float" else 1]
                expr = f"{fn}({', '.join(get(v) for v in o.operands)})"
            elif name == "math.fpowi":
                a = [get(v) for v in o.operands]
                expr = f"pow({a[0]}, (double)({a[1]}))"
            elif name == "memref.load":
                mem, *idx = list(o.operands)
                ptr, _, strides, offset = self.pointer(mem, ptrs, decls)
                expr = self.element(ptr, strides, offset, [f"({get(i)})" for i in idx])
            else:
                raise BuildError(f"CUDA backend: unsupported op {name} in a linalg body")
            var = f"{prefix}v{counter[0]}"
            counter[0] += 1
            out.append(f"  const {ct} {var} = {expr};\n")
            env[res] = var
        raise BuildError("CUDA backend: linalg body without a yield")

    # ---------------------------------------------------------------- microkernel calls

    def call_args(self, op) -> list:
        """Each operand of a kernel call as ('ptr', C expr) | ('int', v) | ('float', v)."""
        ir = self.ir
        out = []
        for v in op.operands:
            d = defining_op(v)
            if d is not None and d.name == "arith.constant":
                attr = d.attributes["value"]
                if isinstance(attr, ir.FloatAttr):
                    out.append(("float", attr.value))
                else:
                    out.append(("int", ir.IntegerAttr(attr).value))
                continue
            if d is not None and d.name == "arith.index_cast":
                e = defining_op(d.operands[0])
                if e is not None and e.name == "memref.extract_aligned_pointer_as_index":
                    mem = e.operands[0]
                    ctype, _, _, offset = self.layout(mem)
                    base, shift = self.base(mem)
                    half = self.narrowed_type(mem)  # a weight stored in fp16/bf16
                    if half:
                        out.append(("ptr", f"(const {half} *)({base} + {shift + offset * _SIZES[half]})"))
                    else:
                        out.append(("ptr", f"(float *)({base} + {shift + offset * 4})"))
                    continue
            raise BuildError("CUDA backend: unexpected operand in a kernel call")
        return out

    def emit_call(self, op) -> None:
        ir = self.ir
        callee = ir.FlatSymbolRefAttr(op.attributes["callee"]).value
        args = self.call_args(op)

        def ptr(i):
            kind, v = args[i]
            if kind == "int" and v == 0:
                return "nullptr"
            if kind != "ptr":
                raise BuildError("CUDA backend: kernel call pointer operand is not a buffer")
            return v

        def num(i):
            return args[i][1]

        def epilogue(overwrite, bias, bias_per_col, residual, lo, hi, c, dst) -> str:
            return (f"  mlrt::Epilogue ep{{{int(num(overwrite))}, {ptr(bias)}, {bias_per_col}, {ptr(residual)}, "
                    f"{_float_literal(num(lo))}, {_float_literal(num(hi))}, {c}, {ptr(dst)}}};\n")

        splits = 1
        if callee == "mlrt_matmul_f32":
            # (a, b, c, scratch, batch, M, N, K, overwrite, bias, bias_per_col, b_packed, residual, lo, hi, dst)
            batch, m, n, k = (num(i) for i in (4, 5, 6, 7))
            splits = split_k(batch, m, n, k)
            tile = gemm_tile(batch, m, n)
            ep = epilogue(8, 9, num(10), 12, 13, 14, ptr(2), 15)
            body = ep + f"  mlrt::matmul<{tile}>({ptr(0)}, {ptr(1)}, {m}, {n}, {k}, {num(11)}, ep, {splits}, {ptr(3)});\n"
            grid = [-(-n // tile), -(-m // tile), batch * splits]
            kind = "matmul"
        elif callee == "mlrt_conv2d_f32":
            # (x, w, y, scratch, batch, C, H, W, CO, KH, KW, OH, OW, sh, sw, dh, dw, pt, pl, overwrite, bias,
            #  residual, lo, hi, dst)
            batch, c, h, w, co, kh, kw, oh, ow, sh, sw, dh, dw, pt, pl = (num(i) for i in range(4, 19))
            m, n = co, oh * ow
            splits = split_k(batch, m, n, c * kh * kw)
            tile = gemm_tile(batch, m, n)
            ep = epilogue(19, 20, 0, 21, 22, 23, ptr(2), 24)
            body = ep + (f"  mlrt::conv2d<{tile}>({ptr(0)}, {ptr(1)}, {c}, {h}, {w}, {co}, {kh}, {kw}, {oh}, {ow}, {sh}, "
                         f"{sw}, {dh}, {dw}, {pt}, {pl}, ep, {splits}, {ptr(3)});\n")
            grid = [-(-n // tile), -(-m // tile), batch * splits]
            kind = "conv2d"
        elif callee == "mlrt_depthwise_conv2d_f32":
            # (x, w, y, batch, C, H, W, KH, KW, OH, OW, sh, sw, dh, dw, pt, pl, overwrite, bias, residual, lo, hi, dst)
            batch, c, h, w, kh, kw, oh, ow, sh, sw, dh, dw, pt, pl = (num(i) for i in range(3, 17))
            body = epilogue(17, 18, 0, 19, 20, 21, ptr(2), 22)
            body += (f"  mlrt::depthwise_conv2d({ptr(0)}, {ptr(1)}, {batch}, {c}, {h}, {w}, {kh}, {kw}, {oh}, {ow}, "
                     f"{sh}, {sw}, {dh}, {dw}, {pt}, {pl}, ep);\n")
            grid, _ = self._grid(batch * c * oh * ow)
            kind = "depthwise_conv2d"
        else:
            raise BuildError(f"CUDA backend: no GPU kernel for call to {callee}")
        for g in grid[1:]:
            if g >= 65536:
                raise BuildError(f"CUDA backend: {kind} grid {grid} exceeds CUDA's limits")
        self.add_kernel(body, grid, [THREADS, 1, 1], kind)
        if kind != "depthwise_conv2d" and splits > 1:
            if ptr(3) == "nullptr":
                raise BuildError("internal: a split-K GEMM got no partial-sum scratch")
            grid, block = self._grid(batch * m * n)
            self.add_kernel(ep + f"  mlrt::splitk_reduce({batch}, {m}, {n}, {splits}, {ptr(3)}, ep);\n", grid, block,
                            "splitk_reduce")

    def run(self) -> None:
        self.positions = {op.operation: i for i, op in enumerate(self.block.operations)}
        group: list = []
        for position, op in enumerate(self.block.operations):
            op = op.operation
            name = op.name
            if name in _SKIP_OPS:
                continue
            if name in ("linalg.generic", "memref.copy"):
                g = self.analyze_generic(op, position) if name == "linalg.generic" else self.analyze_copy(op, position)
                if g is None:
                    continue
                if group and not self.can_fuse(group, g):
                    self.emit_generics(group)
                    group = []
                group.append(g)
                continue
            if group:
                self.emit_generics(group)
                group = []
            if name == "func.call":
                self.emit_call(op)
            else:
                raise BuildError(f"CUDA backend: unsupported operation {name} at the top level of the model")
        if group:
            self.emit_generics(group)

    def source(self, precision: str) -> str:
        return (f"// Generated by mlpack: CUDA target, precision {precision}.\n"
                f"#define MLRT_PRECISION {PRECISIONS[precision]}\n"
                '#include "mlrt_cuda_kernels.cuh"\n\n' + "".join(self.globals.values()) + "\n" + "\n".join(self.kernels))


# --------------------------------------------------------------------------- driver


def find_nvcc() -> str | None:
    for cand in (os.environ.get("MLPACK_NVCC"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def compile_ptx(source: str, min_sm: int) -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("--target cuda needs the CUDA toolkit's nvcc (on PATH, in $CUDA_HOME/bin, or $MLPACK_NVCC) "
                         "to compile the generated kernels to PTX")
    with tempfile.TemporaryDirectory(prefix="mlpack-cuda-") as tmp:
        cu = Path(tmp) / "model.cu"
        cu.write_text(source)
        cmd = [nvcc, "-ptx", f"-arch=compute_{min_sm}", "-O3", "-std=c++17", f"-I{KERNELS_DIR}", "-o",
               str(Path(tmp) / "model.ptx"), str(cu)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as e:
            raise BuildError(f"nvcc failed on the generated CUDA source:\n{e.stderr[-4000:]}") from e
        return (Path(tmp) / "model.ptx").read_text()


def find_ptxas() -> str | None:
    nvcc = find_nvcc()
    beside = Path(nvcc).parent / "ptxas" if nvcc else None
    return str(beside) if beside and beside.exists() else shutil.which("ptxas")


def compile_sass(ptx: str, archs: list[int]) -> dict[int, bytes]:
    """PTX -> cubin for each architecture with ptxas (in parallel), so GPUs of those architectures
    load machine code instead of JIT-compiling the PTX (seconds for a ResNet-50 on first load)."""
    ptxas = find_ptxas()
    if not archs:
        return {}
    if ptxas is None:
        raise BuildError("--cuda-sass needs ptxas (beside nvcc); pass --cuda-sass none to ship PTX only")
    with tempfile.TemporaryDirectory(prefix="mlpack-sass-") as tmp:
        src = Path(tmp) / "model.ptx"
        src.write_text(ptx)
        procs = {cc: subprocess.Popen([ptxas, f"-arch=sm_{cc}", "-O3", str(src), "-o", str(Path(tmp) / f"{cc}.cubin")],
                                      stderr=subprocess.PIPE, text=True) for cc in archs}
        out = {}
        for cc, p in procs.items():
            _, err = p.communicate()
            if p.returncode != 0:
                raise BuildError(f"ptxas -arch=sm_{cc} failed on the generated PTX:\n{err[-4000:]}")
            out[cc] = (Path(tmp) / f"{cc}.cubin").read_bytes()
        return out


def ptx_isa(ptx: str) -> str:
    m = re.search(r"^\s*\.version\s+(\d+\.\d+)", ptx, flags=re.M)
    if not m:
        raise BuildError("internal: the PTX has no .version directive")
    return m.group(1)


DEFAULT_SASS = (80, 90)  # A100-class and H100/H200: machine code shipped for both by default


def compile_cuda(planned: PlannedProgram, precision: str = "fp32", min_sm: int = DEFAULT_SM, dump=None, stage=None,
                 sass=DEFAULT_SASS, half_weights: bool = False) -> CudaArtifact:
    """A planned program (lowered with generalized linalg ops and split-K scratch: see the
    target's lowering()) -> PTX plus a launch table (see module doc), and cubins for `sass`.
    half_weights: with precision fp16/bf16, the kernels read GEMM and conv weights in that type
    (CudaArtifact.weight_dtypes says which; the bundle must store them so: stored_weights)."""
    dump, stage = hooks(dump, stage)
    with stage("codegen (cuda)"):
        with planned.module.context:
            emitter = _Emitter(planned.module, planned.func, precision, planned.call, half_weights)
            emitter.run()
            weight_dtypes = emitter.weight_dtypes(planned.call)
        source = emitter.source(precision)
        dump("cuda-source", source)
        ptx = compile_ptx(source, min_sm)
        dump("cuda-ptx", ptx)
    with stage("sass (cuda)"):
        cubins = compile_sass(ptx, [cc for cc in sass if cc >= min_sm])
    isa = ptx_isa(ptx)
    return CudaArtifact(ptx, source, planned.memory_plan, emitter.launches, dict(emitter.counts), precision, min_sm,
                        isa, _PTX_ISA_DRIVER.get(isa, 13000), cubins, weight_dtypes)
