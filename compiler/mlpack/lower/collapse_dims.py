"""Collapse adjacent loop dimensions of the linalg.generic ops left after kernel substitution.

An elementwise op on a 1x240x8x8 map lowers to loops whose innermost trip count is 8, or 7 on a
7x7 map: LLVM's vectorizer leaves loops that short scalar (an efficientnet's SiLU loops ran
scalar on its 8x8 maps). Where every operand is a dense row-major buffer and a run of adjacent
loop dimensions is laid out contiguously in each of them, the run becomes one dimension: SiLU on
1x240x8x8 becomes one loop of 15360, the squeeze-excite gate x[1,240,8,8] * g[1,240,1,1] a
240 x 64 nest. Runs into another dimension's iterator type (parallel / reduction) stay apart.

Operands are collapsed with memref.collapse_shape (a view: no copy). Each operand's map must
name loop dimensions in order, with constant 0 for size-1 broadcast dimensions: a bias [C] at
(d1), a gate [1, C, 1, 1] at (d0, d1, 0, 0), BatchNorm statistics [C, 1, 1] at (d1, 0, 0).
Ops whose body reads the loop indices (linalg.index) or touches memory are left alone.
Runs after the memory plan, so the planner never sees the views.
"""

from __future__ import annotations

import math

from .elementwise_fusion import clone_body
from .memory_plan import generic_parts


def _operand_dims(map_attr, rank: int, shape: list[int]) -> list[int | None] | None:
    """For each of the operand's dimensions, the loop dimension it follows, or None for a size-1
    broadcast dimension (constant 0). None if the map is not of that form or names the loop
    dimensions out of order (a transpose)."""
    from torch_mlir import ir

    m = ir.AffineMapAttr(map_attr).value
    if m.n_dims != rank or m.n_symbols:
        return None
    dims: list[int | None] = []
    for k, e in enumerate(m.results):
        if isinstance(e, ir.AffineDimExpr):
            dims.append(e.position)
        elif isinstance(e, ir.AffineConstantExpr) and e.value == 0 and shape[k] == 1:
            dims.append(None)
        else:
            return None
    named = [d for d in dims if d is not None]
    if named != sorted(set(named)):
        return None
    return dims


def _joinable(dims: list[int | None], d: int) -> bool:
    """Whether loop dimensions d and d + 1 can become one for an operand with these `dims`: it
    has both, with nothing but size-1 broadcast dimensions between them, or neither."""
    if d in dims and d + 1 in dims:
        a, b = dims.index(d), dims.index(d + 1)
        return all(x is None for x in dims[a + 1:b])
    return d not in dims and d + 1 not in dims


def _groups(iters: list[str], operand_dims: list[list[int | None]]) -> list[list[int]]:
    groups = [[0]]
    for d in range(len(iters) - 1):
        if iters[d] == iters[d + 1] and all(_joinable(dims, d) for dims in operand_dims):
            groups[-1].append(d + 1)
        else:
            groups.append([d + 1])
    return groups


def _runs(dims: list[int | None], group_of: dict[int, int]) -> list[tuple[int | None, list[int]]]:
    """The operand's dimensions in runs, one per loop group it follows (size-1 broadcast
    dimensions join the run before them, or the first one): (group, operand dims). An operand
    following no loop dimension keeps one run per dimension, each a broadcast."""
    if all(d is None for d in dims):
        return [(None, [k]) for k in range(len(dims))]
    runs: list[tuple[int | None, list[int]]] = []
    pending: list[int] = []
    for k, d in enumerate(dims):
        if d is None:
            (runs[-1][1] if runs else pending).append(k)
        elif runs and runs[-1][0] == group_of[d]:
            runs[-1][1].append(k)
        else:
            runs.append((group_of[d], pending + [k]))
            pending = []
    return runs


def _dense(value) -> list[int] | None:
    """The static shape of a row-major memref without layout map, else None."""
    from torch_mlir import ir

    t = value.type
    if not isinstance(t, ir.MemRefType) or not t.has_static_shape or not isinstance(t.layout, ir.AffineMapAttr):
        return None
    if str(t.layout.value) != str(ir.AffineMap.get_identity(t.rank)):
        return None
    return list(t.shape)


def _collapse_one(op) -> bool:
    from torch_mlir import ir
    from torch_mlir.dialects import linalg, memref

    ins, outs, maps, iters = generic_parts(op)
    rank = len(iters)
    body = op.regions[0].blocks[0]
    if op.results or rank < 2 or any(o.operation.name == "linalg.index" or o.operation.name.startswith("memref.")
                                     for o in body.operations):
        return False
    operands = [*ins, *outs]
    shapes = [_dense(v) for v in operands]
    if any(s is None for s in shapes):
        return False
    operand_dims = [_operand_dims(m, rank, s) for m, s in zip(maps, shapes)]
    if any(d is None for d in operand_dims):
        return False
    groups = _groups([it.split("<")[-1].rstrip(">") for it in iters], operand_dims)
    if len(groups) == rank:
        return False
    group_of = {d: g for g, grp in enumerate(groups) for d in grp}
    new_operands, new_maps = [], []
    with ir.InsertionPoint(op), op.location:
        for v, shape, dims in zip(operands, shapes, operand_dims):
            runs = _runs(dims, group_of)
            if all(len(r) == 1 for _, r in runs):
                new_operands.append(v)
            else:
                elem = ir.MemRefType(v.type).element_type
                sizes = [math.prod(shape[k] for k in r) for _, r in runs]
                attr = ir.ArrayAttr.get([ir.ArrayAttr.get([ir.IntegerAttr.get(ir.IntegerType.get_signless(64), k)
                                                           for k in r]) for _, r in runs])
                new_operands.append(memref.CollapseShapeOp(ir.MemRefType.get(sizes, elem), v, attr).result)
            new_maps.append(ir.AffineMapAttr.get(ir.AffineMap.get(
                len(groups), 0, [ir.AffineConstantExpr.get(0) if g is None else ir.AffineDimExpr.get(g)
                                 for g, _ in runs])))
        new_iters = ir.ArrayAttr.get([ir.ArrayAttr(op.attributes["iterator_types"])[grp[0]] for grp in groups])
        new = linalg.GenericOp([], new_operands[:len(ins)], new_operands[len(ins):], ir.ArrayAttr.get(new_maps),
                               new_iters)
        block = new.regions[0].blocks.append(*[a.type for a in body.arguments])
        with ir.InsertionPoint(block):
            clone_body(body, dict(zip(body.arguments, block.arguments)), keep_yield=True)
    op.erase()
    return True


def collapse_loop_dims(func_op) -> int:
    """Collapses the contiguous dimension runs of every top-level linalg.generic in `func_op`
    (bufferized, planned). Returns how many ops changed."""
    block = func_op.regions[0].blocks[0]
    return sum(_collapse_one(op.operation) for op in list(block.operations) if op.operation.name == "linalg.generic")
