"""What a model takes and returns, beyond plain float32 tensors in a tuple (docs/bundle-format.md):

- output structure: tuples, lists, dicts, named tuples (torch.return_types.*, collections.namedtuple),
  registered pytree classes (dataclasses, transformers' ModelOutput) and constant leaves (None,
  bool, int, float, str) -> the manifest's `output_structure`;
- outputs: one bundle output per distinct tensor (a tensor returned twice is output once), plus
  the new value of every input the model mutates in place (`mutated:<input>`, `input_mutations`);
- float16 / bfloat16: the body runs in float32 (weights upcast at build time, ports cast at the
  graph's entry and exit); bfloat16 ports cross numpy as float32 holding bfloat16 values;
- graph fixes on core ATen: `empty_permuted` -> `empty`, integer operands of float-valued
  pointwise ops cast first (eager's type promotion).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import torch
from torch import fx
from torch.utils import _pytree as pytree

from ..errors import BuildError

aten = torch.ops.aten

# Float types the bundle computes in float32. Value: the dtype of the port numpy sees.
LOW_PRECISION = {torch.float16: "float16", torch.bfloat16: "float32"}
_CASTS = {aten._to_copy.default, torch.ops.prims.convert_element_type.default}


# --------------------------------------------------------------------------- output structure


def constant_leaf(value: Any, where: str) -> dict:
    """A constant the model returns (not a tensor) as a structure leaf."""
    if value is None:
        return {"type": "none"}
    if isinstance(value, bool):
        return {"type": "bool", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": value}
    if isinstance(value, float):  # JSON has no inf/nan: those are strings
        return {"type": "float", "value": value if math.isfinite(value) else repr(value)}
    if isinstance(value, str):
        return {"type": "str", "value": value}
    raise BuildError(f"{where} is a {type(value).__name__} ({value!r}); a model may return tensors, None, "
                     "bools, ints, floats and strings, in tuples, lists, dicts and named tuples")


def _qualname(cls: type) -> str:
    mod = getattr(cls, "__module__", "") or ""
    name = getattr(cls, "__qualname__", cls.__name__)
    return f"{mod}.{name}" if mod and mod != "builtins" else name


def _child_keys(spec: pytree.TreeSpec) -> list | None:
    """Key entries (MappingKey / GetAttrKey / SequenceKey) of a registered class's children, found by
    unflattening a stand-in instance and flattening it with keys; None when the class cannot say."""
    node = pytree.SUPPORTED_NODES.get(spec.type)
    if node is None or node.flatten_with_keys_fn is None:
        return None
    try:
        obj = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
        kids, _ = node.flatten_with_keys_fn(obj)
        return [k for k, _ in kids]
    except Exception:  # noqa: BLE001 - a class may refuse stand-in leaves
        return None


def output_structure(spec: pytree.TreeSpec, leaves: list, counter: list[int] | None = None) -> Any:
    """The manifest's `output_structure` for the model's output TreeSpec. `leaves` holds, per
    pytree leaf in order, an output index (int) or a constant leaf (dict)."""
    counter = counter if counter is not None else [0]
    if spec.is_leaf():
        counter[0] += 1
        return leaves[counter[0] - 1]
    kids = [output_structure(c, leaves, counter) for c in spec.children_specs]
    t = spec.type
    if t is type(None):  # None as a pytree node without children
        return {"type": "none"}
    if t in (tuple, list):
        return {"type": t.__name__, "items": kids}
    if t in (dict, collections.OrderedDict):
        return {"type": "dict", "keys": [str(k) for k in spec.context], "items": kids}
    if t is collections.defaultdict:
        return {"type": "dict", "keys": [str(k) for k in spec.context[1]], "items": kids}
    if t is pytree.namedtuple or (isinstance(t, type) and hasattr(t, "_fields") and issubclass(t, tuple)):
        cls = spec.context if t is pytree.namedtuple else t
        return {"type": "namedtuple", "class": _qualname(cls), "fields": list(cls._fields), "items": kids}
    if isinstance(t, type) and pytree.is_structseq_class(t):  # torch.return_types.max, sort, topk, ...
        fields = list(getattr(t, "__match_args__", ()))[:len(kids)]
        if len(fields) != len(kids):
            fields = [f"field_{i}" for i in range(len(kids))]
        return {"type": "namedtuple", "class": _qualname(t), "fields": fields, "items": kids}
    # Other registered pytree classes (dataclasses, transformers' ModelOutput, ...): by their keys.
    ctx = spec.context
    if isinstance(t, type) and dataclasses.is_dataclass(t) and isinstance(ctx, (list, tuple)) and ctx \
            and isinstance(ctx[0], (list, tuple)) and len(ctx[0]) == len(kids):
        return {"type": "namedtuple", "class": _qualname(t), "fields": [str(f) for f in ctx[0]], "items": kids}
    keys = _child_keys(spec)
    if keys is not None and len(keys) == len(kids):
        if all(isinstance(k, pytree.MappingKey) for k in keys):
            return {"type": "dict", "class": _qualname(t), "keys": [str(k.key) for k in keys], "items": kids}
        if all(isinstance(k, pytree.GetAttrKey) for k in keys):
            return {"type": "namedtuple", "class": _qualname(t), "fields": [k.name for k in keys], "items": kids}
        if all(isinstance(k, pytree.SequenceKey) for k in keys):
            return {"type": "tuple", "class": _qualname(t), "items": kids}
    if isinstance(ctx, (list, tuple)) and len(ctx) == len(kids) and all(isinstance(k, str) for k in ctx):
        return {"type": "dict", "class": _qualname(t), "keys": list(ctx), "items": kids}
    raise BuildError(f"model output of type {getattr(t, '__name__', t)} is not supported (use tensors, tuples, "
                     "lists, dicts, named tuples or pytree-registered classes with named children)")


# --------------------------------------------------------------------------- outputs and mutations


@dataclasses.dataclass
class OutputPlan:
    nodes: list[fx.Node]  # the graph's outputs, one per distinct tensor
    names: list[str]
    leaves: list  # per user-output pytree leaf: output index or constant leaf
    mutations: list[tuple[str, int]]  # (input name, output index)


def plan_outputs(gm: fx.GraphModule, output_specs, user_input_names: set[str]) -> OutputPlan:
    """Rewrite the graph's output to one entry per distinct tensor: the user's outputs (constants
    become structure leaves), then the new value of each input mutated in place."""
    from torch.export.graph_signature import OutputKind

    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    flat = list(out_node.args[0])
    if len(flat) != len(output_specs):
        raise BuildError(f"internal: {len(flat)} graph outputs but {len(output_specs)} output specs")
    nodes: list[fx.Node] = []
    names: list[str] = []
    index: dict[fx.Node, int] = {}

    def add(node: fx.Node, name: str) -> int:
        if node not in index:
            index[node] = len(nodes)
            nodes.append(node)
            names.append(name)
        return index[node]

    leaves: list = []
    mutations: list[tuple[str, int]] = []
    user = 0
    # torch.export lists mutations first; the bundle lists the user's outputs first.
    pairs = sorted(zip(output_specs, flat), key=lambda p: p[0].kind != OutputKind.USER_OUTPUT)
    for spec, arg in pairs:
        if spec.kind == OutputKind.USER_OUTPUT:
            where = f"output {user}"
            user += 1
            if isinstance(arg, fx.Node):
                if not isinstance(arg.meta.get("val"), torch.Tensor):
                    raise BuildError(f"{where} is not a tensor ({type(arg.meta.get('val')).__name__}); "
                                     "a model may return tensors and constants (None, bool, int, float, str)")
                leaves.append(add(arg, f"output_{len(nodes)}"))
            else:
                leaves.append(constant_leaf(arg, where))
        elif spec.kind == OutputKind.USER_INPUT_MUTATION:
            if spec.target not in user_input_names or not isinstance(arg, fx.Node):
                raise BuildError(f"internal: mutation of unknown input '{spec.target}'")
            mutations.append((spec.target, add(arg, f"mutated:{spec.target}")))
        else:  # BUFFER_MUTATION (BatchNorm in train mode), GRADIENT_*, LOSS_OUTPUT, TOKEN
            raise BuildError(f"the model mutates '{spec.target}' during forward ({spec.kind.name}); "
                             "call model.eval() and keep forward free of in-place state updates")
    if not nodes:
        raise BuildError("the model returns no tensors (only constants): there is nothing to compile")
    out_node.args = (tuple(nodes),)
    return OutputPlan(nodes, names, leaves, mutations)


# --------------------------------------------------------------------------- float16 / bfloat16


def _to(graph: fx.Graph, node: fx.Node, dtype: torch.dtype) -> fx.Node:
    return graph.call_function(aten._to_copy.default, (node,), {"dtype": dtype})


def _val_dtype(node: fx.Node):
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def float32_body(gm: fx.GraphModule, values: dict[fx.Node, torch.Tensor], input_nodes: dict[fx.Node, int]) -> int:
    """Run a float16/bfloat16 model's body in float32: weights upcast (exactly), every op that makes
    a half-precision tensor from a dtype argument makes float32 instead, explicit casts to a half
    type keep their rounding (cast, then back to float32), inputs are cast up at entry and outputs
    rounded back at exit. Returns the number of nodes changed."""
    graph = gm.graph
    changed = 0
    out_node = next(n for n in graph.nodes if n.op == "output")
    for node, t in list(values.items()):
        if t.dtype in LOW_PRECISION:
            values[node] = t.float()
            changed += 1
    # Outputs: back to the model's dtype (bfloat16: rounded, kept in float32 for numpy).
    outs = list(out_node.args[0])
    for k, node in enumerate(outs):
        dt = _val_dtype(node)
        if dt in LOW_PRECISION:
            with graph.inserting_before(out_node):
                outs[k] = _to(graph, node, dt)
                if dt == torch.bfloat16:
                    outs[k] = _to(graph, outs[k], torch.float32)
            changed += 1
    out_node.args = (tuple(outs),)
    low_args = lambda a: torch.float32 if isinstance(a, torch.dtype) and a in LOW_PRECISION else a  # noqa: E731
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _CASTS and _val_dtype(node) in LOW_PRECISION:  # keep the rounding, go on in float32
            with graph.inserting_after(node):
                up = _to(graph, node, torch.float32)
            node.replace_all_uses_with(up, delete_user_cb=lambda u: u is not up)
            changed += 1
        elif node.target not in _CASTS:  # full(dtype=...), sum(dtype=...), _assert_tensor_metadata, ...
            args, kwargs = pytree.tree_map(low_args, node.args), pytree.tree_map(low_args, node.kwargs)
            if args != node.args or kwargs != node.kwargs:
                node.args, node.kwargs = args, kwargs
                changed += 1
    # Inputs: float16 stays float16 at the port (numpy has it); bfloat16 comes in as float32 and is
    # rounded to bfloat16 first, like torch.from_numpy(x).bfloat16() would.
    first = next((n for n in graph.nodes if n.op != "placeholder"), out_node)
    for node in input_nodes:
        dt = _val_dtype(node)
        if dt not in LOW_PRECISION:
            continue
        with graph.inserting_before(first):
            src = node if dt == torch.float16 else _to(graph, node, torch.bfloat16)
            up = _to(graph, src, torch.float32)
        node.replace_all_uses_with(up, delete_user_cb=lambda u: u is not up and u is not src)
        changed += 1
    return changed


# --------------------------------------------------------------------------- graph fixes


def decompose_empty_permuted(graph: fx.Graph) -> int:
    """aten.empty_permuted (torch.empty_like of a channels-last tensor) -> aten.empty: the compiled
    code has no strides, and the contents are undefined either way."""
    n = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == aten.empty_permuted.default:
            size = node.args[0]
            kw = {k: v for k, v in node.kwargs.items() if k in ("dtype", "device", "layout", "pin_memory")}
            with graph.inserting_before(node):
                new = graph.call_function(aten.empty.memory_format, (size,), kw)
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            n += 1
    return n


def empty_results_as_constants(graph: fx.Graph) -> int:
    """An op whose result has no elements (a batch of 0, a split of nothing) and which is not itself
    an output -> aten.zeros of its shape: there is nothing to compute, and torch-mlir divides by
    the zero dim lowering some views of such tensors (SIGFPE: the whole build process would die)."""
    n = 0
    for node in list(graph.nodes):
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor) or val.numel() != 0 \
                or not isinstance(node.target, torch._ops.OpOverload) or node.target == aten.zeros.default:
            continue
        if any(u.op == "output" for u in node.users):  # an output stays computed (not a constant of the bundle)
            continue
        if not all(isinstance(d, int) for d in val.shape):
            continue
        with graph.inserting_before(node):
            new = graph.call_function(aten.zeros.default, (list(val.shape),), {"dtype": val.dtype})
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        n += 1
    graph.eliminate_dead_code()
    return n


# Operands that take part in a pointwise op's type promotion (not `condition` or `mask`).
_PROMOTED_ARGS = {"self", "other", "input", "exponent", "tensor1", "tensor2", "end", "weight", "min", "max"}


def promote_int_operands(graph: fx.Graph) -> int:
    """A pointwise op with a float result and integer/bool tensor operands (`int_tensor ** 0.5`,
    `torch.clamp(int_tensor, 0.5, 2.5)`): eager computes in the result dtype; torch-mlir lowers some
    of these with integer arithmetic, or not at all. Cast those operands to the result dtype first."""
    n = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        out = _val_dtype(node)
        if out is None or not out.is_floating_point or torch.Tag.pointwise not in node.target.tags:
            continue
        schema = node.target._schema.arguments
        args = list(node.args)
        kwargs = dict(node.kwargs)
        for i, a in enumerate(schema):
            if a.name not in _PROMOTED_ARGS:
                continue
            holder, key = (args, i) if i < len(args) else (kwargs, a.name)
            if key not in (range(len(args)) if holder is args else kwargs):
                continue
            v = holder[key]
            dt = _val_dtype(v) if isinstance(v, fx.Node) else None
            if dt is None or dt.is_floating_point or dt.is_complex:
                continue
            with graph.inserting_before(node):
                holder[key] = _to(graph, v, out)
            n += 1
        node.args, node.kwargs = tuple(args), kwargs
    return n


# --------------------------------------------------------------------------- duplicate results


def merge_duplicate_results(module) -> list[int] | None:
    """MLIR's CSE turns two equal computations the model returns (`return x * 2, x * 2`) into one
    value returned twice, which bufferization's results-to-out-params cannot take. Return each
    value once: the result list maps every old result index to its new one (None: nothing merged)."""
    from torch_mlir import ir, passmanager
    from torch_mlir.dialects import func

    with module.context:
        passmanager.PassManager.parse("builtin.module(func.func(cse))").run(module.operation)
    fn = next(op for op in module.body.operations
              if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == "forward")
    ret = fn.regions[0].blocks[0].operations[len(fn.regions[0].blocks[0].operations) - 1]
    values = list(ret.operands)
    unique: list = []
    mapping: list[int] = []
    for v in values:
        j = next((k for k, u in enumerate(unique) if u == v and not isinstance(u.owner, ir.Block)), None)
        if j is None:
            j = len(unique)
            unique.append(v)
        mapping.append(j)
    if len(unique) == len(values):
        return None
    with module.context, ir.Location.unknown():
        with ir.InsertionPoint(ret):
            func.ReturnOp(unique)
        ret.erase()
        ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
        fn.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(ftype.inputs, [v.type for v in unique]))
    return mapping


def remap_outputs(lifted, mapping: list[int]) -> None:
    """Apply merge_duplicate_results' mapping to a LiftedProgram's outputs, structure and mutations."""
    kept = {}
    for old, new in enumerate(mapping):
        kept.setdefault(new, lifted.outputs[old])
    lifted.outputs = [kept[k] for k in range(len(kept))]

    def walk(node):
        if isinstance(node, int):
            return mapping[node]
        if isinstance(node, dict) and "items" in node:
            return {**node, "items": [walk(n) for n in node["items"]]}
        return node

    lifted.output_structure = walk(lifted.output_structure)
    lifted.input_mutations = [{**m, "output": mapping[m["output"]]} for m in lifted.input_mutations]

