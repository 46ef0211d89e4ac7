"""Fuse chains of elementwise linalg.generic ops on bufferized IR, so a chain (LayerNorm's scale,
shift and affine steps, a squared deviation feeding its sum) reads and writes memory once
instead of once per op, runs as one parallel region instead of several, and its intermediate
buffers drop out of the memory plan.

A producer P is folded into its consumer Q when:
- P is all-parallel and writes one buffer T through the identity map, without reading its
  output (it may read T as an input, elementwise: an in-place update) or any buffer from its body;
- Q is the next op to touch T and reads it through the identity map of Q's iteration space (so
  both loops run over the same space; Q may reduce over it);
- either Q writes T back elementwise (an in-place chain: T ends up as before), or what P left in
  T is dead after Q: T is an arena buffer whose next use overwrites all of it without reading it,
  or has none (bufferization reuses one buffer for many short-lived values);
- nothing between P and Q touches (a view of) P's inputs, so reading them at Q's place sees the
  same values;
- Q does not write a buffer P reads, unless it is the very same memref read and written at the
  same element (identity maps, Q all-parallel).
The fused op reads P's inputs and Q's other inputs and computes P's body in front of Q's.

MLIR's linalg-fuse-elementwise-ops does this on tensors but also folds producers into named
matmuls and propagates reshapes through them, turning them into generics the microkernels cannot
take (lower/bufferize.py); this runs after the kernel calls are in place, on what is left.
"""

from __future__ import annotations

from .memory_plan import TopLevelOps, defining_op, generic_parts as _parts, is_identity_map as _is_identity
from .memory_plan import root_buffer as _root


