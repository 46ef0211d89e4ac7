"""Replace the heavy linalg ops (conv, depthwise conv, matmul, batch matmul) with calls to the
microkernels in kernels/ (tiled, vectorized, multi-threaded C compiled into the bundle).

Runs on bufferized IR, before memory planning: the packed-B scratch a kernel needs becomes an
ordinary `memref.alloc`, so the planner gives it an arena offset like any intermediate. Buffers
are passed as int64 addresses (`memref.extract_aligned_pointer_as_index`); only contiguous,
offset-0 f32 memrefs qualify. Anything else keeps its (slow, correct) loop lowering.
"""

from __future__ import annotations

from collections import Counter

# Matmuls with fewer rows than this read B in place instead of packing it (GEMV-like shapes).
PACK_MIN_ROWS = 8
NR = 16  # packed panel width, kernels/mlrt_kernels.h MLRT_NR


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


# The indexing maps of plain (non-transposed, non-broadcast) matmuls; other variants keep loops.
_DEFAULT_MAPS = {
    "linalg.matmul": "[affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d2, d1)>, "
                     "affine_map<(d0, d1, d2) -> (d0, d1)>]",
    "linalg.batch_matmul": "[affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>, affine_map<(d0, d1, d2, d3) -> (d0, d3, d2)>, "
                           "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>]",
}


def _plain_matmul(op, name: str) -> bool:
    maps = op.attributes["indexing_maps"] if "indexing_maps" in op.attributes else None
    return "cast" not in op.attributes and (maps is None or str(maps) == _DEFAULT_MAPS[name])


def _ints(op, name: str) -> list[int]:
    from torch_mlir import ir

    return list(ir.DenseIntElementsAttr(op.attributes[name]))


def _packed_floats(k: int, n: int) -> int:
    return (n + NR - 1) // NR * k * NR


def replace_with_kernel_calls(module, func_op) -> Counter:
    """Rewrites supported ops in `func_op`; returns how many of each kernel were used."""
    from torch_mlir import ir
    from torch_mlir.dialects import arith, func, memref

    i64 = ir.IntegerType.get_signless(64)
    f32 = ir.F32Type.get()
    used: Counter = Counter()
    arities: dict[str, int] = {}

    for op in list(func_op.regions[0].blocks[0].operations):
        name = op.operation.name
        operands = list(op.operation.operands)
        call = None
        if name == "linalg.conv_2d_nchw_fchw" and all(_is_dense_f32(v, 4) for v in operands):
            x, w, y = operands
            n, c, h, wd = x.type.shape
            co, _, kh, kw = w.type.shape
            _, _, oh, ow = y.type.shape
            (sh, sw), (dh, dw) = _ints(op, "strides"), _ints(op, "dilations")
            scratch = _packed_floats(c * kh * kw, oh * ow)
            call = ("mlrt_conv2d_f32", [x, w, y], scratch, [n, c, h, wd, co, kh, kw, oh, ow, sh, sw, dh, dw])
        elif name == "linalg.depthwise_conv_2d_nchw_chw" and _is_dense_f32(operands[0], 4) \
                and _is_dense_f32(operands[1], 3) and _is_dense_f32(operands[2], 4):
            x, w, y = operands
            n, c, h, wd = x.type.shape
            _, kh, kw = w.type.shape
            _, _, oh, ow = y.type.shape
            (sh, sw), (dh, dw) = _ints(op, "strides"), _ints(op, "dilations")
            call = ("mlrt_depthwise_conv2d_f32", [x, w, y], 0, [n, c, h, wd, kh, kw, oh, ow, sh, sw, dh, dw])
        elif name in _DEFAULT_MAPS and _plain_matmul(op, name):
            rank = 2 if name == "linalg.matmul" else 3
            if all(_is_dense_f32(v, rank) for v in operands):
                a, b, c_out = operands
                batch = 1 if rank == 2 else a.type.shape[0]
                m, k = a.type.shape[-2:]
                n = b.type.shape[-1]
                scratch = _packed_floats(k, n) if m >= PACK_MIN_ROWS else 0
                call = ("mlrt_matmul_f32", [a, b, c_out], scratch, [batch, m, n, k])
        if call is None:
            continue

        kernel, buffers, scratch_floats, dims = call
        with ir.InsertionPoint(op), op.location:
            args = []
            if kernel == "mlrt_depthwise_conv2d_f32":
                scratch_ptrs = []
            elif scratch_floats:
                alloc = memref.AllocOp(ir.MemRefType.get([scratch_floats], f32), [], [])
                alloc.attributes["alignment"] = ir.IntegerAttr.get(i64, 64)
                scratch_ptrs = [alloc.result]
            else:
                scratch_ptrs = [None]
            for v in buffers + scratch_ptrs:
                if v is None:
                    args.append(arith.ConstantOp(i64, 0).result)  # no scratch: the kernel reads B in place
                else:
                    index = memref.ExtractAlignedPointerAsIndexOp(v).result
                    args.append(arith.IndexCastOp(i64, index).result)
            args += [arith.ConstantOp(i64, d).result for d in dims]
            func.CallOp([], kernel, args)
        op.operation.erase()
        used[kernel] += 1
        arities[kernel] = len(args)

    with ir.InsertionPoint.at_block_begin(module.body), ir.Location.unknown():
        for kernel, arity in sorted(arities.items()):
            func.FuncOp(kernel, ir.FunctionType.get([i64] * arity, []), visibility="private")
    return used
