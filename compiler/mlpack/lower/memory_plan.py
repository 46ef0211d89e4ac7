"""Static memory plan: every intermediate buffer gets a fixed offset in ONE arena.

After bufferization all intermediates are top-level `memref.alloc`s of static size. We compute
each buffer's live range in op order (following views that alias it), pack the buffers with
greedy first-fit under a few orderings (keeping the smallest arena, as ExecuTorch does), and
rewrite every alloc into `memref.view` of an arena argument appended to the function. The
generated code then never allocates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import BuildError

ALIGNMENT = 64

# Ops whose result aliases their memref operand: uses of the result keep the source alive. That
# includes the address taken for a microkernel call (kernel_calls.py), its integer cast, and the
# byte offset added to it for a view that does not start at the buffer's base.
_VIEW_OPS = {
    "memref.subview", "memref.expand_shape", "memref.collapse_shape", "memref.cast",
    "memref.reinterpret_cast", "memref.view", "memref.transpose",
    "memref.extract_aligned_pointer_as_index", "arith.index_cast", "arith.addi",
}


@dataclass
class Buffer:
    size: int  # bytes, rounded up to ALIGNMENT
    first: int  # index of the defining top-level op
    last: int  # index of the last top-level op that uses it (or a view of it)
    offset: int = -1


@dataclass
class MemoryPlan:
    buffers: list[Buffer] = field(default_factory=list)
    arena_bytes: int = 0
    sum_bytes: int = 0
    lower_bound_bytes: int = 0  # max over time of live bytes: no plan can do better
    algorithm: str = ""

    def to_json(self) -> dict:
        return {
            "arena_bytes": self.arena_bytes,
            "sum_bytes": self.sum_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "alignment": ALIGNMENT,
            "algorithm": self.algorithm,
            "buffers": [asdict(b) for b in self.buffers],
        }


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _overlap(a: Buffer, b: Buffer) -> bool:
    return a.first <= b.last and b.first <= a.last


def _first_fit(buffers: list[Buffer], order: list[int]) -> tuple[list[int], int]:
    placed: list[tuple[int, int, Buffer]] = []  # (offset, end, buffer)
    offsets = [0] * len(buffers)
    for i in order:
        b = buffers[i]
        busy = sorted((o, e) for o, e, p in placed if _overlap(p, b))
        off = 0
        for o, e in busy:
            if off + b.size <= o:
                break
            off = max(off, e)
        offsets[i] = off
        placed.append((off, off + b.size, b))
    arena = max((o + b.size for o, b in zip(offsets, buffers)), default=0)
    return offsets, arena


def plan(buffers: list[Buffer]) -> MemoryPlan:
    """Assign offsets; tries several orderings and keeps the smallest arena."""
    n = len(buffers)
    steps = max((b.last for b in buffers), default=-1) + 1
    live = [0] * max(steps, 1)
    for b in buffers:
        for t in range(b.first, b.last + 1):
            live[t] += b.size
    orderings = {
        "greedy-by-size": sorted(range(n), key=lambda i: (-buffers[i].size, buffers[i].first)),
        "greedy-by-area": sorted(range(n), key=lambda i: (-buffers[i].size * (buffers[i].last - buffers[i].first + 1), i)),
        "greedy-by-start": sorted(range(n), key=lambda i: (buffers[i].first, -buffers[i].size)),
    }
    best = None
    for name, order in orderings.items():
        offsets, arena = _first_fit(buffers, order)
        if best is None or arena < best[2]:
            best = (name, offsets, arena)
    name, offsets, arena = best if best else ("empty", [], 0)
    for b, o in zip(buffers, offsets):
        b.offset = o
    return MemoryPlan(buffers, arena, sum(b.size for b in buffers), max(live, default=0), name)


# --------------------------------------------------------------------------- IR rewrite


def _memref_bytes(mtype) -> int:
    from torch_mlir import ir

    if not mtype.has_static_shape:
        raise BuildError(f"intermediate buffer {mtype} has a dynamic shape; bundles need static shapes")
    elem = mtype.element_type
    if isinstance(elem, ir.ComplexType):
        bits = 2 * elem.element_type.width
    elif isinstance(elem, ir.IndexType):
        bits = 64
    else:
        bits = elem.width
    count = 1
    for d in mtype.shape:
        count *= d
    return count * ((bits + 7) // 8)


def collect_users(value, out: list) -> None:
    """Every op using `value` or a view/address of it (through the ops in _VIEW_OPS)."""
    for use in value.uses:
        op = use.owner
        out.append(op)
        if op.operation.name in _VIEW_OPS:
            for r in op.results:
                collect_users(r, out)


def defining_op(value):
    """The operation producing `value`, or None for a block argument."""
    from torch_mlir import ir

    owner = value.owner
    if isinstance(owner, ir.Block):
        return None
    return owner.operation if hasattr(owner, "operation") else owner


def root_buffer(value):
    """The allocation or function argument a memref value is a view of (through _VIEW_OPS)."""
    op = defining_op(value)
    while op is not None and op.name in _VIEW_OPS:
        value = op.operands[0]
        op = defining_op(value)
    return value


def generic_parts(op):
    """(inputs, outputs, indexing maps as attributes, iterator types as strings) of a linalg.generic."""
    from torch_mlir import ir

    operands = list(op.operands)
    n_in, n_out = ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"])
    iters = [str(a) for a in ir.ArrayAttr(op.attributes["iterator_types"])]
    return operands[:n_in], operands[n_in:n_in + n_out], list(ir.ArrayAttr(op.attributes["indexing_maps"])), iters


def is_identity_map(map_attr, rank: int) -> bool:
    from torch_mlir import ir

    m = ir.AffineMapAttr(map_attr).value
    return m.n_dims == rank and str(m) == str(ir.AffineMap.get_identity(rank))


def overwrites(op, buf) -> bool:
    """Whether `op` writes all of `buf` (the memref itself, not a view) without reading any of it:
    what `buf` held before is dead when this is its next use."""
    name = op.name
    if name == "memref.copy":
        return op.operands[1] == buf and root_buffer(op.operands[0]) != root_buffer(buf)
    if name in ("linalg.fill", "linalg.broadcast", "linalg.transpose"):
        return op.operands[-1] == buf and all(root_buffer(v) != root_buffer(buf) for v in list(op.operands)[:-1])
    if name == "linalg.generic":
        ins, outs, maps, iters = generic_parts(op)
        if outs != [buf] or any(root_buffer(v) == root_buffer(buf) for v in ins):
            return False
        if any("parallel" not in it for it in iters) or list(op.regions[0].blocks[0].arguments[-1].uses):
            return False
        return is_identity_map(maps[-1], len(iters))
    return False


def contents_dead(buf, next_user) -> bool:
    """Whether what `buf` holds now is never read, given `next_user`, the next op using (a view
    of) its buffer, or None: it overwrites the buffer, or there is none and the buffer is an
    arena allocation (a function argument may be a model output, read after the call)."""
    if next_user is not None:
        return overwrites(next_user, buf)
    alloc = defining_op(root_buffer(buf))
    return alloc is not None and alloc.name == "memref.alloc"


class TopLevelOps:
    """A function body's top-level ops in order, for passes that reason about when buffers are
    used: call reindex() after changing the body."""

    def __init__(self, func_op):
        self.block = func_op.regions[0].blocks[0]
        self.reindex()

    def reindex(self) -> None:
        self.ops = [op.operation for op in self.block.operations]
        self.index = {op: i for i, op in enumerate(self.ops)}

    def top(self, op) -> int:
        """Position of the top-level op that is or contains `op`."""
        op = op.operation if hasattr(op, "operation") else op
        while op not in self.index:
            op = op.parent
        return self.index[op]

    def user_positions(self, value, views: bool = True) -> list[int]:
        """Positions of the top-level ops using `value` or a view of it (views=False: leaving out
        the ops that only make views, which touch no data)."""
        users: list = []
        collect_users(value, users)
        return [self.top(u) for u in users if views or u.operation.name not in _VIEW_OPS]

    def dead_after(self, value, i: int) -> bool:
        """Whether the contents of `value` are never read after top-level op i."""
        later = sorted(p for p in self.user_positions(root_buffer(value)) if p > i)
        return contents_dead(value, self.ops[later[0]] if later else None)


def assign_arena(func_op) -> MemoryPlan:
    """Plan `func_op`'s allocs and rewrite them into views of a new trailing `memref<Nxi8>` argument."""
    from torch_mlir import ir
    from torch_mlir.dialects import arith, memref

    body = TopLevelOps(func_op)
    block = body.block
    allocs, buffers = [], []
    for i, op in enumerate(body.ops):
        if op.name == "memref.alloc":
            last = max(body.user_positions(op.result), default=i)
            allocs.append(op)
            buffers.append(Buffer(_align(_memref_bytes(op.result.type)), i, last))
    nested = _nested_allocs(func_op)
    if nested:
        raise BuildError(f"{nested} heap allocation(s) inside loops or regions; the static planner cannot place them")

    memory_plan = plan(buffers)
    i8 = ir.IntegerType.get_signless(8)
    arena_type = ir.MemRefType.get([max(memory_plan.arena_bytes, ALIGNMENT)], i8)
    arena = block.add_argument(arena_type, func_op.location)
    ftype = ir.FunctionType(ir.TypeAttr(func_op.attributes["function_type"]).value)
    func_op.attributes["function_type"] = ir.TypeAttr.get(
        ir.FunctionType.get(list(ftype.inputs) + [arena_type], list(ftype.results)))
    if "arg_attrs" in func_op.attributes:
        attrs = list(ir.ArrayAttr(func_op.attributes["arg_attrs"]))
        func_op.attributes["arg_attrs"] = ir.ArrayAttr.get(attrs + [ir.DictAttr.get({})])
    for op, b in zip(allocs, memory_plan.buffers):
        with ir.InsertionPoint(op), op.location:
            off = arith.ConstantOp(ir.IndexType.get(), b.offset)
            view = memref.ViewOp(op.result.type, arena, off.result, [])
        op.result.replace_all_uses_with(view.result)
        op.erase()
    return memory_plan


def _nested_allocs(func_op) -> int:
    count = 0

    def walk(op, depth):
        nonlocal count
        for region in op.regions:
            for blk in region.blocks:
                for inner in blk.operations:
                    if inner.operation.name == "memref.alloc" and depth > 0:
                        count += 1
                    walk(inner.operation, depth + 1)

    walk(func_op.operation, 0)
    return count
