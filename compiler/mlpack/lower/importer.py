"""Import: the lifted FX graph -> MLIR linalg-on-tensors through torch-mlir's FX importer.

When lowering fails, torch-mlir prints diagnostics to stderr and raises a generic error. We collect
the diagnostics instead, find the ATen op they name, and point at the module path and source line
of that op in the user's model (from the FX node metadata).
"""

from __future__ import annotations

import re

import torch

from ..errors import BuildError, UnsupportedOpError, node_location
from ..frontend.export import LiftedProgram

_OP_PATTERNS = (
    re.compile(r'name = "torch\.(aten\.[\w.]+)"'),  # torch.operator left over: no lowering known
    re.compile(r"failed to legalize operation 'torch\.(aten\.[\w.]+)'"),
)


def import_program(lifted: LiftedProgram):
    """Returns an `ir.Module` holding `func.func @forward` over tensors (args in call_args order)."""
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d
    from torch_mlir.extras.fx_importer import FxImporter
    from torch_mlir.fx import OutputType, stateless_fx_import

    context = ir.Context()
    torch_d.register_dialect(context)
    diagnostics: list[str] = []

    def on_diagnostic(d) -> bool:
        diagnostics.append(f"{d.location}: {d.message}")
        return True  # handled: keep stderr clean

    context.attach_diagnostic_handler(on_diagnostic)
    try:
        module = stateless_fx_import(  # the lifted graph: weights are plain arguments, decomposed already
            lifted.program,
            output_type=OutputType.LINALG_ON_TENSORS,
            fx_importer=FxImporter(context=context),
            model_name="forward",
        )
    except NotImplementedError as e:
        raise BuildError(f"torch-mlir cannot import this model: {e}") from e
    except Exception as e:  # noqa: BLE001 - TorchMlirCompilerError and friends
        raise _diagnose(lifted, diagnostics, e) from e
    return module


def _diagnose(lifted: LiftedProgram, diagnostics: list[str], err: Exception) -> BuildError:
    for diag in diagnostics:
        for pat in _OP_PATTERNS:
            m = pat.search(diag)
            if m:
                op = m.group(1)
                return UnsupportedOpError(op, op_locations(lifted.source_program(), op))
    detail = "\n".join(diagnostics[:5]) or str(err).strip().splitlines()[0]
    return BuildError(f"lowering the model to linalg failed:\n{detail}")


def op_locations(ep, op: str) -> list[str]:
    """Where the ATen op `op` ('aten.median' or 'aten.median.default') occurs: module path + source line."""
    base = op.split(".")[1]
    found = []
    for node in ep.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target._schema.name != f"aten::{base}":
            continue
        found.append(node_location(node))
    return found
