"""Tensors -> memrefs, the first step of lowering: torch-mlir's asserts erased, tm_tensor ops
(sort, topk, scan, scatter) bufferized, then one-shot bufferization with results as
out-parameters. Also the MLIR helpers every later step uses (run_pipeline, forward_func).
"""

from __future__ import annotations

from ..errors import BuildError
from . import tm_tensor
from .memory_plan import defining_op

# No linalg-fuse-elementwise-ops: it folds producers (LayerNorm, bias) into matmuls, turning them
# into generics the microkernels cannot take, and recomputing the producer per output element.
_BUFFERIZE = (
    "builtin.module(canonicalize,"
    "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map},"
    "buffer-results-to-out-params{modify-public-functions=true hoist-static-allocs=true},canonicalize,cse)"
)


class FailingCheckError(BuildError):
    """A lowering torch-mlir marks wrong (strip_asserts); the message names where the op is."""


def run_pipeline(module, pipeline: str, stage: str) -> None:
    """Run `pipeline` on `module`, verifying the result once: the verifier after every pass took
    1.1-1.2 s of a 14-20 s build (timm_xcit, timm_mobilevit; Zen 3). A pass that breaks the IR is
    still caught, named by its stage."""
    from torch_mlir import passmanager

    try:
        with module.context:
            pm = passmanager.PassManager.parse(pipeline)
            pm.enable_verifier(False)
            pm.run(module.operation)
            if not module.operation.verify():
                raise RuntimeError("the IR it produced does not verify")
    except Exception as e:  # noqa: BLE001
        raise BuildError(f"{stage} failed: {str(e).strip().splitlines()[0]}") from e


def forward_func(module):
    from torch_mlir import ir

    for op in module.body.operations:
        if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == "forward":
            return op
    raise BuildError("internal: imported module has no @forward")


def set_all_arg_attrs(func_op, attrs: dict) -> None:
    from torch_mlir import ir

    n = len(func_op.regions[0].blocks[0].arguments)
    func_op.attributes["arg_attrs"] = ir.ArrayAttr.get([ir.DictAttr.get(attrs) for _ in range(n)])


def strip_asserts(module) -> int:
    """Erase `cf.assert` ops. torch-mlir emits data-dependent ones (e.g. reciprocal of zero); lowered,
    they call abort() and would take down the host process. Without them the math follows IEEE
    semantics (1/0 = inf), as eager PyTorch does. Shapes are static and were checked at export.
    An assert on a constant false is no run-time check but a lowering torch-mlir knows is wrong
    (e.g. adaptive pooling with uneven windows): that is a build error, never dropped."""
    from torch_mlir import ir

    found = []

    def visit(op):
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    if inner.operation.name == "cf.assert":
                        found.append(inner)
                    else:
                        visit(inner.operation)

    visit(module.operation)
    for op in found:
        cond = defining_op(op.operands[0])
        if cond is not None and cond.name == "arith.constant" and not ir.BoolAttr(cond.attributes["value"]).value:
            # Not data-dependent: torch-mlir's way of saying it lowered an op it does not support.
            msg = ir.StringAttr(op.attributes["msg"]).value
            raise FailingCheckError(f"an op lowered to a check that always fails: {msg!r} (at {op.location}); "
                             "the result would be wrong, refusing to build")
    for op in found:
        op.operation.erase()
    return len(found)


def bufferize(module, func_op) -> None:
    """Tensors -> memrefs, results as out-parameters (every target starts here). Inputs and weights
    are read-only: on the CPU the weights are mapped read-only from the bundle."""
    from torch_mlir import ir

    strip_asserts(module)
    with module.context, ir.Location.unknown():
        set_all_arg_attrs(func_op, {"bufferization.writable": ir.BoolAttr.get(False)})
    tm_ops = tm_tensor.has_tm_tensor_ops(module)  # sort / topk / scan / scatter: see tm_tensor.py
    if tm_ops:
        run_pipeline(module, tm_tensor.BUFFERIZE, "bufferizing tm_tensor ops (sort, topk, cumsum, scatter)")
        tm_tensor.prepare_for_one_shot(module)
    run_pipeline(module, _BUFFERIZE, "bufferization")
    if tm_ops:
        run_pipeline(module, tm_tensor.TO_LOOPS, "lowering tm_tensor ops (sort, topk, cumsum, scatter) to loops")
