"""Frontend: load a PyTorch model, export it, and lift every weight to a plain argument.

Output: a `LiftedProgram` whose graph takes (weights..., inputs...) as flat arguments. Keeping
weights out of the IR is what keeps import and LLVM time small (see TOOLCHAIN-NOTES): the weights
go to the bundle's weight section and reach the kernels as pointers.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from ..errors import BuildError

logging.getLogger("torch._export").setLevel(logging.ERROR)  # keep build output readable

# torch dtype -> (bundle dtype name, numpy dtype). The bundle uses numpy's names.
_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}
_TORCH_DTYPES = {name: dt for dt, name in _DTYPES.items()}
_TORCH_DTYPES["bfloat16"] = torch.bfloat16  # a model dtype (--input-shape), not a port dtype: see _port_sig


def dtype_name(dt: torch.dtype, what: str) -> str:
    if dt not in _DTYPES:
        raise BuildError(f"{what} has dtype {dt}, which mlrt does not support yet "
                         f"(supported: {', '.join(sorted(_DTYPES.values()))})")
    return _DTYPES[dt]


@dataclass
class TensorSig:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int, ...]
    torch_dtype: str | None = None  # the model's dtype where the port's differs (bfloat16 -> float32)

    def to_json(self) -> dict:
        j = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.torch_dtype:
            j["torch_dtype"] = self.torch_dtype
        return j


def _port_sig(name: str, dt: torch.dtype, shape: tuple[int, ...], what: str) -> TensorSig:
    """A bundle input/output. bfloat16 has no numpy dtype: its ports are float32 holding bfloat16
    values (rounded at the graph's entry and exit, see model_io.float32_body)."""
    if dt == torch.bfloat16:
        return TensorSig(name, "float32", shape, "bfloat16")
    return TensorSig(name, dtype_name(dt, what), shape)


@dataclass
class LiftedProgram:
    """An exported model with weights lifted to arguments; everything the importer needs."""

    program: torch.fx.GraphModule  # placeholders: weights and inputs in `call_args` order; meta["val"] fresh
    call_args: list[tuple[str, int]]  # ("weight", i) | ("input", i), one per graph argument
    weights: list[tuple[str, np.ndarray]]  # (fully qualified name, contiguous data)
    inputs: list[TensorSig]
    outputs: list[TensorSig]
    output_structure: Any  # output indices and constants, nested: see docs/bundle-format.md
    exported: ExportedProgram  # decomposed program, kept for diagnostics (op -> module path)
    graph_passes: dict[str, int] = field(default_factory=dict)  # what each graph pass folded
    input_mutations: list[dict] = field(default_factory=list)  # {"input": i, "output": k}: in-place updates
    retrace: Callable[[], ExportedProgram] | None = None  # `exported` again with source lines, if skipped

    def source_program(self) -> ExportedProgram:
        """`exported` with each node's source line (meta["stack_trace"]), for error messages. The
        one-trace export (export_and_lift) does not record them, which is a quarter of its time;
        they are traced here, when an error needs them."""
        if self.retrace is not None:
            retrace, self.retrace = self.retrace, None
            try:
                self.exported = retrace()
            except Exception:  # noqa: BLE001 - the message then names module paths, without lines
                pass
        return self.exported


# --------------------------------------------------------------------------- loading


def parse_input_shape(spec: str) -> tuple[tuple[int, ...], torch.dtype]:
    """'1x3x224x224' or '1x3x224x224:float32' or 'scalar:int64' -> (shape, dtype)."""
    shape_s, _, dtype_s = spec.partition(":")
    dtype_s = dtype_s or "float32"
    if dtype_s not in _TORCH_DTYPES:
        raise BuildError(f"--input-shape {spec!r}: unknown dtype {dtype_s!r} "
                         f"(one of {', '.join(sorted(_TORCH_DTYPES))})")
    if shape_s in ("", "scalar"):
        return (), _TORCH_DTYPES[dtype_s]
    if not re.fullmatch(r"\d+(x\d+)*", shape_s):
        raise BuildError(f"--input-shape {spec!r}: expected dims joined by 'x', e.g. 1x3x224x224[:float32]")
    return tuple(int(d) for d in shape_s.split("x")), _TORCH_DTYPES[dtype_s]


def example_from_shape(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    if dtype == torch.bool:
        return torch.zeros(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)  # index-like inputs: 0 is always a valid index


def load_example_inputs(path: str | Path) -> list[torch.Tensor]:
    """Example inputs from a .npy (one input) or .npz (inputs in the archive's order)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return [torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files]
    return [torch.from_numpy(np.ascontiguousarray(np.load(path)))]


def detect_format(path: Path) -> str:
    """'exported' (torch.export.save), 'torchscript' (torch.jit.save) or 'pickle' (torch.save)."""
    if not zipfile.is_zipfile(path):
        return "pickle"  # legacy (non-zip) torch.save
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("archive_format") for n in names) or any("/models/" in n and n.endswith(".json") for n in names):
        return "exported"
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    return "pickle"


def load_source(path: str | Path, example_inputs: Sequence[torch.Tensor] | None) -> ExportedProgram | torch.nn.Module:
    """The model a file holds: a .pt2 as saved (an ExportedProgram, dynamic dims included), else an
    nn.Module (TorchScript converted to one, or the pickled module)."""
    path = Path(path)
    if not path.exists():
        raise BuildError(f"model file not found: {path}")
    fmt = detect_format(path)
    if fmt == "exported":
        return torch.export.load(str(path))
    if example_inputs is None:
        raise BuildError(
            f"{path} is a {'TorchScript' if fmt == 'torchscript' else 'pickled nn.Module'} file, which does not "
            "record input shapes: pass --input-shape (e.g. 1x3x224x224:float32, once per input) "
            "or --example-inputs inputs.npz")
    if fmt == "torchscript":
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
        from torch._export.converter import TS2EPConverter

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Manually populate num_batches_tracked ..." noise
                converted = TS2EPConverter(scripted, tuple(example_inputs)).convert()
        except Exception as e:  # noqa: BLE001 - converter raises many types
            raise BuildError(f"could not convert TorchScript model {path} to torch.export: {e}") from e
        return converted.module()  # its dims are Dim.AUTO: exported again, static or as declared
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)  # runs pickled code: documented
    except (ModuleNotFoundError, AttributeError) as e:
        raise BuildError(f"cannot unpickle {path}: {e}. A pickled nn.Module needs its class importable: put the "
                         "module that defines it on PYTHONPATH, or save the model with torch.export.save instead") from e
    except Exception as e:  # noqa: BLE001
        raise BuildError(f"cannot load {path} as a torch.save file: {e}") from e
    if not isinstance(obj, torch.nn.Module):
        raise BuildError(f"{path} holds a {type(obj).__name__}, not an nn.Module (a state_dict alone has no code: "
                         "save the module itself, or export it with torch.export.save instead)")
    return obj


def load_model(path: str | Path, example_inputs: Sequence[torch.Tensor] | None) -> ExportedProgram:
    """Load any supported model file and return an ExportedProgram (at `example_inputs`' shapes if given)."""
    src = load_source(path, example_inputs)
    if isinstance(src, ExportedProgram):
        return src if example_inputs is None else export_module(src.module(), example_inputs)
    return export_module(src, example_inputs)


def input_names(model: ExportedProgram | torch.nn.Module, count: int) -> list[str]:
    """The names of the user inputs, as torch.export gives them to the bundle's ports."""
    if isinstance(model, ExportedProgram):
        return [s.arg.name for s in model.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    import inspect

    names: list[str] = []
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    for prm in params:
        if prm.kind == prm.VAR_POSITIONAL:
            break
        if prm.kind in (prm.POSITIONAL_ONLY, prm.POSITIONAL_OR_KEYWORD):
            names.append(prm.name)
    names = names[:count]
    return names + [f"args_{i}" for i in range(count - len(names))]


def has_dynamic_inputs(ep: ExportedProgram) -> bool:
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    for spec, node in zip(ep.graph_signature.input_specs, placeholders):
        val = node.meta.get("val")
        if spec.kind == InputKind.USER_INPUT and isinstance(val, torch.Tensor):
            if any(not isinstance(d, int) for d in val.shape):
                return True
    return False


def example_inputs_of(ep: ExportedProgram) -> list[torch.Tensor] | None:
    """The example inputs a .pt2 recorded (torch.export.save keeps them), if any."""
    ex = getattr(ep, "example_inputs", None)
    if not ex:
        return None
    args, kwargs = ex
    if kwargs:
        return None
    return [a for a in args] if all(isinstance(a, torch.Tensor) for a in args) else None


_CONTROL_FLOW_HINT = (
    "hint: torch.export needs one graph for all inputs. Rewrite data-dependent Python control flow "
    "(`if x.sum() > 0:`) with torch.where(...) or torch.cond(...), and make shapes independent of values.")


def export_module(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> ExportedProgram:
    if not isinstance(module, torch.fx.GraphModule):  # ExportedProgram.module() refuses eval(); it is eval already
        module = module.eval()
    try:
        with torch.no_grad():
            return torch.export.export(module, tuple(example_inputs), strict=False)
    except Exception as e:  # noqa: BLE001
        text = str(e)
        hint = f"\n{_CONTROL_FLOW_HINT}" if ("data-dependent" in text.lower() or "guard" in text.lower()) else ""
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise BuildError(f"torch.export failed on {type(module).__name__}: {first}{hint}") from e


# --------------------------------------------------------------------------- lifting


def _placeholder_sig(node: torch.fx.Node, name: str) -> tuple[tuple[int, ...], torch.dtype]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise BuildError(f"input '{name}' is not a tensor ({type(val).__name__}); only tensor inputs are supported")
    shape = []
    for d in val.shape:
        if not isinstance(d, int):
            raise BuildError(f"input '{name}' has a dynamic dimension ({d}); mlrt bundles have static shapes: "
                             "pass --input-shape to fix it")
        shape.append(d)
    return tuple(shape), val.dtype


def _flatten(gm: torch.fx.GraphModule, inputs: list[TensorSig], input_nodes: dict, values: dict):
    """Placeholder order -> (call_args, weights, example args)."""
    call_args: list[tuple[str, int]] = []
    weights: list[tuple[str, np.ndarray]] = []
    example_args: list[torch.Tensor] = []
    for node in (n for n in gm.graph.nodes if n.op == "placeholder"):
        if node in input_nodes:
            i = input_nodes[node]
            call_args.append(("input", i))
            example_args.append(example_from_shape(inputs[i].shape, _TORCH_DTYPES[inputs[i].dtype]))
        else:
            t = values[node].contiguous()
            call_args.append(("weight", len(weights)))
            weights.append((node.meta.get("mlpack_weight_name", node.name), t.numpy()))
            example_args.append(t)
    return call_args, weights, example_args


def _decomposition_table() -> dict:
    """Core ATen, torch-mlir's and our own decompositions as one table, BatchNorm left whole (it
    folds into its conv, or becomes a scale and a shift: graph_passes)."""
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    from .decompositions import table as mlpack_decompositions  # ops torch-mlir cannot lower itself

    table = torch.export.default_decompositions()
    for op, fn in {**get_decomposition_table(), **mlpack_decompositions()}.items():
        table[op] = fn
    for op in (torch.ops.aten._native_batch_norm_legit_no_training.default,):
        if op in table:
            del table[op]
    return table


def _canonical(gm: torch.fx.GraphModule) -> None:
    """Drops the dtype asserts the tracer leaves behind and turns prims conversions (from
    decompositions in the table) into aten._to_copy, which the later passes and torch-mlir know.
    A tensor constant the model creates (`torch.tensor(...)`) is read through `lift_fresh_copy`
    where export and decompositions ran in one trace: a `clone`, as the two-trace path decomposes it."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == torch.ops.aten._assert_tensor_metadata.default and not node.users:
            gm.graph.erase_node(node)
        elif node.target == torch.ops.aten.lift_fresh_copy.default:
            node.target = torch.ops.aten.clone.default
        elif node.target == torch.ops.prims.convert_element_type.default:
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(torch.ops.aten._to_copy.default, (node.args[0],), {"dtype": node.args[1]})
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)


def _signature(node: torch.fx.Node) -> tuple:
    """What a node computes (op, target, arguments by node name): the graph passes rewrite some
    nodes in place; _fresh_meta recomputes those whose signature changed."""
    return node.op, node.target, repr(node.args), repr(node.kwargs)


def _node_signatures(gm: torch.fx.GraphModule) -> dict:
    return {n: _signature(n) for n in gm.graph.nodes}


def _fresh_meta(gm: torch.fx.GraphModule, example_args: list[torch.Tensor],
                before: dict | None = None) -> torch.fx.GraphModule:
    """Every node's meta["val"] recomputed with fake tensors (the graph passes added nodes and
    placeholders without): what the importer reads types from. A re-export did this by tracing
    the whole model again, at about 4x the cost. With `before` (_node_signatures from before the
    passes), only the nodes the passes added or changed, and those whose inputs' metadata
    changed, are recomputed, in the export's own fake mode (the rest keep theirs: timm_xcit
    1.4 s -> 0.4 s, the corpus 15.8 s -> 4.9 s); else, or if that fails, all of them."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    gm.recompile()
    if before is None or not _refresh_changed(gm, example_args, before):
        try:
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                FakeTensorProp(gm, mode).propagate(*[mode.from_tensor(t) for t in example_args])
        except Exception as e:  # noqa: BLE001
            raise BuildError(f"propagating shapes through the lifted graph failed: {e}") from e
    for node in gm.graph.nodes:
        node.meta.pop("tensor_meta", None)  # the importer prefers it to "val": stale after the passes
    return gm


def _same_meta(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return (a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride()
                and a.device == b.device)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_meta(x, y) for x, y in zip(a, b))
    return not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and type(a) is type(b) and a == b


def _refresh_changed(gm: torch.fx.GraphModule, example_args: list[torch.Tensor], before: dict) -> bool:
    """_fresh_meta's incremental path. False, with the graph untouched, where it cannot run: no
    fake mode to reuse, a symbolic shape, or an op that fails on the kept metadata."""
    from torch._subclasses.fake_tensor import FakeTensor

    vals = [n.meta.get("val") for n in gm.graph.nodes]
    mode = next((v.fake_mode for v in vals if isinstance(v, FakeTensor)), None)
    if mode is None or any(isinstance(v, torch.Tensor) and not all(isinstance(d, int) for d in v.shape)
                           for v in vals):
        return False
    fresh: dict = {}
    placeholders = iter(example_args)
    try:
        with mode:
            for node in gm.graph.nodes:
                if node.op == "output":
                    val = torch.fx.node.map_arg(node.args[0], lambda a: fresh.get(a, a.meta.get("val")))
                    fresh[node] = val  # as FakeTensorProp leaves it: the returned values
                    continue
                if node.op in ("placeholder", "get_attr"):  # static: the export's mode would make symbols
                    t = next(placeholders) if node.op == "placeholder" else getattr(gm, node.target)
                    if _same_meta(node.meta.get("val"), t):
                        continue
                    val = mode.from_tensor(t, static_shapes=True)
                elif (before.get(node) == _signature(node) and "val" in node.meta
                      and not any(a in fresh for a in node.all_input_nodes)):
                    continue
                else:
                    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: fresh.get(a, a.meta.get("val")))
                    val = node.target(*args, **kwargs)
                if not _same_meta(node.meta.get("val"), val):
                    fresh[node] = val
    except Exception:  # noqa: BLE001 - the full propagation reports what is wrong
        return False
    for node, val in fresh.items():
        node.meta["val"] = val
    return True


_ONE_TRACE_LOCK = threading.Lock()


def _export_decomposed(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor],
                       stack_traces: bool = False) -> ExportedProgram | None:
    """torch.export and `run_decompositions(_decomposition_table())` in ONE trace of the model,
    or None where this torch lacks the internals it uses (or the trace fails: the caller then
    takes the two-trace path, which reports the failure as it always has).

    run_decompositions retraces the whole exported graph (unlift, fake tensors, functionalization):
    about twice the cost of the export itself (timm_xcit: 1.3 s export + 3.2 s decompose, against
    3.1 s for this). It is what torch.export did before its training IR: `_export` with
    `pre_dispatch=False`, given the decompositions the way run_decompositions hands them on
    (CompositeImplicitAutograd overrides around the trace, the rest as the aten tracer's table),
    so the graph is the same as the two-step path's, node for node (tests/test_frontend.py).
    Without `stack_traces` no node records the Python stack it was traced from (a quarter of the
    trace's time: timm_xcit 2.95 -> 2.36 s); module paths (nn_module_stack) are kept."""
    try:
        import torch.export._trace as trace
        import torch.fx.config as fx_config
        from torch.export.exported_program import (_override_composite_implicit_decomp,
                                                   _split_decomp_table_to_cia_and_python_decomp)
        to_aten = trace._export_to_aten_ir
        export = trace._export
    except (ImportError, AttributeError):
        return None
    if not isinstance(module, torch.fx.GraphModule):
        module = module.eval()
    cia, python_table = _split_decomp_table_to_cia_and_python_decomp(dict(_decomposition_table()))
    with _ONE_TRACE_LOCK:  # `_export` looks the aten tracer up by name: handed the table for this trace only
        trace._export_to_aten_ir = functools.partial(to_aten, decomp_table=python_table)
        no_traces = getattr(fx_config, "do_not_emit_stack_traces", False)
        fx_config.do_not_emit_stack_traces = no_traces or not stack_traces
        try:
            with torch.no_grad(), _override_composite_implicit_decomp(cia):
                return export(module, tuple(example_inputs), strict=False, pre_dispatch=False)
        except Exception:  # noqa: BLE001 - the two-trace path raises it again, as a BuildError where it can
            return None
        finally:
            trace._export_to_aten_ir = to_aten
            fx_config.do_not_emit_stack_traces = no_traces


def export_and_lift(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> LiftedProgram:
    """`lift(export_module(module, example_inputs))`, exporting and decomposing in one trace where it can."""
    ep = _export_decomposed(module, example_inputs)
    if ep is None:
        return lift(export_module(module, example_inputs))
    lifted = lift(ep, decomposed=True)
    lifted.retrace = lambda: _export_decomposed(module, example_inputs, stack_traces=True) or ep
    return lifted


def lift(ep: ExportedProgram, decomposed: bool = False) -> LiftedProgram:
    """Core ATen with torch-mlir's decompositions (one pass: each is a full trace of the model;
    `decomposed`: `ep` has them already, and is export_and_lift's own, which the passes below
    may change in place) -> fold BatchNorm into convs, the rest into scale-and-shift -> fold
    constants, and export the result with every weight as a plain argument (in `call_args` order)."""
    import copy

    from . import graph_passes, model_io

    if not decomposed:
        ep = ep.run_decompositions(_decomposition_table())
    sig = ep.graph_signature
    state = {**ep.state_dict, **ep.constants}
    # `ep` stays intact for diagnostics; export_and_lift's traces again for them (source_program).
    gm = ep.graph_module if decomposed else copy.deepcopy(ep.graph_module)
    before = _node_signatures(gm)
    _canonical(gm)
    values: dict[torch.fx.Node, torch.Tensor] = {}
    inputs: list[TensorSig] = []
    input_nodes: dict[torch.fx.Node, int] = {}
    for spec, node in zip(sig.input_specs, [n for n in gm.graph.nodes if n.op == "placeholder"]):
        if spec.kind == InputKind.USER_INPUT:
            shape, dt = _placeholder_sig(node, spec.arg.name)
            input_nodes[node] = len(inputs)
            inputs.append(_port_sig(spec.arg.name, dt, shape, f"input '{spec.arg.name}'"))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            t = state[spec.target].detach()
            if t.dtype not in model_io.LOW_PRECISION:
                dtype_name(t.dtype, f"weight '{spec.target}'")
            values[node] = t
            node.meta["mlpack_weight_name"] = spec.target
        else:
            raise BuildError(f"model input kind {spec.kind.name} ('{spec.arg.name}') is not supported")

    empty = model_io.empty_results_as_constants(gm.graph)
    # One graph output per distinct tensor (user outputs, then mutated inputs' new values);
    # constants the model returns live in the output structure only.
    plan = model_io.plan_outputs(gm, sig.output_specs, {s.name for s in inputs})
    outputs = []
    for i, (node, name) in enumerate(zip(plan.nodes, plan.names)):
        val = node.meta["val"]
        outputs.append(_port_sig(name, val.dtype, tuple(int(d) for d in val.shape), f"output {i}"))
    input_index = {s.name: i for i, s in enumerate(inputs)}
    mutations = [{"input": input_index[name], "output": k} for name, k in plan.mutations]

    stats = {"empty_results_as_constants": empty,
             "empty_permuted_decomposed": model_io.decompose_empty_permuted(gm.graph),
             "int_operands_promoted": model_io.promote_int_operands(gm.graph),
             "half_to_float32": model_io.float32_body(gm, values, input_nodes)}
    stats["batchnorm_folded"] = graph_passes.run_pass(gm.graph, values, graph_passes.fold_batchnorm)
    stats["batchnorm_scale_shift"] = graph_passes.run_pass(gm.graph, values, graph_passes.batchnorm_scale_shift)
    stats["var_mean_in_float32"] = graph_passes.run_pass(gm.graph, values, graph_passes.var_mean_in_input_dtype)
    stats["weight_matmuls_unbatched"] = graph_passes.run_pass(gm.graph, values, graph_passes.unbatch_weight_matmuls)
    stats["constants_folded"] = graph_passes.run_pass(gm.graph, values, graph_passes.fold_constants)
    call_args, weights, example_args = _flatten(gm, inputs, input_nodes, values)

    return LiftedProgram(
        program=_fresh_meta(gm, example_args, before),
        call_args=call_args,
        weights=weights,
        inputs=inputs,
        outputs=outputs,
        output_structure=model_io.output_structure(ep.call_spec.out_spec, plan.leaves),
        input_mutations=mutations,
        exported=ep,
        graph_passes=stats,
    )
