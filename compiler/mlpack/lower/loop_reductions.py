"""Reductions in registers (CPU loop IR, after linalg is lowered to loops).

linalg lowers a reduction (LayerNorm's mean and variance, softmax's max and sum) to an innermost
`scf.for` that loads the accumulator from the output buffer, combines, and stores it back on
every iteration. LLVM cannot keep that accumulator in a register (the arena's views may alias as
far as it can tell), so each element waits on a store-to-load round trip, and a float reduction
through memory is never vectorized. Here such a loop carries the accumulator as a loop value
(`iter_args`): one load before, one store after. An add/mul combiner is also marked
`reassoc`, which lets LLVM split the sum into vector lanes (as eager PyTorch's reductions do);
the result differs from the sequential sum by rounding only.

Rewritten only when it is certainly the same computation: an innermost loop whose body has no
nested regions or calls, exactly one store, to a location that does not depend on the loop,
exactly one load of that memref, at the same indices, before the store, and every other load
from memory provably elsewhere (another buffer, or a disjoint byte range of the arena).
"""

from .memory_plan import defining_op

_SAME_BYTES = {"memref.expand_shape", "memref.collapse_shape", "memref.cast"}
_ELEMENT_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "i1": 1}

_REASSOCIABLE = {"arith.addf", "arith.mulf"}


def scalar_reductions(func_op) -> int:
    """Rewrites every such loop in `func_op`; returns how many."""
    loops = []

    def visit(op):
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    inner = inner.operation
                    if inner.name == "scf.for" and _accumulator(inner) is not None:
                        loops.append(inner)
                    else:
                        visit(inner)

    visit(func_op.operation)
    for loop in loops:
        _carry_in_register(loop, *_accumulator(loop))
    return len(loops)


def _accumulator(loop):
    """(load, store) of a loop-invariant accumulator location, or None."""
    if len(loop.results) or len(loop.operands) != 3:
        return None
    body = loop.regions[0].blocks[0]
    ops = [op.operation for op in body.operations]
    if any(len(op.regions) for op in ops):
        return None
    stores = [op for op in ops if op.name == "memref.store"]
    if len(stores) != 1:
        return None
    store = stores[0]
    memref, indices = store.operands[1], list(store.operands[2:])
    if any(not _outside(v, loop) for v in [memref, *indices]):
        return None
    loads = [op for op in ops if op.name == "memref.load" and op.operands[0] == memref]
    if len(loads) != 1 or list(loads[0].operands[1:]) != indices or ops.index(loads[0]) > ops.index(store):
        return None
    if any(op.name in ("func.call", "llvm.call") for op in ops):
        return None
    acc = _extent(memref)
    if acc is None:
        return None
    for op in ops:
        if op.name == "memref.load" and op != loads[0]:
            other = _extent(op.operands[0])
            if other is None or (other[0] == acc[0] and other[1] < acc[2] and acc[1] < other[2]):
                return None
    return loads[0], store


def _extent(value):
    """(root buffer, first byte, end byte) of a memref value, following arena views and reshapes;
    None where an offset or size is not a constant."""
    from torch_mlir import ir

    start = 0
    t = ir.MemRefType(value.type)
    if not t.has_static_shape or str(t.element_type) not in _ELEMENT_BYTES:
        return None
    size = _ELEMENT_BYTES[str(t.element_type)]
    for d in t.shape:
        size *= d
    op = defining_op(value)
    while op is not None and op.name in _SAME_BYTES | {"memref.view"}:
        if op.name == "memref.view":
            shift = defining_op(op.operands[1])
            if shift is None or shift.name != "arith.constant":
                return None
            start += ir.IntegerAttr(shift.attributes["value"]).value
        value = op.operands[0]
        op = defining_op(value)
    if op is not None and op.name not in ("memref.alloc", "memref.get_global"):
        return None
    return value, start, start + size


def _outside(value, loop) -> bool:
    """Whether `value` is defined outside `loop` (a function/block argument of an enclosing region
    counts as outside unless it is the loop's own induction variable)."""
    op = defining_op(value)
    if op is None:
        return value != loop.regions[0].blocks[0].arguments[0]
    while op is not None and op.name != "func.func":
        if op == loop:
            return False
        op = op.parent.operation if op.parent is not None else None
    return True


def _carry_in_register(loop, load, store) -> None:
    from torch_mlir import ir
    from torch_mlir.dialects import scf

    lb, ub, step = list(loop.operands)
    old_body = loop.regions[0].blocks[0]
    with ir.InsertionPoint(loop), loop.location:
        init = load.clone()  # the accumulator's value before the loop
        new = scf.ForOp(lb, ub, step, [init.results[0]])
    value = store.operands[0]
    producer = defining_op(value)
    if producer is not None and producer.name in _REASSOCIABLE and load.results[0] in list(producer.operands):
        producer.attributes["fastmath"] = ir.Attribute.parse("#arith.fastmath<reassoc>")
    with ir.InsertionPoint(new.body), loop.location:
        yield_op = scf.YieldOp([value])
    old_body.arguments[0].replace_all_uses_with(new.induction_variable)
    load.results[0].replace_all_uses_with(new.inner_iter_args[0])
    for op in list(old_body.operations):
        op = op.operation
        if op == load or op == store or op.name == "scf.yield":
            continue
        op.move_before(yield_op)
    with ir.InsertionPoint(loop), loop.location:
        after = store.clone()
    after.operands[0] = new.results[0]
    after.move_after(new.operation)
    store.erase()
    load.erase()
    loop.erase()