class _Fuser(TopLevelOps):
    def reindex(self) -> None:
        super().reindex()
        # root buffer -> positions of its users. Buffers that bufferization reuses for many values
        # have hundreds of users: fuse() updates the entries, drop_dead_outputs() forgets them.
        self._users: dict = {}

    def user_positions(self, value, views: bool = True) -> list[int]:
        """As TopLevelOps.user_positions, cached for root buffers (all this class asks about)."""
        if not views:
            return super().user_positions(value, views)
        cached = self._users.get(value)
        if cached is None:
            cached = self._users[value] = super().user_positions(value)
        return cached

    def forget(self, op) -> None:
        """Drops the cached users of the buffers `op` reads or writes (before it changes)."""
        for v in op.operands:
            self._users.pop(_root(v), None)

    def positions(self, value) -> list[int]:
        """Positions of the top-level ops using (a view of) the buffer `value` views."""
        return self.user_positions(_root(value))

    def consumer(self, p):
        """P's consumer Q if the pair can be fused (see the module docstring), else None."""
        if p.name != "linalg.generic" or p.results:
            return None
        p_ins, p_outs, p_maps, p_iters = _parts(p)
        if len(p_outs) != 1 or any("parallel" not in it for it in p_iters):
            return None
        t, rank, i = p_outs[0], len(p_iters), self.index[p]
        if not _is_identity(p_maps[-1], rank) or list(p.regions[0].blocks[0].arguments[-1].uses):
            return None
        if any(o.operation.name.startswith("memref.") for o in p.regions[0].blocks[0].operations):
            return None  # P's body reads a buffer itself (a gather): moving it later is not checked
        if not _elementwise_uses(t, p_ins, p_maps, rank):
            return None
        later = sorted(pos for pos in self.positions(t) if pos > i)
        if not later or self.ops[later[0]].name != "linalg.generic" or self.ops[later[0]].results:
            return None
        q, j = self.ops[later[0]], later[0]
        q_ins, q_outs, q_maps, q_iters = _parts(q)
        q_all_parallel = all("parallel" in it for it in q_iters)
        if len(q_iters) != rank or t not in q_ins or not _elementwise_uses(t, q_ins, q_maps, rank):
            return None
        if any(_root(v) == _root(t) for v in q_outs):  # an in-place chain: Q writes T back
            if not (q_all_parallel and _elementwise_uses(t, q_outs, q_maps[len(q_ins):], rank)):
                return None
        elif not self.dead(t, j):  # T's value from P must be dead after Q
            return None
        if any(i < pos < j for v in p_ins for pos in self.positions(v)):
            return None
        for k, v in enumerate(p_ins):
            for out_k, out in enumerate(q_outs):
                if _root(v) == _root(out) and not (
                        v == out and _is_identity(p_maps[k], rank) and
                        _is_identity(q_maps[len(q_ins) + out_k], rank) and q_all_parallel):
                    return None
        return q

    def fuse(self, p, q) -> None:
        from torch_mlir import ir
        from torch_mlir.dialects import linalg

        p_ins, p_outs, p_maps, _ = _parts(p)
        q_ins, q_outs, q_maps, _ = _parts(q)
        t = p_outs[0]
        # Users move from P's position to Q's (the fused op reads what P read); Q's stay. T's
        # users change otherwise (P and Q no longer touch T unless Q writes it back): recounted.
        i, j, t_root = self.index[p], self.index[q], _root(t)
        for root in {_root(v) for v in p.operands} - {t_root}:
            if root in self._users:
                self._users[root] = [j if pos == i else pos for pos in self._users[root]]
        self._users.pop(t_root, None)
        kept = [k for k, v in enumerate(q_ins) if v != t]
        inputs = [*p_ins, *(q_ins[k] for k in kept)]
        maps = [*p_maps[:len(p_ins)], *(q_maps[k] for k in kept), *q_maps[len(q_ins):]]
        with ir.InsertionPoint(q), q.location:
            fused = linalg.GenericOp([], inputs, list(q_outs), ir.ArrayAttr.get(maps),
                                     q.attributes["iterator_types"])
            p_block, q_block = p.regions[0].blocks[0], q.regions[0].blocks[0]
            arg_types = [a.type for a in p_block.arguments[:len(p_ins)]] + \
                        [q_block.arguments[k].type for k in kept] + \
                        [a.type for a in q_block.arguments[len(q_ins):]]
            block = fused.regions[0].blocks.append(*arg_types)
            args = list(block.arguments)
            mapping = dict(zip(p_block.arguments[:len(p_ins)], args[:len(p_ins)]))
            with ir.InsertionPoint(block):
                produced = clone_body(p_block, mapping)
                mapping = {q_block.arguments[k]: args[len(p_ins) + n] for n, k in enumerate(kept)}
                mapping.update({q_block.arguments[k]: produced for k, v in enumerate(q_ins) if v == t})
                mapping.update(zip(q_block.arguments[len(q_ins):], args[len(p_ins) + len(kept):]))
                clone_body(q_block, mapping, keep_yield=True)
        alloc = defining_op(t)
        alloc = alloc.operation if alloc is not None and hasattr(alloc, "operation") else alloc
        # The fused op takes Q's place; P's (and the alloc's, if it goes) become holes (None):
        # positions keep their order without re-listing the whole body after every fusion.
        j = self.index.pop(q)
        self.ops[j] = fused.operation
        self.index[self.ops[j]] = j
        self.ops[self.index.pop(p)] = None
        k = self.index.pop(alloc, None) if alloc is not None else None  # keys of erased ops must go first
        p.erase()
        q.erase()
        if alloc is not None and alloc.name == "memref.alloc" and not list(alloc.results[0].uses):
            alloc.erase()
            if k is not None:
                self.ops[k] = None
        elif k is not None:
            self.index[alloc] = k

    def dead(self, buf, i: int) -> bool:
        """Whether what buffer `buf` (not a view) holds after top-level op i is never read."""
        return _root(buf) == buf and self.dead_after(buf, i)

    def drop_dead_outputs(self) -> None:
        """Drops outputs nobody reads from multi-output loops, with the computation only they
        need: softmax's max comes as aten.max.dim, whose argmax (an index compare and select per
        element) keeps the reduction scalar. Then erases fills and copies into buffers that are
        dead."""
        from torch_mlir import ir
        from torch_mlir.dialects import linalg

        for op in list(self.ops):
            if op.name != "linalg.generic" or op.results:
                continue
            ins, outs, maps, _ = _parts(op)
            i = self.index[op]
            keep = [k for k, out in enumerate(outs) if not self.dead(out, i)]
            if len(outs) < 2 or not keep or len(keep) == len(outs):
                continue
            block = op.regions[0].blocks[0]
            body = [o.operation for o in block.operations]
            needed, work = set(), [body[-1].operands[k] for k in keep]
            while work:
                v = work.pop()
                d = defining_op(v)
                if d is not None and d.parent == op and d not in needed:  # d is in the body
                    needed.add(d)
                    work.extend(d.operands)
            out_args = block.arguments[len(ins):]
            if any(a in o.operands for o in needed for k, a in enumerate(out_args) if k not in keep):
                continue
            self.forget(op)
            with ir.InsertionPoint(op), op.location:
                new = linalg.GenericOp([], ins, [outs[k] for k in keep],
                                       ir.ArrayAttr.get([*maps[:len(ins)], *(maps[len(ins) + k] for k in keep)]),
                                       op.attributes["iterator_types"])
                args = [a.type for a in block.arguments[:len(ins)]] + [out_args[k].type for k in keep]
                new_block = new.regions[0].blocks.append(*args)
                mapping = dict(zip([*block.arguments[:len(ins)], *(out_args[k] for k in keep)], new_block.arguments))
                with ir.InsertionPoint(new_block):
                    for o in body[:-1]:
                        if o in needed:
                            clone = o.clone()
                            for n, v in enumerate(clone.operands):
                                if v in mapping:
                                    clone.operands[n] = mapping[v]
                            mapping.update(zip(o.results, clone.results))
                    linalg.YieldOp([mapping.get(body[-1].operands[k], body[-1].operands[k]) for k in keep])
            self.ops[self.index.pop(op)] = new.operation  # the new op takes the old one's place
            self.index[new.operation] = i
            op.erase()
        for op in list(self.ops):  # fills and copies into buffers nobody reads
            if op is not None and op.name in ("linalg.fill", "memref.copy") and \
                    self.dead(op.operands[-1], self.index[op]):
                alloc = defining_op(op.operands[-1])
                self.forget(op)
                self.ops[self.index.pop(op)] = None  # holes, as fuse() leaves them: no re-listing per erase
                op.erase()
                if alloc is not None and not list(alloc.results[0].uses):
                    k = self.index.pop(alloc, None)  # keys of erased ops must go first
                    if k is not None:
                        self.ops[k] = None
                    alloc.erase()

    def run(self) -> int:
        self.drop_dead_outputs()
        fused, i = 0, 0
        while i < len(self.ops):
            p = self.ops[i]
            q = self.consumer(p) if p is not None else None
            if q is None:
                i += 1
                continue
            self.fuse(p, q)
            fused += 1
            i -= 1  # the op before P: the fused op may now feed its own consumer, or take a producer
            while i > 0 and self.ops[i] is None:
                i -= 1
            i = max(i, 0)
        self.reindex()
        return fused


def _elementwise_uses(t, operands, maps, rank: int) -> bool:
    """Whether every operand aliasing buffer `t` is `t` itself, accessed through the identity map."""
    return all(v == t and _is_identity(m, rank) for v, m in zip(operands, maps) if _root(v) == _root(t))


def clone_body(block, mapping: dict, keep_yield: bool = False):
    """Clones the ops of a linalg.generic body at the insertion point, operands remapped through
    `mapping`. Returns the (remapped) value the body yields, or clones the yield too."""
    result = None
    for op in block.operations:
        op = op.operation
        if op.name == "linalg.yield" and not keep_yield:
            result = mapping.get(op.operands[0], op.operands[0])
            continue
        clone = op.clone()
        for k, v in enumerate(clone.operands):
            if v in mapping:
                clone.operands[k] = mapping[v]
        mapping.update(zip(op.results, clone.results))
    return result


def fuse_elementwise_chains(func_op) -> int:
    """Fuses elementwise producer / consumer pairs in `func_op` (bufferized); returns how many."""
    return _Fuser(func_op).run()
