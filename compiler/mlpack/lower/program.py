"""The planned program: what lowering hands to a target (docs/compiler-internals.md).

    modules = import_modules(lifted, copies, dump)                 # torch-mlir, linalg on tensors
    planned = plan_program(module, lifted, target_options, dump, stage)   # one per target
    code = target.compile(planned, dump, stage)
    weights = stored_weights(lifted, planned.prepack)              # as the bundle stores them

Lowering knows no target. Where targets differ (which kernels take which ops, which weight
layouts the bundle may store, which loop rewrites pay), the target says so in a
`LoweringOptions`, and lowering obeys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import BuildError
from .bufferize import FailingCheckError, bufferize, forward_func, run_pipeline, set_all_arg_attrs
from .memory_plan import MemoryPlan

_GENERALIZE = "builtin.module(linalg-generalize-named-ops)"


@dataclass(frozen=True)
class LoweringOptions:
    """What a target asks of lowering (its `lowering()`).

    label: names this lowering's stages and IR dumps apart from another target's in the same build:
        "" -> stages "optimize", "plan", dumps "bufferized", "kernels", "planned";
        "cuda" -> "optimize (cuda)", "plan (cuda)", "cuda-bufferized", ...
    kernel_scratch: None: the kernel set of the C microkernels (every conv kind, pooling, matmul
        views), each call with its packed-B scratch; else (batch, M, N, K) -> floats of scratch per
        GEMM call, and conv / depthwise / dense matmul only (the CUDA templates' set and split-K).
    weight_layouts: the stored weight layouts (kernel_calls.WEIGHT_LAYOUTS) the bundle may use: those
        every target of the bundle reads. Kernel substitution knows two groups: "panels" (packed B
        panels of Linear weights), and the conv layouts, taken only if all of them are allowed.
    winograd: 3x3 stride-1 convs as Winograd (needs the conv layouts).
    fuse_elementwise: fuse chains of elementwise loops (elementwise_fusion.py).
    noalias_arguments: mark every argument of @forward `llvm.noalias` (each is a distinct buffer).
    generalize: named linalg ops left after kernel substitution -> linalg.generic.
    collapse_loop_dims: merge adjacent loop dims laid out contiguously (collapse_dims.py), after
        the plan so the planner never sees the views.
    """

    label: str = ""
    kernel_scratch: Callable[[int, int, int, int], int] | None = None
    weight_layouts: frozenset = frozenset()
    winograd: bool = False
    fuse_elementwise: bool = False
    noalias_arguments: bool = False
    generalize: bool = False
    collapse_loop_dims: bool = False

    def stage(self, name: str) -> str:
        return f"{name} ({self.label})" if self.label else name

    def dump_name(self, name: str) -> str:
        return f"{self.label}-{name}" if self.label else name


@dataclass
class PlannedProgram:
    """One static program, lowered and planned: the contract between lower/ and targets/.

    module: the MLIR module, rewritten in place by lowering (and then by the target that compiles
        it, so each target gets its own). @forward works on memrefs: its arguments are the entries
        of `call` in order, results are out-parameters, every intermediate is a `memref.view` at a
        fixed offset of the last argument, the arena. Heavy ops are `func.call`s to kernels
        (`mlrt_matmul_f32`, `mlrt_conv2d_f32`, ...: the ABI of targets/cpu_kernels/mlrt_kernels.h,
        the C microkernels both CPU targets (x86_64, aarch64) link, which the CUDA templates
        implement too); the rest is linalg on memrefs.
    func: that @forward.
    memory_plan: the arena: each buffer's size, live range and offset (the manifest's memory_plan).
    kernels: kernel name -> call sites.
    prepack: argument index -> Prepack: the weights the bundle stores in a kernel's layout.
    call: the manifest's `call`: what each argument of @forward is ("input:0", "weight:3",
        "output:0", "arena").
    arg_shapes: the static shape of each argument.
    """

    module: Any
    func: Any
    memory_plan: MemoryPlan
    kernels: dict
    prepack: dict
    call: list
    arg_shapes: list

    @property
    def num_args(self) -> int:
        return len(self.call)


def hooks(dump, stage):
    """A stage's `dump(name, ir)` and `stage(name)` callbacks, or no-ops for None. `ir` is text or an
    MLIR module, printed only where it is dumped (printing a deep model's module takes ~0.1 s)."""
    from contextlib import nullcontext

    return dump or (lambda name, text: None), stage or (lambda name: nullcontext())


def import_modules(lifted, copies: int, dump=None) -> list:
    """`copies` imports of `lifted` (linalg on tensors), one per target: lowering rewrites a module
    in place. A value returned twice (equal computations merged by CSE) becomes one output: the
    lifted program's outputs are remapped to match."""
    from ..frontend import model_io
    from .importer import import_program

    dump, _ = hooks(dump, None)
    module = import_program(lifted)
    merged = model_io.merge_duplicate_results(module)
    if merged is not None:
        model_io.remap_outputs(lifted, merged)
    dump("linalg", module)
    modules = [module]
    for _ in range(copies - 1):
        modules.append(import_program(lifted))
        if model_io.merge_duplicate_results(modules[-1]) != merged:
            raise BuildError("internal: two imports of one program return different results")
    return modules


def plan_program(module, lifted, options: LoweringOptions, dump=None, stage=None) -> PlannedProgram:
    """Bufferize, substitute kernels, fuse, plan the arena: an imported module -> a PlannedProgram."""
    from torch_mlir import ir

    from .collapse_dims import collapse_loop_dims
    from .elementwise_fusion import fuse_elementwise_chains
    from .kernel_calls import WEIGHT_LAYOUTS, replace_with_kernel_calls
    from .memory_plan import assign_arena

    dump, stage = hooks(dump, stage)
    conv_layouts = set(WEIGHT_LAYOUTS) - {"panels"}
    func_op = forward_func(module)
    with stage(options.stage("optimize")):
        try:
            bufferize(module, func_op)
        except FailingCheckError as e:
            located = _located(lifted)
            if located is None:
                raise
            raise located from e
        dump(options.dump_name("bufferized"), module)
        with module.context, ir.Location.unknown():
            kernels, prepack = replace_with_kernel_calls(
                module, func_op, scratch=options.kernel_scratch, prepack="panels" in options.weight_layouts,
                winograd=options.winograd, cpu_only=conv_layouts <= options.weight_layouts)
            if options.fuse_elementwise:
                fuse_elementwise_chains(func_op)
        dump(options.dump_name("kernels"), module)
    with stage(options.stage("plan")):
        with module.context, ir.Location.unknown():
            memory_plan = assign_arena(func_op)
            args = func_op.regions[0].blocks[0].arguments
            arg_shapes = [tuple(ir.MemRefType(a.type).shape) for a in args]
            if options.noalias_arguments:  # inputs, weights, outputs and the arena
                set_all_arg_attrs(func_op, {"llvm.noalias": ir.UnitAttr.get()})
        if options.generalize:
            run_pipeline(module, _GENERALIZE, "generalizing linalg ops")
        dump(options.dump_name("planned"), module)
        if options.collapse_loop_dims:
            with module.context, ir.Location.unknown():
                collapse_loop_dims(func_op)
    call = [f"{kind}:{i}" for kind, i in lifted.call_args]
    call += [f"output:{i}" for i in range(len(lifted.outputs))] + ["arena"]
    if len(call) != len(arg_shapes):
        raise BuildError(f"internal: entry takes {len(arg_shapes)} args, the call list has {len(call)}")
    return PlannedProgram(module, func_op, memory_plan, dict(kernels), prepack, call, arg_shapes)


def _located(lifted):
    """bufferize's FailingCheckError again, from the program traced with source lines, or None.
    The one-trace export records none (frontend.export_and_lift), so the MLIR ops carry no file
    locations; an error that names one imports the program traced with them."""
    if lifted.retrace is None:
        return None
    from ..frontend.export import lift
    from .importer import import_program

    ep = lifted.source_program()
    if not any(n.meta.get("stack_trace") for n in ep.graph.nodes):
        return None
    try:
        module = import_program(lift(ep, decomposed=True))
        bufferize(module, forward_func(module))
    except FailingCheckError as e:
        return e
    except Exception:  # noqa: BLE001 - the first error stands
        return None
    return None


def stored_weights(lifted, prepack: dict) -> list:
    """The lifted program's weights as the bundle stores them: (name, array), each weight in
    `prepack` transformed once here into its kernel's layout (and named for it)."""
    from .kernel_calls import WEIGHT_LAYOUTS

    weights = list(lifted.weights)
    for arg, pre in prepack.items():
        kind, i = lifted.call_args[arg]
        if kind != "weight" or weights[i][1].shape != pre.shape:
            raise BuildError(f"internal: argument {arg} marked for packing is not a {pre.shape} weight")
        what, transform = WEIGHT_LAYOUTS[pre.layout]
        if pre.groups == 1:
            weights[i] = (f"{weights[i][0]} ({what})", transform(weights[i][1]))
        else:
            weights[i] = (f"{weights[i][0]} ({what} per group)", transform(weights[i][1], pre.groups))
    return weights
