"""Move each top-level loop nest of `@forward` into a function of its own.

LLVM's loop passes (LoopVectorize, LoopStrengthReduce, IndVarSimplify) cost time that grows
faster than linearly with the size of the function they run in: a 12-block ViT's `@forward`
held ~700 loops in 18k lines and took 121 s at -O3, of which 67 s in LoopVectorize alone.
One function per loop nest keeps each pass's work local, and the same model compiles in a
fraction of that.

Each outlined function takes the root buffers it touches (arguments of `@forward`: inputs,
weights, outputs, the arena) and re-derives its views from them with clones of the same view
ops (`memref.view` at constant offsets, `expand_shape`, ...). So LLVM still sees every access as
a constant offset from a `noalias` base and vectorizes without runtime alias checks, exactly as
it did inside `@forward`. The functions are marked `noinline`: inlined back, they would bring
the cost back.
"""

from __future__ import annotations

# Side-effect-free ops that only derive values (views, constants) and can be re-created inside an
# outlined function instead of being passed in.
_CLONEABLE = {"arith.constant", "memref.view", "memref.subview", "memref.expand_shape",
              "memref.collapse_shape", "memref.reinterpret_cast", "memref.cast", "memref.get_global",
              "arith.addi", "arith.muli", "arith.index_cast"}
_LOOPS = {"scf.for", "scf.parallel"}
PREFIX = "forward_loop_"  # the outlined functions' names: the x86_64 target's llvm_compile partitions by it


def outline_loop_nests(func_op) -> int:
    """Outline every result-free top-level `scf.for` / `scf.parallel` of `func_op`; returns how
    many were outlined. Loops that use a value that is neither a root buffer nor derivable from
    one by `_CLONEABLE` ops stay where they are."""
    from torch_mlir import ir
    from torch_mlir.dialects import func

    entry = func_op.regions[0].blocks[0]
    roots = list(entry.arguments)
    arg_attrs = func_op.attributes["arg_attrs"] if "arg_attrs" in func_op.attributes else None
    count = 0
    for op in list(entry.operations):
        op = op.operation
        if op.name not in _LOOPS or len(op.results):
            continue
        plan = _captures(op, func_op, roots)
        if plan is None:
            continue
        used_roots, derived = plan
        name = f"{PREFIX}{count}"
        with ir.InsertionPoint(func_op), op.location:
            fn = func.FuncOp(name, ([roots[i].type for i in used_roots], []), visibility="private")
        if arg_attrs is not None:
            fn.attributes["arg_attrs"] = ir.ArrayAttr.get([ir.ArrayAttr(arg_attrs)[i] for i in used_roots])
        body = fn.add_entry_block()
        mapping = {roots[i]: body.arguments[k] for k, i in enumerate(used_roots)}
        with ir.InsertionPoint(body), op.location:
            for src in derived:  # in dependency order
                clone = src.clone()
                _remap(clone, mapping)
                for old, new in zip(src.results, clone.results):
                    mapping[old] = new
            ret = func.ReturnOp([])
        with ir.InsertionPoint(op), op.location:
            func.CallOp([], ir.FlatSymbolRefAttr.get(name), [roots[i] for i in used_roots])
        op.move_before(ret)
        _remap_nested(op, mapping)
        count += 1
    return count


def merge_identical_nests(module, func_op) -> int:
    """Drops every outlined function whose text equals an earlier one's up to its own name, and
    points `func_op`'s calls at the earlier one; returns how many were dropped. A transformer's
    blocks run the same loop nests at the same arena offsets on other weights (arguments): in
    timm_xcit 395 of 564 nests. Done here, before lowering to LLVM, the passes, the translation
    and LLVM itself see each nest once (llvm_compile.merge_identical did it on the LLVM IR text,
    after all of that work; it stays, for whatever only the LLVM IR shows to be the same)."""
    from torch_mlir import ir

    first: dict[str, str] = {}
    same: dict[str, str] = {}
    for op in list(module.body.operations):
        op = op.operation
        if op.name != "func.func":
            continue
        name = ir.StringAttr(op.attributes["sym_name"]).value
        if not name.startswith(PREFIX):
            continue
        # Local scope: SSA names numbered within the function (and printing without walking the module).
        text = op.get_asm(use_local_scope=True, assume_verified=True).replace(f"@{name}(", "@SELF(", 1)
        kept = first.setdefault(text, name)
        if kept != name:
            same[name] = kept
            op.erase()
    if same:
        for op in func_op.regions[0].blocks[0].operations:
            op = op.operation
            if op.name == "func.call":
                callee = ir.FlatSymbolRefAttr(op.attributes["callee"]).value
                if callee in same:
                    op.attributes["callee"] = ir.FlatSymbolRefAttr.get(same[callee])
    return len(same)


def finish_outlined(module) -> None:
    """After lowering to the LLVM dialect: give the outlined functions internal linkage (not
    exported from the shared object) and `noinline`."""
    from torch_mlir import ir

    with module.context:
        internal = ir.Attribute.parse("#llvm.linkage<internal>")
        noinline = ir.ArrayAttr.get([ir.StringAttr.get("noinline")])
        for op in module.body.operations:
            op = op.operation
            if op.name == "llvm.func" and ir.StringAttr(op.attributes["sym_name"]).value.startswith(PREFIX):
                op.attributes["linkage"] = internal
                op.attributes["passthrough"] = noinline


def _captures(loop, func_op, roots):
    """(indices of the root buffers the loop uses, the top-level ops to clone in dependency
    order), or None if the loop uses something that cannot be re-derived."""
    from torch_mlir import ir

    root_index = {r: i for i, r in enumerate(roots)}
    used, derived, seen = set(), [], set()

    def outside(value) -> bool:
        owner = value.owner
        if isinstance(owner, ir.Block):
            return value in root_index
        return owner.parent == func_op.operation

    def need(value) -> bool:
        key = value
        if key in root_index:
            used.add(root_index[key])
            return True
        op = value.owner
        if op.name not in _CLONEABLE:
            return False
        if op.results[0] in seen:
            return True
        for operand in op.operands:
            if not need(operand):
                return False
        seen.add(op.results[0])
        derived.append(op)
        return True

    ok = True

    def visit(op):
        nonlocal ok
        for operand in op.operands:
            if outside(operand) and not need(operand):
                ok = False
                return
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    visit(inner.operation)
                    if not ok:
                        return

    visit(loop)
    return (sorted(used), derived) if ok else None


def _remap(op, mapping) -> None:
    for i, operand in enumerate(op.operands):
        new = mapping.get(operand)
        if new is not None:
            op.operands[i] = new


def _remap_nested(op, mapping) -> None:
    _remap(op, mapping)
    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                _remap_nested(inner.operation, mapping)
