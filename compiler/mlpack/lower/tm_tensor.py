"""torch-mlir's `tm_tensor` ops (sort, topk, scan, scatter) through bufferization to loops.

torch-mlir lowers the ATen ops linalg cannot express to its TMTensor dialect: cumsum / cumprod
become `tm_tensor.scan`, sort / argsort / topk `tm_tensor.sort` (topk then slices the first k),
kthvalue `tm_tensor.topk`, scatter / scatter_add / index_put `tm_tensor.scatter`. These ops
implement no BufferizableOpInterface, so one-shot bufferization stops at them. torch-mlir's own
passes take them the rest of the way:

1. `tm-tensor-bufferize` (before one-shot) turns each op into its memref form: inputs through
   `bufferization.to_buffer`, every output a fresh `memref.alloc` with the initial value copied
   in, results read back with `bufferization.to_tensor`. The allocs are static and sit at the
   op's place at the top level, so the arena planner (memory_plan.py) places them like any other.
2. prepare_for_one_shot makes that mix of tensors and memrefs safe for one-shot's analysis
   (without `copy-before-write`, which would give up in-place reuse for the whole model): see
   its docstring.
3. After bufferization, `tm-tensor-to-loops` turns the ops into plain `scf.for` loops with
   `memref.load` / `store`, so kernel_calls, elementwise_fusion and memory_plan see only loops
   (opaque uses of their buffers: never fused, never treated as overwriting).

What the loops do: scan is one sequential pass per line; scatter one store (or update) per index
in index order (duplicates: the last write wins, as eager's serial CPU kernel); sort a stable
bubble sort, O(n^2) compares per line, fine for the sequence lengths and small k of real models,
slow for long lines (e.g. topk over a 50k vocabulary); topk (kthvalue) an insertion into a
k-sized buffer, O(n k).
"""

from __future__ import annotations

from ..errors import BuildError

_TM_PREFIX = "tm_tensor."


def _walk(op, visit) -> None:
    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                visit(inner.operation)
                _walk(inner.operation, visit)


def has_tm_tensor_ops(module) -> bool:
    found = []
    _walk(module.operation, lambda op: found.append(op) if op.name.startswith(_TM_PREFIX) else None)
    return bool(found)


def prepare_for_one_shot(module) -> tuple[int, int]:
    """Make what tm-tensor-bufferize left behind analyzable by one-shot bufferization:

    - `bufferization.to_tensor` of a fresh `memref.alloc` (an op's result) gets `restrict`: the
      tensor is the only way the program reads that buffer.
    - `bufferization.to_buffer %t` becomes `materialize_in_destination %t` into a buffer of its
      own. One-shot's analysis does not see to_buffer as a read of %t: with to_buffer left in, it
      reused %t's buffer for a value computed between two ops reading %t (measured: two sorts
      sharing one iota of indices got the other sort's iota). Feeding a `memref.copy` (an op's
      initial output value), it writes straight into the copy's target; otherwise (an op's input)
      into a new alloc, a copy the size of that input.
    Returns (to_tensor ops marked, to_buffer ops replaced)."""
    from torch_mlir import ir
    from torch_mlir.dialects import bufferization, memref

    from .memory_plan import defining_op

    to_tensors, to_buffers = [], []

    def visit(op):
        if op.name == "bufferization.to_tensor" and "restrict" not in op.attributes:
            src = defining_op(op.operands[0])
            if src is not None and src.name == "memref.alloc":
                to_tensors.append(op)
        elif op.name == "bufferization.to_buffer":
            to_buffers.append(op)

    _walk(module.operation, visit)
    with module.context:
        for op in to_tensors:
            op.attributes["restrict"] = ir.UnitAttr.get()
        for op in to_buffers:
            tensor, result = op.operands[0], op.results[0]
            uses = [u.owner for u in result.uses]
            with ir.InsertionPoint(op), op.location:
                if len(uses) == 1 and uses[0].name == "memref.copy" and uses[0].operands[0] == result:
                    copy = uses[0]
                    with ir.InsertionPoint(copy):
                        bufferization.MaterializeInDestinationOp(None, tensor, copy.operands[1],
                                                                 restrict=True, writable=True)
                    copy.erase()
                else:
                    if not ir.MemRefType(result.type).has_static_shape:
                        raise BuildError(f"internal: dynamic shape {result.type} at a tm_tensor op")
                    buf = memref.AllocOp(ir.MemRefType.get(ir.MemRefType(result.type).shape,
                                                           ir.MemRefType(result.type).element_type), [], [])
                    bufferization.MaterializeInDestinationOp(None, tensor, buf.result, restrict=True, writable=True)
                    if buf.result.type != result.type:
                        buf = memref.CastOp(result.type, buf.result)
                    result.replace_all_uses_with(buf.result)
            op.erase()
    return len(to_tensors), len(to_buffers)


# Pipelines (run through bufferize.run_pipeline, which names the failing stage).
BUFFERIZE = "builtin.module(func.func(tm-tensor-bufferize))"
TO_LOOPS = "builtin.module(func.func(tm-tensor-to-loops),canonicalize,cse)"
