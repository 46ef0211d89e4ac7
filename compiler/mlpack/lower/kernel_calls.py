"""Replace the heavy linalg ops (1-D, 2-D, grouped and 3-D conv, depthwise conv, matmul, batch
matmul, 2-D max / sum pooling) with calls to the microkernels in targets/cpu_kernels/ (tiled, vectorized,
multi-threaded C compiled into the bundle), fusing what surrounds them so each output is written
once:

- prologue: the fill / bias broadcast that initializes the output (the kernel writes bias + A*B);
- input padding: a zero-filled buffer with the input copied into its middle (the kernel reads
  the unpadded input and treats out-of-range taps as zero; for max pooling, a -inf-filled one);
- epilogue: following elementwise ops that add a bias vector, add a residual, or clamp
  (ReLU, ReLU6, ...), recognized by evaluating their bodies on sample values.

Runs on bufferized IR, before memory planning: the packed-B scratch a kernel needs becomes an
ordinary `memref.alloc`, so the planner gives it an arena offset like any intermediate. Buffers
are passed as int64 addresses (`memref.extract_aligned_pointer_as_index`, plus a view's offset);
f32 memrefs with static layouts qualify: contiguous ones, and for the matmul operands views
with any strides (A with unit column stride). Anything else keeps its (slow, correct) loops.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from .memory_plan import _VIEW_OPS, TopLevelOps, collect_users, defining_op, root_buffer

# Matmuls with fewer rows than this read a B computed at run time in place instead of packing it
# (GEMV-like shapes). Weights are packed at build time whatever the row count: with packed panels
# one row runs 1.28x and two rows 1.6x faster than reading B in place (784-1024-1024-10 MLP, Zen 4).
PACK_MIN_ROWS = 8
# 3x3 convs with fewer input or output channels than this keep im2col: the GEMMs of the Winograd
# domain would be too thin to pay for its input and output transforms (Zen 4, 2 threads: 16->64
# on 15x15 1.35x slower than im2col; 32->32 on 32x32 1.55x faster).
WINOGRAD_MIN_CHANNELS = 32
# On maps whose F(2x2) tiles fill one panel (8x8 and smaller) Winograd pays only with this many
# input x output channels: 128->256 on 7x7 1.36x faster than the small-map conv, 128->128 even,
# 64->64 and 32->128 1.3x slower.
WINOGRAD_ONE_PANEL_MIN_CHANNELS2 = 128 * 256
# Grouped convs: the most threads that run (image, group) pairs side by side, each with its own
# packed-B scratch (cpu_kernels/conv.c mlrt_conv2d_grouped_f32).
GROUPED_SLICES = 8
# Convs with fewer output positions per image than this put the output channels in the vector
# lanes (mlrt_conv2d_small_f32, weights pre-packed) instead of the positions (cpu_kernels/conv.c),
# except 1x1 convs whose positions fill whole panels. Measured (Zen 4, 2 threads, 256-512
# channels): 3x3 on 2x2 / 4x4 / 6x6 maps 12x / 1.6x / 1.3x faster than im2col or Winograd; a
# 1x1 on 2x2 2.6x; a 1x1 on 4x4 (16 positions, one full panel) 2x slower; 8x8 even; 7x7 with
# 512 channels 1.7x slower (its row gather is scalar and strided).
SMALL_MAP_POSITIONS = 32
# Wider taps (3x3) keep the small-map conv up to this many positions where Winograd does not pay:
# 6x6 and 7x7 maps with 32-128 channels 1.1-1.2x faster than im2col; 8x8 (four full panels) slower.
SMALL_MAP_POSITIONS_TAPS = 64
NR = 16  # packed panel width, cpu_kernels/mlrt_kernels.h MLRT_NR
MR = 6  # rows of a packed A panel, cpu_kernels/mlrt_kernels.h MLRT_MR
GEMM_KC = 256  # the smallest K block the GEMM uses (cpu_kernels/gemm.c KC, on AVX-512): deeper products may keep partial sums in C
DW_RING_FLOATS, DW_MAX_KH, DW_ROWS = 16384, 16, 4  # the depthwise kernel's row ring, cpu_kernels/mlrt_kernels.h

_POOLING = ("linalg.pooling_nchw_max", "linalg.pooling_nchw_sum")  # cpu_kernels/pool.c (CPU)
# The indexing maps of plain (non-transposed, non-broadcast) matmuls; other variants keep loops.
_DEFAULT_MAPS = {
    "linalg.matmul": "[affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d2, d1)>, "
                     "affine_map<(d0, d1, d2) -> (d0, d1)>]",
    "linalg.batch_matmul": "[affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>, affine_map<(d0, d1, d2, d3) -> (d0, d3, d2)>, "
                           "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>]",
}
# The ops run() looks at; everything else is skipped before any analysis.
_KERNEL_OPS = frozenset({"linalg.conv_2d_nchw_fchw", "linalg.depthwise_conv_2d_nchw_chw", "linalg.conv_2d_ngchw_gfchw",
                         "linalg.conv_3d_ncdhw_fcdhw", "linalg.conv_1d_ncw_fcw", *_POOLING, *_DEFAULT_MAPS})
# Ops that make a view of a buffer and touch no data: memory_plan's view ops but the address ops
# (a kernel call reads or writes through those).
_PURE_VIEWS = _VIEW_OPS - {"memref.extract_aligned_pointer_as_index", "arith.index_cast", "arith.addi"}
_NO_EFFECT = {"arith.constant", "memref.alloc", "memref.get_global", "memref.collapse_shape", "memref.expand_shape"}
_CMPF = {2: "ogt", 3: "oge", 4: "olt", 5: "ole", 9: "ugt", 10: "uge", 11: "ult", 12: "ule"}
_SAMPLES = [-100.0, -7.0, -2.5, -0.5, 0.0, 0.25, 3.0, 5.5, 6.0, 7.5, 100.0]


# --------------------------------------------------------------------------- small helpers


def _is_dense_f32(value, rank: int) -> bool:
    from torch_mlir import ir

    t = value.type
    if not isinstance(t, ir.MemRefType) or t.rank != rank or not t.has_static_shape:
        return False
    if not isinstance(t.element_type, ir.F32Type):
        return False
    strides, offset = t.get_strides_and_offset()
    expect, contiguous = 1, True
    for dim, stride in zip(reversed(t.shape), reversed(strides)):
        if dim != 1 and stride != expect:
            contiguous = False
        expect *= dim
    return contiguous and offset == 0


def _contiguous_offset(value, rank: int) -> int | None:
    """Element offset of a static f32 view of `rank` dims whose elements are one contiguous
    row-major run (strides of size-1 dims ignored), else None: a channel slice of a batch-1
    activation (torch.split feeding per-split convs) qualifies."""
    layout = _static_layout(value, rank)
    if layout is None:
        return None
    offset, strides = layout
    expect = 1
    for dim, stride in zip(reversed(value.type.shape), reversed(strides)):
        if dim != 1 and stride != expect:
            return None
        expect *= dim
    return offset


def _slice_span(value) -> tuple[int, int] | None:
    """(first, last) element of a view that is one contiguous run (_contiguous_offset), else None."""
    offset = _contiguous_offset(value, value.type.rank)
    return None if offset is None else (offset, offset + math.prod(value.type.shape) - 1)


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _static_layout(value, rank: int) -> tuple[int, list[int]] | None:
    """(offset, strides) in elements of a static-shaped f32 memref of `rank` whose layout is
    known at compile time, else None. Strides of size-1 dims are reported as 0 (never used)."""
    from torch_mlir import ir

    t = value.type
    if not isinstance(t, ir.MemRefType) or t.rank != rank or not t.has_static_shape \
            or not isinstance(t.element_type, ir.F32Type):
        return None
    strides, offset = t.get_strides_and_offset()
    dynamic = ir.ShapedType.get_dynamic_stride_or_offset()
    if offset == dynamic or dynamic in strides or offset < 0:
        return None
    return offset, [0 if d == 1 else st for d, st in zip(t.shape, strides)]


def _ints(op, name: str) -> list[int]:
    from torch_mlir import ir

    attr = op.attributes[name]
    try:
        return list(ir.DenseIntElementsAttr(attr))
    except ValueError:
        return list(ir.DenseI64ArrayAttr(attr))


def _plain_matmul(op, name: str) -> bool:
    maps = op.attributes["indexing_maps"] if "indexing_maps" in op.attributes else None
    return "cast" not in op.attributes and (maps is None or str(maps) == _DEFAULT_MAPS[name])


def _packed_floats(k: int, n: int) -> int:
    return (n + NR - 1) // NR * k * NR


def _float_constant(value):
    """The float a Value holds if it is an `arith.constant` scalar, else None."""
    from torch_mlir import ir

    op = defining_op(value)
    if op is None or op.name != "arith.constant":
        return None
    attr = op.attributes["value"]
    return ir.FloatAttr(attr).value if isinstance(attr, ir.FloatAttr) else None


# --------------------------------------------------------------------------- body interpreter


class _Unsupported(Exception):
    pass


def _evaluate(region, args: list[float]) -> float:
    """Evaluate a linalg body (one block, scalar f32 arith) on `args` (one per block argument)."""
    from torch_mlir import ir

    block = region.blocks[0]
    env = {}
    for arg, v in zip(block.arguments, args):
        env[arg] = v

    def get(value):
        if value in env:
            return env[value]
        c = _float_constant(value)
        if c is None:
            raise _Unsupported()
        return c

    for op in block.operations:
        name = op.operation.name
        vals = [get(v) for v in op.operands] if name != "arith.constant" else []
        if name == "linalg.yield":
            if len(vals) != 1:
                raise _Unsupported()
            return vals[0]
        if name == "arith.constant":
            c = _float_constant(op.result)
            if c is None:
                raise _Unsupported()
            r = c
        elif name == "arith.addf":
            r = vals[0] + vals[1]
        elif name == "arith.subf":
            r = vals[0] - vals[1]
        elif name == "arith.mulf":
            r = vals[0] * vals[1]
        elif name in ("arith.maximumf", "arith.maxnumf"):
            r = max(vals)
        elif name in ("arith.minimumf", "arith.minnumf"):
            r = min(vals)
        elif name == "arith.negf":
            r = -vals[0]
        elif name == "arith.cmpf":
            pred = _CMPF.get(ir.IntegerAttr(op.attributes["predicate"]).value)
            a, b = vals
            if pred is None:
                raise _Unsupported()
            r = {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[pred[1:]]
        elif name == "arith.select":
            r = vals[1] if vals[0] else vals[2]
        else:
            raise _Unsupported()
        env[op.result] = r
    raise _Unsupported()


def _as_clamp(f) -> tuple[float, float] | None:
    """(lo, hi) if f(x) == clamp(x, lo, hi) on the samples (lo/hi may be -inf/+inf)."""
    big = 1e30
    lo, hi = f(-big), f(big)
    lo = -math.inf if lo == -big else lo
    hi = math.inf if hi == big else hi
    if not (lo <= hi):
        return None
    for x in _SAMPLES:
        if f(x) != min(max(x, lo), hi):
            return None
    return lo, hi


def _is_add(f) -> bool:
    return all(f(a, b) == a + b for a in _SAMPLES[::2] for b in _SAMPLES[1::3])


# --------------------------------------------------------------------------- the rewrite


@dataclass
class _Fusion:
    overwrite: bool = False
    bias: object = None  # Value of a 1-D memref
    bias_per_col: bool = False
    residual: object = None
    lo: float = -math.inf
    hi: float = math.inf
    dst: object = None
    dst_offset: int = 0  # elements from dst's aligned base (a slice of a concatenation)
    erase: list = field(default_factory=list)  # ops absorbed into the kernel


class _Rewriter(TopLevelOps):
    def __init__(self, module, func_op, scratch=None, prepack: bool = True, winograd: bool = False,
                 cpu_only: bool = False):
        from torch_mlir import ir

        self.ir = ir
        # None: the CPU microkernels' packed-B scratch. Else a function (batch, M, N, K) -> floats
        # of scratch a kernel call gets instead (the CUDA target's split-K partial sums).
        self.scratch = scratch
        self.concat_slices: dict = {}  # concatenation alloc -> element ranges kernels write in place
        self.prepack_weights = prepack
        # Weight layouts only the CPU kernels read (a CUDA target in the same bundle shares weights).
        self.cpu_layouts = cpu_only and prepack and scratch is None
        self.winograd = winograd and self.cpu_layouts
        self.module = module
        self.globals = {}
        for op in module.body.operations:
            if op.operation.name == "memref.global":
                self.globals[ir.StringAttr(op.attributes["sym_name"]).value] = op
        super().__init__(func_op)

    def neighbor(self, i: int, step: int):
        """The nearest top-level op from position i in direction `step` that has an effect."""
        j = i + step
        while 0 <= j < len(self.ops) and (self.ops[j] is None or self.ops[j].name in _NO_EFFECT):
            j += step
        return self.ops[j] if 0 <= j < len(self.ops) else None

    def scalar_global(self, value):
        """The float in a 0-d memref that is a `memref.get_global` of a splat constant, else None."""
        ir = self.ir
        op = defining_op(value)
        if op is None or op.name != "memref.get_global":
            return None
        name = ir.FlatSymbolRefAttr(op.attributes["name"]).value
        glob = self.globals.get(name)
        if glob is None or "initial_value" not in glob.attributes:
            return None
        init = glob.attributes["initial_value"]
        try:
            dense = ir.DenseFPElementsAttr(init)
        except ValueError:
            return None
        return dense[0] if dense.is_splat or len(dense) == 1 else None

    # ---------------------------------------------------------------- prologue / padding

    def fill_value(self, op):
        """The constant an op writes to its whole output if it is a fill (linalg.fill / map)."""
        if op.name == "linalg.fill":
            return _float_constant(op.operands[0])
        if op.name == "linalg.map" and len(op.operands) == 1:
            term = list(op.regions[0].blocks[0].operations)[-1]
            return _float_constant(term.operands[0]) if len(term.operands) == 1 else None
        return None

    def last_writer_is_zero_fill(self, buf, before: int) -> bool:
        positions = [p for p in self.user_positions(buf) if p < before]
        if not positions:
            return False
        writer = self.ops[max(positions)]
        while writer.name == "memref.copy" and writer.operands[0] == buf:  # reads of buf: look further back
            positions = [p for p in positions if p < self.index[writer]]
            if not positions:
                return False
            writer = self.ops[max(positions)]
        return self.fill_value(writer) == 0.0 and writer.operands[-1] == buf

    def prologue(self, kernel_op, out, bias_dims, fusion: _Fusion) -> None:
        i = self.index[kernel_op]
        p = self.neighbor(i, -1)
        if p is None:
            return
        if self.fill_value(p) == 0.0 and p.operands[-1] == out:
            fusion.overwrite = True
            fusion.erase.append(p)
        elif p.name == "linalg.broadcast" and p.operands[1] == out and bias_dims is not None \
                and _ints(p, "dimensions") == bias_dims[0] and _is_dense_f32(p.operands[0], 1):
            fusion.overwrite, fusion.bias, fusion.bias_per_col = True, p.operands[0], bias_dims[1]
            fusion.erase.append(p)
        elif p.name == "memref.copy" and p.operands[1] == out \
                and self.last_writer_is_zero_fill(p.operands[0], self.index[p]):
            fusion.overwrite = True
            fusion.erase.append(p)
        elif self.last_writer_is_zero_fill(out, i):  # zeroed earlier, read by others since: keep the fill
            fusion.overwrite = True

    def unpadded_input(self, x, kernel_op, out, in_place_ok=False, fused=(), via=None, pad=0.0, slice_ok=False):
        """If `x` is a buffer filled with `pad` holding a copy of another tensor in its middle, return
        (that tensor, the leading padding of each spatial dim (NCHW: top, left; NCDHW: front, top,
        left), ops to erase); else None. The copy's source must stay
        intact until the kernel reads it (ops in `fused` are absorbed into the kernel and do not
        count). Bufferization happily reuses a dead source as the output once the copy exists:
        that source qualifies only if the kernel can run in place (`in_place_ok`). `via`: a view
        op through which the kernel reads x (its use counts as the kernel's). slice_ok: the tensor
        may be a contiguous slice at an offset (the caller adds it to the pointer)."""
        alloc = defining_op(x)
        if alloc is None or alloc.name != "memref.alloc":
            return None
        fill = subview = copy = None
        for use in x.uses:
            u = use.owner.operation if hasattr(use.owner, "operation") else use.owner
            if u == kernel_op or (via is not None and u == via):
                continue
            if u.name == "memref.subview" and subview is None:
                subview = u
            elif self.fill_value(u) == pad and fill is None:
                fill = u
            else:
                return None
        if fill is None or subview is None:
            return None
        sub_uses = list(subview.result.uses)
        if len(sub_uses) != 1:
            return None
        copy = sub_uses[0].owner.operation
        if copy.name != "memref.copy" or copy.operands[1] != subview.result:
            return None
        src = copy.operands[0]
        offsets, strides = _ints(subview, "static_offsets"), _ints(subview, "static_strides")
        rank = len(x.type.shape)
        if len(offsets) != rank or offsets[:2] != [0, 0] or strides != [1] * rank:
            return None
        if not (_contiguous_offset(src, rank) is not None if slice_ok else _is_dense_f32(src, rank)):
            return None
        if not (self.index[fill] < self.index[copy] < self.index[kernel_op]) or (src == out and not in_place_ok):
            return None
        skip = {self.index[op] for op in fused}
        if any(self.index[copy] < p < self.index[kernel_op] and p not in skip
               for p in self.user_positions(src, views=False)):
            return None  # something between the copy and the kernel touches the source
        return src, *offsets[2:], [copy, subview, fill, alloc]

    # ---------------------------------------------------------------- epilogue

    def epilogue(self, kernel_op, out, bias_layout, fusion: _Fusion, inputs) -> None:
        cur, last = self.fuse_elementwise_epilogue(kernel_op, out, bias_layout, fusion, inputs)
        self.write_into_concat(kernel_op, out, cur, last, fusion)

    def fuse_elementwise_epilogue(self, kernel_op, out, bias_layout, fusion: _Fusion, inputs):
        """Absorbs the elementwise ops after the kernel into `fusion`; returns the value they
        leave the result in and the position of the last one absorbed."""
        ir = self.ir
        cur, last = out, self.index[kernel_op]
        stage = 0  # 0: bias allowed, 1: residual allowed, 2: clamps only
        while True:
            e = self.neighbor(last, +1)
            if e is None or e.name != "linalg.generic":
                return cur, last
            operands = list(e.operands)
            ins, outs = operands[:-1], operands[-1:]
            maps = [ir.AffineMapAttr(m).value for m in ir.ArrayAttr(e.attributes["indexing_maps"])]
            iters = str(e.attributes["iterator_types"])
            if "reduction" in iters or len(outs) != 1 or len(maps) != len(operands):
                return cur, last
            target = outs[0]
            if target.type != cur.type or not _is_dense_f32(target, cur.type.rank) \
                    or str(maps[-1]) != str(ir.AffineMap.get_identity(cur.type.rank)):
                return cur, last
            block_args = list(e.regions[0].blocks[0].arguments)
            if list(block_args[-1].uses):
                return cur, last  # the body reads the output: not a pure elementwise map
            cur_slots = [k for k, v in enumerate(ins) if v == cur]
            if len(cur_slots) != 1 or str(maps[cur_slots[0]]) != str(maps[-1]):
                return cur, last
            slot = cur_slots[0]
            # The value in `cur` must not be needed after this op (unless the op overwrites it):
            # its buffer's next use, if any, overwrites it (bufferization reuses buffers).
            if target != cur and not self.dead_after(cur, self.index[e]):
                return cur, last
            if target in inputs:
                return cur, last
            alloc = defining_op(target)
            if alloc is not None and self.top(alloc) > self.index[kernel_op] \
                    and self.concat_slice(target, self.index[e], kernel_op) is None:
                # allocated after the kernel: moving it up lengthens its life in the plan (tried:
                # SqueezeNet's arena 0.34 -> 0.36 MiB for no measurable speed); unless all it
                # does is go into a concatenation, which the kernel writes instead
                return cur, last
            others = [k for k in range(len(ins)) if k != slot]
            try:
                if not others:
                    clamp = _as_clamp(lambda x: _evaluate(e.regions[0], self._args(slot, x, None, len(ins))))
                    kind = ("clamp", clamp) if clamp else None
                elif len(others) == 1:
                    k = others[0]
                    other = ins[k]
                    scalar = self.scalar_global(other) if other.type.rank == 0 else None
                    if scalar is not None:
                        clamp = _as_clamp(lambda x: _evaluate(e.regions[0], self._args(slot, x, (k, scalar), len(ins))))
                        kind = ("clamp", clamp) if clamp else None
                    elif _is_add(lambda a, b: _evaluate(e.regions[0], self._args(slot, a, (k, b), len(ins)))):
                        if other.type == cur.type and str(maps[k]) == str(maps[-1]) and _is_dense_f32(other, cur.type.rank):
                            kind = ("residual", other)
                        elif bias_layout is not None and _is_dense_f32(other, 1) \
                                and str(maps[k]) == bias_layout and other.type.shape[0] == cur.type.shape[-1]:
                            kind = ("bias", other)
                        else:
                            kind = None
                    else:
                        kind = None
                else:
                    kind = None
            except _Unsupported:
                kind = None
            if kind is None:
                return cur, last
            if kind[0] == "bias":
                if stage > 0 or not fusion.overwrite or fusion.bias is not None:
                    return cur, last
                fusion.bias, fusion.bias_per_col, stage = kind[1], True, 1
            elif kind[0] == "residual":
                if stage > 1:
                    return cur, last
                fusion.residual, stage = kind[1], 2
            else:
                lo, hi = kind[1]
                lo, hi = max(fusion.lo, lo), min(fusion.hi, hi)
                if lo > hi:
                    return cur, last
                fusion.lo, fusion.hi, stage = lo, hi, 2
            fusion.erase.append(e)
            fusion.dst = target
            cur, last = target, self.index[e]

    def concat_slice(self, value, after: int, kernel_op):
        """(copy, slice, concatenation buffer, (first, last) element of the slice) if the next use of `value`'s buffer
        after position `after` copies all of `value` into a contiguous slice of an allocation
        (torch.cat of batch-1 activations along channels), `value` is dead after it, and between
        `kernel_op` and that copy nothing touches the allocation but views and copies into other
        slices; else None. On the CPU only (the CUDA kernels keep their own layouts)."""
        if self.scratch is not None:
            return None
        later = sorted(p for p in self.user_positions(root_buffer(value)) if p > after)
        if not later or later.count(later[0]) != 1:
            return None
        at, copy = later[0], self.ops[later[0]]
        if copy is None or copy.name != "memref.copy" or copy.operands[0] != value:
            return None
        view = defining_op(copy.operands[1])
        if view is None or view.name != "memref.subview" or list(view.operands[1:]):
            return None
        concat = view.operands[0]  # an allocation, or a model output (a block argument)
        alloc = defining_op(concat)
        if alloc is not None and (alloc.name != "memref.alloc" or alloc not in self.index or list(alloc.operands)):
            return None
        span = _slice_span(copy.operands[1])
        if span is None or not _is_dense_f32(value, value.type.rank) \
                or list(value.type.shape) != list(view.result.type.shape):
            return None
        if not self.dead_after(value, at):
            return None
        if any(_overlap(s, span) for s in self.concat_slices.get(concat, [])):
            return None
        users: list = []
        collect_users(concat, users)
        for u in users:
            u = u.operation if hasattr(u, "operation") else u
            if u == copy or u.name in _PURE_VIEWS or not self.index[kernel_op] <= self.top(u) <= at:
                continue
            if u.name == "memref.copy" and root_buffer(u.operands[0]) != concat:
                other = _slice_span(u.operands[1])
                if other is not None and not _overlap(other, span):
                    continue
            return None
        return copy, view, concat, span

    def write_into_concat(self, kernel_op, out, cur, last: int, fusion: _Fusion) -> None:
        """The kernel writes its result straight into the concatenation slice `cur` (its output,
        or the last fused op's) is copied to (concat_slice): the copy goes, and the allocation and
        its slice view move up to the kernel. SqueezeNet copied 0.4 MB a run this way, on one
        thread, and ran the ReLU of each fire module's 1x1 branch as a loop of its own."""
        found = self.concat_slice(cur, last, kernel_op)
        if found is None:
            return
        copy, view, concat, span = found
        at = self.index[kernel_op]
        anchor = kernel_op.operation if hasattr(kernel_op, "operation") else kernel_op
        for op in (defining_op(concat), view):
            if op is not None and self.index[op] > at:
                op.move_before(anchor)
                if self.ops[self.index[op]] == op:
                    self.ops[self.index[op]] = None
                self.index[op] = at
        fusion.erase.append(copy)
        previous = fusion.dst  # None, or cur: the last fused op's target
        fusion.dst, fusion.dst_offset = view.result, span[0]
        self.concat_slices.setdefault(concat, []).append(span)
        # the fused ops' own target, now written by nobody, goes with them
        alloc, out_alloc = defining_op(previous) if previous is not None else None, defining_op(out)
        if alloc is not None and alloc.name == "memref.alloc" and (out_alloc is None or alloc != out_alloc):
            absorbed = {kernel_op.operation if hasattr(kernel_op, "operation") else kernel_op, *fusion.erase}
            users: list = []
            collect_users(alloc.result, users)
            if all((u.operation if hasattr(u, "operation") else u) in absorbed for u in users):
                fusion.erase.append(alloc)

    @staticmethod
    def _args(slot: int, x: float, other, n_ins: int) -> list[float]:
        args = [0.0] * (n_ins + 1)
        args[slot] = x
        if other is not None:
            args[other[0]] = other[1]
        return args

    # ---------------------------------------------------------------- emission

    def emit(self, kernel_op, name: str, leading: list, scratch_floats, dims_before: list, fusion: _Fusion,
             trailing_dims: list, out, gemm_shape=None, strides=(), offsets=None):
        from torch_mlir.dialects import arith, func, memref

        ir = self.ir
        i64, f32 = ir.IntegerType.get_signless(64), ir.F32Type.get()
        # The GEMM kernels keep partial sums in C between K blocks; the others never write C.
        out_alloc = self.spare_output(kernel_op, leading, fusion, out, gemm_shape is not None and gemm_shape[3] > GEMM_KC)
        if out_alloc is not None:  # the CPU kernels keep partial sums in dst: no buffer for `out`
            leading = [*leading[:2], fusion.dst]
        with ir.InsertionPoint(kernel_op), kernel_op.location:
            offsets = {**(offsets or {}), **({fusion.dst: fusion.dst_offset} if fusion.dst_offset else {})}

            def ptr(v):
                return self.address(v, offsets.get(v, 0))

            args = [ptr(v) for v in leading]
            if scratch_floats is not None:
                if self.scratch is not None:
                    scratch_floats = self.scratch(*gemm_shape)
                if scratch_floats:
                    alloc = memref.AllocOp(ir.MemRefType.get([scratch_floats], f32), [], [])
                    alloc.attributes["alignment"] = ir.IntegerAttr.get(i64, 64)
                    args.append(ptr(alloc.result))
                else:
                    args.append(ptr(None))
            args += [arith.ConstantOp(i64, d).result for d in dims_before]
            args += [arith.ConstantOp(i64, int(fusion.overwrite)).result, ptr(fusion.bias)]
            args += [arith.ConstantOp(i64, d).result for d in trailing_dims]
            args += [ptr(fusion.residual),
                     arith.ConstantOp(f32, fusion.lo).result, arith.ConstantOp(f32, fusion.hi).result,
                     ptr(fusion.dst if fusion.dst is not None else out)]
            args += [arith.ConstantOp(i64, d).result for d in strides]
            call = func.CallOp([], name, args)
        at = self.index[kernel_op]
        for op in [kernel_op, *fusion.erase]:
            self.erase(op)
        if out_alloc is not None and not list(out_alloc.results[0].uses):
            self.erase(out_alloc)
        self.place(call, at)
        return [a.type for a in args]

    def address(self, v, offset: int = 0):
        """An i64 holding the address of `v`'s element `offset` (0 for None), at the insertion point."""
        from torch_mlir.dialects import arith, memref

        i64 = self.ir.IntegerType.get_signless(64)
        if v is None:
            return arith.ConstantOp(i64, 0).result
        address = arith.IndexCastOp(i64, memref.ExtractAlignedPointerAsIndexOp(v).result).result
        if offset:  # a view's first element, past the aligned base
            address = arith.AddIOp(address, arith.ConstantOp(i64, 4 * offset).result).result
        return address

    def call(self, kernel_op, name: str, pointers: list, ints: list, erase: list):
        """Replaces `kernel_op` (and the ops in `erase`) by a call name(pointers..., ints...)."""
        from torch_mlir.dialects import arith, func

        ir = self.ir
        i64 = ir.IntegerType.get_signless(64)
        with ir.InsertionPoint(kernel_op), kernel_op.location:
            args = [self.address(v) for v in pointers]
            args += [arith.ConstantOp(i64, d).result for d in ints]
            call = func.CallOp([], name, args)
        at = self.index[kernel_op]
        for op in [kernel_op, *erase]:
            self.erase(op)
        self.place(call, at)
        return [a.type for a in args]

    def erase(self, op) -> None:
        """Erases a top-level op, leaving a hole (None) at its position."""
        op = op.operation
        at = self.index.pop(op, None)
        if at is not None and self.ops[at] == op:
            self.ops[at] = None
        op.erase()

    def place(self, call, at: int) -> None:
        """Puts a new call at position `at` (its kernel's), and the ops made for its arguments
        (constants, addresses, scratch allocs) with it: positions stay in order without re-listing
        the whole body after every rewrite."""
        call = call.operation
        self.ops[at] = call
        self.index[call] = at
        pending = list(call.operands)
        while pending:
            op = defining_op(pending.pop())
            if op is not None and op not in self.index:
                self.index[op] = at
                pending.extend(op.operands)

    def spare_output(self, kernel_op, leading: list, fusion: _Fusion, out, writes_c: bool):
        """The alloc of the kernel's output C if the call can take the fused epilogue's dst as C,
        leaving C's buffer unused: on the CPU, with C overwritten (no prior contents to read), C
        used by nothing but this kernel and the ops fused into it, C not also an input (in-place
        depthwise), and, if the kernel writes partial sums to C (`writes_c`), no residual in dst
        (they would overwrite it before the last K block reads it)."""
        if self.scratch is not None or not fusion.overwrite or fusion.dst is None or fusion.dst == out:
            return None
        if out in leading[:2] or (writes_c and fusion.residual is not None
                                  and root_buffer(fusion.residual) == root_buffer(fusion.dst)):
            return None
        alloc = defining_op(out)
        if alloc is None or alloc.name != "memref.alloc":
            return None
        users: list = []
        collect_users(out, users)
        absorbed = {kernel_op, *fusion.erase}
        if any((u.operation if hasattr(u, "operation") else u) not in absorbed for u in users):
            return None
        return alloc

    def matmul_layouts(self, a, b, c_out, rank: int):
        """((offset, strides) of A, of B) if the GEMM kernel can read them in place, else None.
        C must be dense. On the CPU, A may be any view with unit column stride (a slice of a
        fused qkv projection, a head of a permuted tensor) and B any view at all (transposed
        included: the kernel gathers it into packed panels). The CUDA GEMM takes dense operands."""
        if not _is_dense_f32(c_out, rank):
            return None
        if self.scratch is not None and not (_is_dense_f32(a, rank) and _is_dense_f32(b, rank)):
            return None
        la, lb = _static_layout(a, rank), _static_layout(b, rank)
        if la is None or lb is None or la[1][-1] not in (0, 1):
            return None
        return la, lb

    def packable_weight(self, value, kernel_op, via=None) -> int | None:
        """Argument index of `value` if it is a function argument used by `kernel_op` alone
        (possibly through the view op `via`): its data can then be stored pre-packed in the bundle."""
        if not isinstance(value.owner, self.ir.Block) or value.owner != self.block:
            return None
        users: list = []
        collect_users(value, users)
        allowed = [op for op in (kernel_op, via) if op is not None]  # MLIR ops do not compare with None
        if any(not any((u.operation if hasattr(u, "operation") else u) == op for op in allowed) for u in users):
            return None
        return value.arg_number

    def run(self) -> Counter:
        ir = self.ir
        used: Counter = Counter()
        self.prepack: dict[int, tuple] = {}  # argument index -> weight layout (see replace_with_kernel_calls)
        signatures: dict[str, list] = {}
        start = 0
        while start < len(self.ops):
            kernel_op = self.ops[start]
            start += 1
            if kernel_op is None or kernel_op.name not in _KERNEL_OPS:
                continue
            name = kernel_op.name
            operands = list(kernel_op.operands)
            fusion = _Fusion()
            if name in ("linalg.conv_2d_nchw_fchw", "linalg.depthwise_conv_2d_nchw_chw"):
                depthwise = name == "linalg.depthwise_conv_2d_nchw_chw"
                x, w, y = operands
                # the input may be a contiguous slice (CPU): its offset is added to the pointer
                x_offset = _contiguous_offset(x, 4) if self.scratch is None else (0 if _is_dense_f32(x, 4) else None)
                if x_offset is None or not (_is_dense_f32(w, 3 if depthwise else 4) and _is_dense_f32(y, 4)):
                    continue
                (sh, sw), (dh, dw) = _ints(kernel_op, "strides"), _ints(kernel_op, "dilations")
                kh, kw = w.type.shape[-2:]
                co, oh, ow = y.type.shape[1:]
                self.prologue(kernel_op, y, ([0, 2, 3], False), fusion)
                winograd_arg = small_arg = None
                winograd = self.winograd and not depthwise and (kh, kw, sh, sw, dh, dw) == (3, 3, 1, 1, 1, 1) \
                    and min(x.type.shape[1], co) >= WINOGRAD_MIN_CHANNELS \
                    and (_winograd_tiles(oh, ow, 2)[2] > 1 or x.type.shape[1] * co >= WINOGRAD_ONE_PANEL_MIN_CHANNELS2)
                if self.cpu_layouts and not depthwise and (
                        (oh * ow < SMALL_MAP_POSITIONS and not (kh * kw == 1 and oh * ow % NR == 0))
                        or (kh * kw > 1 and oh * ow < SMALL_MAP_POSITIONS_TAPS and not winograd)):
                    small_arg = self.packable_weight(w, kernel_op)
                elif winograd:
                    winograd_arg = self.packable_weight(w, kernel_op)
                # The CPU depthwise kernel stages rows in a ring, so it may overwrite its input:
                # when the padding is smaller than the kernel (see cpu_kernels/conv.c). The
                # small-map conv reads all of its input before it writes, when it overwrites.
                in_place_ok = (depthwise and self.scratch is None and depthwise_ring_fits(kh, kw, ow, sh, sw, dh, dw)) \
                    or (small_arg is not None and fusion.overwrite)
                pt = pl = 0
                unpadded = self.unpadded_input(x, kernel_op, y, in_place_ok, fusion.erase, slice_ok=self.scratch is None)
                if unpadded and unpadded[0] == y and unpadded[1] > (kh - 1) * dh:
                    unpadded = None
                if unpadded:
                    x, pt, pl, absorbed = unpadded
                    x_offset = _contiguous_offset(x, 4)
                    fusion.erase += absorbed
                n, c, h, wd = x.type.shape
                self.epilogue(kernel_op, y, None, fusion, {w} if x == y else {x, w})  # x == y: in place
                dims = [n, c, h, wd] + ([] if depthwise else [co]) + [kh, kw, oh, ow, sh, sw, dh, dw, pt, pl]
                if depthwise:
                    sig = self.emit(kernel_op, "mlrt_depthwise_conv2d_f32", [x, w, y], None, dims, fusion, [], y,
                                    offsets={x: x_offset})
                    kernel = "mlrt_depthwise_conv2d_f32"
                elif winograd_arg is not None:  # the bundle stores the weight Winograd-transformed
                    tile = winograd_tile(oh, ow)
                    self.prepack[winograd_arg] = Prepack(WINOGRAD_LAYOUTS[tile], (co, c, 3, 3))
                    sig = self.emit(kernel_op, "mlrt_conv2d_winograd_f32", [x, w, y],
                                    winograd_scratch_floats(c, co, oh, ow, tile),
                                    [n, c, h, wd, co, oh, ow, pt, pl, tile], fusion, [], y, offsets={x: x_offset})
                    kernel = "mlrt_conv2d_winograd_f32"
                elif small_arg is not None:  # the bundle stores W^T in packed B panels
                    self.prepack[small_arg] = Prepack("conv_panels", (co, c, kh, kw))
                    sig = self.emit(kernel_op, "mlrt_conv2d_small_f32", [x, w, y],
                                    small_conv_scratch_floats(n, c, h, wd, kh, kw, co, oh, ow),
                                    [n, 1, *dims[1:]], fusion, [], y, offsets={x: x_offset})
                    kernel = "mlrt_conv2d_small_f32"
                else:  # im2col (or a 1x1's input in place) times the weights, packed as A panels where they may be
                    a_arg = self.packable_weight(w, kernel_op) if self.cpu_layouts and not depthwise else None
                    kernel = "mlrt_conv2d_f32" if a_arg is None else "mlrt_conv2d_packed_f32"
                    if a_arg is not None:
                        self.prepack[a_arg] = Prepack("conv_a_panels", (co, c, kh, kw))
                    sig = self.emit(kernel_op, kernel, [x, w, y], _packed_floats(c * kh * kw, oh * ow),
                                    dims, fusion, [], y, gemm_shape=(n, co, oh * ow, c * kh * kw), offsets={x: x_offset})
            elif name == "linalg.conv_2d_ngchw_gfchw" and self.scratch is None:
                # torch-mlir's grouped conv reads 5-D views [N, G, C/G, H, W] of 4-D buffers (3-D
                # for a grouped 1-D conv, W = 1): the kernel takes the buffers behind the views, so
                # bias, padding and epilogue fuse as for a conv.
                views = [defining_op(v) for v in operands]
                if any(v is None or v.name != "memref.expand_shape" for v in views):
                    continue
                x, w, y = (v.operands[0] for v in views)
                rank = y.type.rank
                if rank not in (3, 4) or not all(_is_dense_f32(v, v.type.rank) for v in (x, w, y)):
                    continue
                n, groups, cg, h, wd = operands[0].type.shape
                _, fg, _, kh, kw = operands[1].type.shape
                oh, ow = operands[2].type.shape[3:]
                c, co = groups * cg, groups * fg
                (sh, sw), (dh, dw) = _ints(kernel_op, "strides"), _ints(kernel_op, "dilations")
                # Views only this conv reads die with it (erased before what they view); bufferization
                # may share one view between several convs' outputs or inputs.
                own = [len(list(v.result.uses)) == 1 for v in views]
                fusion.erase += [v for v, alone in zip(views, own) if alone]
                self.prologue(kernel_op, y, (list(range(rank))[:1] + list(range(2, rank)), False), fusion)
                small_arg = None
                # On maps of few positions that leave im2col panel lanes empty (2x2, 3x3: RegNet's
                # last stage at 64x64); whole panels stay (measured: a 4x4 map with 512 channels
                # per group was 1.2x slower with the output channels in the lanes).
                if self.cpu_layouts and rank == 4 and cg > 1 and oh * ow < SMALL_MAP_POSITIONS and oh * ow % NR and own[1]:
                    small_arg = self.packable_weight(w, kernel_op, via=views[1])
                pt = pl = 0
                unpadded = self.unpadded_input(x, kernel_op, y, small_arg is not None and fusion.overwrite,
                                               fusion.erase, via=views[0]) if x.type.rank == 4 and own[0] else None
                if unpadded:
                    x, pt, pl, absorbed = unpadded
                    fusion.erase += absorbed
                    h, wd = x.type.shape[2:]
                self.epilogue(kernel_op, y, None, fusion, {w} if x == y else {x, w})
                if rank == 4 and cg == 1:  # one input channel per group: depthwise with a channel multiplier
                    sig = self.emit(kernel_op, "mlrt_depthwise_mult_conv2d_f32", [x, w, y], None,
                                    [n, co, h, wd, kh, kw, oh, ow, sh, sw, dh, dw, pt, pl, fg], fusion, [], y)
                    kernel = "mlrt_depthwise_mult_conv2d_f32"
                elif small_arg is not None:  # each group's W_g^T in packed B panels, output channels in the lanes
                    self.prepack[small_arg] = Prepack("conv_panels", tuple(w.type.shape), groups)
                    sig = self.emit(kernel_op, "mlrt_conv2d_small_f32", [x, w, y],
                                    small_conv_scratch_floats(n, c, h, wd, kh, kw, co, oh, ow),
                                    [n, groups, c, h, wd, co, kh, kw, oh, ow, sh, sw, dh, dw, pt, pl], fusion, [], y)
                    kernel = "mlrt_conv2d_small_f32"
                else:
                    slices = min(n * groups, GROUPED_SLICES)
                    sig = self.emit(kernel_op, "mlrt_conv2d_grouped_f32", [x, w, y],
                                    slices * _packed_floats(cg * kh * kw, oh * ow),
                                    [n, groups, slices, c, h, wd, co, kh, kw, oh, ow, sh, sw, dh, dw, pt, pl], fusion, [],
                                    y, gemm_shape=(n, fg, oh * ow, cg * kh * kw))
                    kernel = "mlrt_conv2d_grouped_f32"
            elif name == "linalg.conv_3d_ncdhw_fcdhw" and self.cpu_layouts:
                # One im2col GEMM over every output position of all depths, the weights in A panels.
                x, w, y = operands
                if x == y or not (_is_dense_f32(x, 5) and _is_dense_f32(w, 5) and _is_dense_f32(y, 5)):
                    continue
                weight_arg = self.packable_weight(w, kernel_op)
                if weight_arg is None:
                    continue
                (sd, sh, sw), (dd, dh, dw) = _ints(kernel_op, "strides"), _ints(kernel_op, "dilations")
                co, _, kd, kh, kw = w.type.shape
                od, oh, ow = y.type.shape[2:]
                self.prologue(kernel_op, y, ([0, 2, 3, 4], False), fusion)
                pf = pt = pl = 0
                unpadded = self.unpadded_input(x, kernel_op, y, fused=fusion.erase)
                if unpadded:
                    x, pf, pt, pl, absorbed = unpadded
                    fusion.erase += absorbed
                n, c, d, h, wd = x.type.shape
                self.epilogue(kernel_op, y, None, fusion, {x, w})
                self.prepack[weight_arg] = Prepack("conv_a_panels", (co, c, kd, kh, kw))
                k, positions = c * kd * kh * kw, od * oh * ow
                sig = self.emit(kernel_op, "mlrt_conv3d_f32", [x, w, y], _packed_floats(k, positions),
                                [n, c, d, h, wd, co, kd, kh, kw, od, oh, ow, sd, sh, sw, dd, dh, dw, pf, pt, pl], fusion,
                                [], y, gemm_shape=(n, co, positions, k))
                kernel = "mlrt_conv3d_f32"
            elif name == "linalg.conv_1d_ncw_fcw" and self.scratch is None:
                # A 1-D conv is a 2-D conv of height 1 (CPU kernels), its padding read in place.
                x, w, y = operands
                if x == y or not (_is_dense_f32(x, 3) and _is_dense_f32(w, 3) and _is_dense_f32(y, 3)):
                    continue
                (sw,), (dw,) = _ints(kernel_op, "strides"), _ints(kernel_op, "dilations")
                kw = w.type.shape[-1]
                co, ow = y.type.shape[1:]
                self.prologue(kernel_op, y, ([0, 2], False), fusion)
                pl = 0
                unpadded = self.unpadded_input(x, kernel_op, y, fused=fusion.erase)
                if unpadded:
                    x, pl, absorbed = unpadded
                    fusion.erase += absorbed
                n, c, wd = x.type.shape
                self.epilogue(kernel_op, y, None, fusion, {x, w})
                a_arg = self.packable_weight(w, kernel_op) if self.cpu_layouts else None
                kernel = "mlrt_conv2d_f32" if a_arg is None else "mlrt_conv2d_packed_f32"
                if a_arg is not None:
                    self.prepack[a_arg] = Prepack("conv_a_panels", (co, c, kw))
                sig = self.emit(kernel_op, kernel, [x, w, y], _packed_floats(c * kw, ow),
                                [n, c, 1, wd, co, 1, kw, 1, ow, 1, sw, 1, dw, 0, pl], fusion, [], y,
                                gemm_shape=(n, co, ow, c * kw))
            elif name in _POOLING and self.scratch is None:
                x, window_buf, y = operands
                if not (_is_dense_f32(x, 4) and _is_dense_f32(y, 4)) or x == y:
                    continue
                is_max = name == "linalg.pooling_nchw_max"
                identity = -math.inf if is_max else 0.0
                (sh, sw), (dh, dw) = _ints(kernel_op, "strides"), _ints(kernel_op, "dilations")
                kh, kw = window_buf.type.shape
                oh, ow = y.type.shape[2:]
                pt = pl = 0
                unpadded = self.unpadded_input(x, kernel_op, y, pad=identity)
                if unpadded:  # taps in the padding are skipped: it holds the op's identity
                    x, pt, pl, absorbed = unpadded
                    fusion.erase += absorbed
                n, c, h, wd = x.type.shape
                before = self.neighbor(self.index[kernel_op], -1)
                if before is not None and self.fill_value(before) == identity and before.operands[-1] == y:
                    fusion.overwrite = True
                    fusion.erase.append(before)
                sig = self.call(kernel_op, "mlrt_pool2d_f32", [x, y],
                                [n * c, h, wd, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, int(is_max),
                                 int(fusion.overwrite)], fusion.erase)
                window = defining_op(window_buf)  # only its shape was ever read
                if window is not None and window.name == "memref.alloc" and not list(window.results[0].uses):
                    self.erase(window)
                kernel = "mlrt_pool2d_f32"
            elif name in _DEFAULT_MAPS and _plain_matmul(kernel_op, name):
                rank = 2 if name == "linalg.matmul" else 3
                a, b, c_out = operands
                layouts = self.matmul_layouts(a, b, c_out, rank)
                if layouts is None:
                    continue
                (a_off, a_strides), (b_off, b_strides) = layouts
                batch = 1 if rank == 2 else a.type.shape[0]
                m, k = a.type.shape[-2:]
                n = b.type.shape[-1]
                b_rows_contiguous = b_strides[-1] in (0, 1)
                bias_dims = ([0], True) if rank == 2 else ([0, 1], True)
                col_map = "(d0, d1) -> (d1)" if rank == 2 else "(d0, d1, d2) -> (d2)"
                self.prologue(kernel_op, c_out, bias_dims, fusion)
                self.epilogue(kernel_op, c_out, col_map, fusion, {a, b})
                packed_arg = self.packable_weight(b, kernel_op) \
                    if rank == 2 and self.prepack_weights and _is_dense_f32(b, rank) \
                    else None
                if packed_arg is not None:  # B is a weight: the bundle stores it packed, no scratch
                    self.prepack[packed_arg] = Prepack("panels", (k, n))
                    scratch = 0
                else:  # few rows read B in place, which needs its rows contiguous; else B is packed
                    scratch = _packed_floats(k, n) if m >= PACK_MIN_ROWS or not b_rows_contiguous else 0
                trailing = [int(fusion.bias_per_col), int(packed_arg is not None)]
                # A: batch stride and row stride (unit columns); B: batch, row and column strides.
                strides = [a_strides[0] if rank == 3 else 0, a_strides[-2] if m > 1 else k,
                           b_strides[0] if rank == 3 else 0, b_strides[-2], b_strides[-1] if n > 1 else 1]
                sig = self.emit(kernel_op, "mlrt_matmul_f32", [a, b, c_out], scratch, [batch, m, n, k], fusion,
                                trailing, c_out, gemm_shape=(batch, m, n, k),
                                strides=strides if self.scratch is None else (), offsets={a: a_off, b: b_off})
                kernel = "mlrt_matmul_f32"
            else:
                continue
            used[kernel] += 1
            signatures[kernel] = sig
            start = 0  # rescan from the top: a rewrite changes the users other ops were judged by (calls never match)

        with ir.InsertionPoint.at_block_begin(self.module.body), ir.Location.unknown():
            from torch_mlir.dialects import func

            for kernel, types in sorted(signatures.items()):
                func.FuncOp(kernel, ir.FunctionType.get(types, []), visibility="private")
        return used


class Prepack(NamedTuple):
    """A weight the bundle stores in a kernel's layout."""

    layout: str  # a key of WEIGHT_LAYOUTS
    shape: tuple  # the plain weight's shape
    groups: int = 1  # conv_panels of a grouped conv: one set of panels per group


def replace_with_kernel_calls(module, func_op, scratch=None, prepack: bool = True,
                              winograd: bool = False, cpu_only: bool = False) -> tuple[Counter, dict[int, Prepack]]:
    """Rewrites supported ops in `func_op`. Returns how many of each kernel were used, and the
    function arguments (weights) the bundle must store in a kernel's layout: index -> Prepack,
    e.g. Prepack("panels", (K, N)) for packed B panels, Prepack("winograd3x3", (CO, C, 3, 3)) for a
    3x3 conv weight in the Winograd domain.
    scratch: None for the CPU microkernels' packed-B scratch, or (batch, M, N, K) -> floats for
    another kernel's per-call scratch (the CUDA GEMM's split-K partials; 0 for none).
    prepack: store single-use Linear weights as packed B panels (False keeps the plain layout).
    winograd: run single-use 3x3 stride-1 convs with the Winograd kernel.
    cpu_only: the bundle has no other target sharing the weights, so they may take layouts only the
    CPU kernels read (Winograd, and "conv_panels" for convs on small maps, grouped ones too)."""
    _grouped_buffers_as_4d(func_op)
    rewriter = _Rewriter(module, func_op, scratch, prepack, winograd, cpu_only)
    used = rewriter.run()
    return used, rewriter.prepack


def _grouped_buffers_as_4d(func_op) -> None:
    """A grouped conv's output without a bias (nothing initialises it through a 4-D view), or an
    input another grouped conv wrote, is allocated 5-D [N, G, C/G, H, W]. Rewrite each such buffer
    as a 4-D alloc seen through expand_shape (same layout), the form the grouped-conv match takes;
    its fills then write the 4-D buffer, and its collapse_shape back to 4-D folds away."""
    from torch_mlir import ir
    from torch_mlir.dialects import memref

    i64 = ir.IntegerType.get_signless(64)
    groups = ir.ArrayAttr.get([ir.ArrayAttr.get([ir.IntegerAttr.get(i64, d) for d in grp])
                               for grp in ([0], [1, 2], [3], [4])])
    convs = [op for op in TopLevelOps(func_op).ops if op.name == "linalg.conv_2d_ngchw_gfchw"]
    for conv in convs:
        for v in (conv.operands[0], conv.operands[2]):
            alloc = defining_op(v)
            if alloc is None or alloc.name != "memref.alloc" or not _is_dense_f32(v, 5):
                continue
            n, g, c, h, w = v.type.shape
            with ir.InsertionPoint(alloc), alloc.location:
                flat = memref.AllocOp(ir.MemRefType.get([n, g * c, h, w], v.type.element_type), [], [])
                if "alignment" in alloc.attributes:
                    flat.attributes["alignment"] = alloc.attributes["alignment"]
                view = memref.ExpandShapeOp(v.type, flat.result, groups, [], [n, g, c, h, w]).result
            v.replace_all_uses_with(view)
            alloc.erase()
            for use in list(view.uses):
                user = use.owner.operation if hasattr(use.owner, "operation") else use.owner
                if user.name == "memref.collapse_shape" and str(user.attributes["reassociation"]) == str(groups) \
                        and user.results[0].type == flat.result.type:
                    user.results[0].replace_all_uses_with(flat.result)
                    user.erase()
                elif user.name == "linalg.fill" and use.operand_number == len(user.operands) - 1:
                    user.operands[use.operand_number] = flat.result


def pack_b_panels(b):
    """numpy [K, N] -> [ceil(N/16), K, 16], zero-padded: the layout mlrt_gemm_packed reads."""
    import numpy as np

    k, n = b.shape
    panels = (n + NR - 1) // NR
    padded = np.zeros((k, panels * NR), dtype=b.dtype)
    padded[:, :n] = b
    return np.ascontiguousarray(padded.reshape(k, panels, NR).transpose(1, 0, 2))


def pack_conv_panels(w, groups: int = 1):
    """numpy [CO, C/G, KH, KW] -> per group g, W_g^T [KH*KW*C/G, CO/G] (K ordered tap, channel: the
    kernel's rows copy each tap's channels from a channels-last input) in packed B panels, group
    after group: [G, ceil(CO/G/16), K/G, 16] (mlrt_conv2d_small_f32). G = 1: [ceil(CO/16), K, 16]."""
    import numpy as np

    def panels(g):
        return pack_b_panels(g.transpose(0, 2, 3, 1).reshape(g.shape[0], -1).T)

    if groups == 1:
        return panels(w)
    return np.stack([panels(g) for g in np.split(w, groups)])


def small_conv_scratch_floats(n: int, c: int, h: int, w: int, kh: int, kw: int, co: int, oh: int, ow: int) -> int:
    """Scratch of mlrt_conv2d_small_f32 (cpu_kernels/mlrt_kernels.h mlrt_conv_small_scratch_floats):
    the channels-last input, the rows, the transposed output; or, where conv.c gathers the rows
    straight into A panels (AVX-512, 7 to 64 rows), those panels of whole MR rows and the
    transposed output. The larger of the two, as the CPU decides at run time."""
    m, k = n * oh * ow, c * kh * kw
    return max(n * h * w * c + m * (k + co), (m + MR - 1) // MR * MR * k + m * co)


def pack_a_panels(w):
    """numpy [CO, ...] -> [ceil(CO/6), K, 6] (K = the product of the rest), zero rows at the end:
    a conv's weights as the GEMM reads them, MR = 6 output channels per panel (mlrt_conv2d_packed_f32)."""
    import numpy as np

    a = w.reshape(w.shape[0], -1)
    co, k = a.shape
    panels = -(-co // MR)
    padded = np.zeros((panels * MR, k), dtype=a.dtype)
    padded[:co] = a
    return np.ascontiguousarray(padded.reshape(panels, MR, k).transpose(0, 2, 1))


def depthwise_ring_fits(kh: int, kw: int, ow: int, sh: int, sw: int, dh: int, dw: int) -> bool:
    """Whether mlrt_depthwise_conv2d_f32 stages these rows in its ring (and so may run in place);
    cpu_kernels/conv.c dw_row_floats and mlrt_kernels.h."""
    row = (sw * ((ow + 7) // 8 * 8) + (kw - 1) * dw + 7) // 8 * 8
    ring_rows = (kh - 1) * dh + 1 + (2 * DW_ROWS - 1) * sh  # two steps of rows: staged one ahead
    return kh <= DW_MAX_KH and 2 * (ring_rows + 1) * row <= DW_RING_FLOATS  # two rings, each + a zero row


def _winograd_tiles(oh: int, ow: int, tile: int) -> tuple[int, int, int]:
    """(tile rows, tiles per row as laid out, panels): rows rounded up to 8 tiles, always for
    F(4x4), for F(2x2) where that adds no panel (cpu_kernels/winograd.c: 8 lanes, one tile row)."""
    th, tw = -(-oh // tile), -(-ow // tile)
    tw8 = -(-tw // 8) * 8
    twp = tw8 if tile == 4 or -(-(th * tw8) // NR) == -(-(th * tw) // NR) else tw
    return th, twp, -(-(th * twp) // NR)


def winograd_tile(oh: int, ow: int) -> int:
    """Output tile of the Winograd conv: F(4x4,3x3) where it does at most 3/4 of F(2x2,3x3)'s
    multiplies counting the padded lanes, and has at least 3 panels (its weights, 4x the plain
    ones, are read once per call: with fewer panels reading them dominates). Else 2."""
    p2, p4 = _winograd_tiles(oh, ow, 2)[2], _winograd_tiles(oh, ow, 4)[2]
    return 4 if 36 * p4 * 4 <= 16 * p2 * 3 and p4 >= 3 else 2


def winograd_scratch_floats(c: int, co: int, oh: int, ow: int, tile: int = 2) -> int:
    """Scratch of mlrt_conv2d_winograd_f32: the zero-padded input, then per panel of 16 TxT-output
    tiles the transformed input [E][C][16] and the transformed output [E][CO][16], E = (T+2)^2
    (cpu_kernels/winograd.c)."""
    th, twp, panels = _winograd_tiles(oh, ow, tile)
    wp = tile * twp + (4 if tile == 4 else 2)  # F(4x4): 2 more zero columns for its row loads
    padded = (c * (tile * th + 2) * wp + NR - 1) // NR * NR  # the zero-padded input
    return padded + panels * (tile + 2) ** 2 * NR * (c + co)


def winograd_weights(w):
    """numpy [CO, C, 3, 3] -> [16, ceil(CO/6), C, 6]: U = G g G^T of F(2x2, 3x3), element e = 4 * row
    + col, computed in float64 and rounded once, each element's [CO, C] in A panels (pack_a_panels)."""
    import numpy as np

    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
    u = np.einsum("ik,ockl,jl->ijoc", g, w.astype(np.float64), g)
    co, c = w.shape[:2]
    return np.stack([pack_a_panels(ue) for ue in u.reshape(16, co, c).astype(w.dtype)])


def winograd4_weights(w):
    """numpy [CO, C, 3, 3] -> [36, ceil(CO/6), C, 6]: U = G g G^T of F(4x4, 3x3) (points 0, +-1,
    +-2), element e = 6 * row + col, computed in float64 and rounded once, in A panels per element."""
    import numpy as np

    g = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64)
    u = np.einsum("ik,ockl,jl->ijoc", g, w.astype(np.float64), g)
    co, c = w.shape[:2]
    return np.stack([pack_a_panels(ue) for ue in u.reshape(36, co, c).astype(w.dtype)])


WINOGRAD_LAYOUTS = {2: "winograd3x3", 4: "winograd4x4_3x3"}


# Layouts of pre-transformed weights: name -> (what the bundle's weight name says, numpy transform).
WEIGHT_LAYOUTS = {
    "panels": ("packed B panels", pack_b_panels),
    "conv_panels": ("transposed, packed B panels", pack_conv_panels),
    "conv_a_panels": ("packed A panels", pack_a_panels),
    "winograd3x3": ("Winograd F(2x2,3x3)", winograd_weights),
    "winograd4x4_3x3": ("Winograd F(4x4,3x3)", winograd4_weights),
}
