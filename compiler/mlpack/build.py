"""The build driver: model -> frontend/ (export, lift) -> lower/ (import, plan: a planned program
per target) -> targets/ (code) -> bundle/ (one file).

Each stage is timed and reported through `progress(stage, seconds)` so the CLI can show it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import BuildError, MissingCompilerDependencies

_ALWAYS_REPORTED = ("batchnorm_folded", "constants_folded", "var_mean_in_float32")  # other passes: when they did something


@dataclass
class BuildResult:
    path: Path
    bundle_bytes: int
    manifest: dict
    timings: dict[str, float] = field(default_factory=dict)
    cuda_source: str | None = None  # the generated CUDA C++ of a cuda target (for tests and debugging)
    cuda_sources: list[str] | None = None  # dynamic bundles: each program's, in `programs` order

    @property
    def memory_plan(self) -> dict:
        return self.manifest["memory_plan"]


def _require_compiler_deps() -> None:
    for mod in ("torch", "torch_mlir", "llvmlite"):
        try:
            __import__(mod)
        except ImportError as e:
            raise MissingCompilerDependencies(mod) from e


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _gc_frozen(fn):
    """Runs `fn` with every object that exists when it starts out of the cyclic GC's reach
    (gc.freeze): a build allocates enough to trigger full collections, and each one walked all of
    torch, torch-mlir and the model (~0.3 s each in timm_xcit's build). Not where the host process
    froze objects of its own: unfreezing would release those too."""

    @functools.wraps(fn)
    def frozen(*args, **kwargs):
        import gc

        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            return fn(*args, **kwargs)
        finally:
            if freeze:
                gc.unfreeze()

    return frozen


@_gc_frozen
def build(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    output_path: str | Path = "model.bundle",
    target: str = "cpu",
    *,
    cpu: str | None = None,
    precision: str = "fp32",
    cuda_arch: int | None = None,
    cuda_sass: Sequence[int] | None = None,
    input_shapes: Sequence[str] | None = None,
    progress: Callable[[str, float], None] | None = None,
    dump_ir: str | Path | None = None,
    winograd: bool = True,
    dynamic: Any = None,
    buckets: Any = None,
) -> BuildResult:
    """Compile `model` (nn.Module, ExportedProgram, or a path to .pt2/.pt) into one bundle file.

    example_inputs: tensors/arrays fixing input shapes and dtypes (needed unless the model file
    records them, as a .pt2 does). input_shapes: alternative, strings like "1x3x224x224:float32".
    target: "cpu", "cuda" or "cpu,cuda". precision (cuda): operand precision of matmul/conv,
    fp32 | tf32 | fp16 | bf16. cuda_arch: minimum compute capability as major*10+minor (default 80).
    cuda_sass: architectures to ship machine code for besides the PTX (default 80 and 90; () for none).
    winograd (cpu): run 3x3 stride-1 convs with >= 16 channels as Winograd F(4x4,3x3) (maps with
    enough tiles; weights stored transformed, 4x the bytes) or F(2x2,3x3) (16/9 the bytes). Off, or
    with a CUDA target, they use im2col.
    dynamic: bounded dynamic dims: ["x:0=1..32"], {"x": {0: (1, 32)}} or {"x": {0: Dim("batch", max=32)}}
    (a .pt2 exported with dynamic_shapes brings its own). buckets: the sizes that get their own static
    program: ["x:0=1,8,32"] or {"batch": [1, 8, 32]} (default: powers of two and both bounds).
    """
    _require_compiler_deps()
    import numpy as np
    import torch

    from .frontend import dynamic_dims
    from .frontend import export as frontend
    from .targets import TargetOptions
    from .targets import create as create_targets

    targets = create_targets(target, TargetOptions(cpu, winograd, precision, cuda_arch, cuda_sass))
    decls = dynamic_dims.declarations(dynamic)
    timings: dict[str, float] = {}
    report = progress or (lambda stage, secs: None)

    @contextmanager
    def stage(name: str):
        t0 = time.perf_counter()
        yield
        secs = time.perf_counter() - t0
        timings[name] = timings.get(name, 0.0) + secs  # a dynamic build runs stages once per program
        report(name, secs)

    dump_dir = Path(dump_ir) if dump_ir else None
    if dump_dir:
        dump_dir.mkdir(parents=True, exist_ok=True)

    dumped = 0  # numbered per build: a second build into the same folder replaces the first's files

    def dump(name: str, ir) -> None:  # ir: text, or an MLIR module printed only here
        nonlocal dumped
        if dump_dir:
            (dump_dir / f"{dumped:02d}-{name}.mlir").write_text(str(ir))
            dumped += 1

    examples = None
    if example_inputs is not None:
        examples = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
                    for x in example_inputs]
    elif input_shapes:
        examples = [frontend.example_from_shape(*frontend.parse_input_shape(s)) for s in input_shapes]

    opts = _Options(targets, dump, stage)
    with stage("export"):
        if isinstance(model, (str, Path)):
            source = frontend.load_source(model, examples)
        elif isinstance(model, (torch.export.ExportedProgram, torch.nn.Module)):
            source = model
        else:
            raise BuildError(f"cannot build a {type(model).__name__}: pass an nn.Module, ExportedProgram or a path")
        is_ep = isinstance(source, torch.export.ExportedProgram)
        if decls:
            if examples is None and is_ep:
                examples = frontend.example_inputs_of(source)
            if examples is None:
                raise BuildError("declaring dynamic dims needs example inputs (or --input-shape) to export with")
            names = frontend.input_names(source, len(examples))
            dyn_ep, dim_names = dynamic_dims.export_dynamic(source.module() if is_ep else source, examples, names,
                                                            decls)
        elif is_ep and examples is None and frontend.has_dynamic_inputs(source):
            dyn_ep, dim_names, names = source, {}, frontend.input_names(source, 0)
        else:
            dyn_ep = None
            if is_ep and examples is None:
                lifted = frontend.lift(source)
            elif is_ep:
                lifted = frontend.export_and_lift(source.module(), examples)
            elif examples is None:
                raise BuildError("building an nn.Module needs example_inputs (or input_shapes)")
            else:
                lifted = frontend.export_and_lift(source, examples)  # export and decompose: one trace
    if dyn_ep is None:
        if buckets:
            raise BuildError("--buckets needs dynamic dims (--dynamic, or a .pt2 exported with dynamic_shapes)")
        program = _compile_program(lifted, opts)
        return _write_static(lifted, program, opts, output_path, timings)
    return _build_dynamic(dyn_ep, dim_names, names, examples, buckets, opts, output_path, timings)


@dataclass
class _Options:
    targets: list  # targets.Target, in the bundle's order
    dump: Callable
    stage: Callable


@dataclass
class _Program:
    """One compiled static program: its code per target, weights as stored and entry arguments."""

    codes: dict  # target name -> its targets.TargetCode
    weights: list  # (name, array) in the stored layout, or (name, array, dtype) where narrowed
    call: list[str]


def _compile_program(lifted, opts: _Options) -> _Program:
    from .lower import program as lower
    from .targets import weight_layouts

    with opts.stage("import"):
        modules = lower.import_modules(lifted, len(opts.targets), opts.dump)
    layouts = weight_layouts(opts.targets)
    codes, first = {}, None
    for target, module in zip(opts.targets, modules):
        planned = lower.plan_program(module, lifted, target.lowering(layouts), opts.dump, opts.stage)
        if first is None:
            first = planned  # the bundle stores the weights as the first target's lowering laid them out
        elif planned.prepack != first.prepack:
            raise BuildError("internal: the targets disagree on which weights are pre-packed")
        codes[target.name] = target.compile(planned, opts.dump, opts.stage)
    weights = lower.stored_weights(lifted, first.prepack)
    for code in codes.values():  # a target reading some weights in another dtype (CUDA fp16/bf16)
        if hasattr(code, "stored_weights"):
            weights = code.stored_weights(weights)
    return _Program(codes, weights, first.call)


def _manifest_head(lifted, version: int) -> dict:
    import torch

    return {
        "format_version": version,
        "producer": {"mlpack": _version("mlpack-mlrt"), "torch": torch.__version__,
                     "torch_mlir": _version("torch-mlir"), "llvmlite": _version("llvmlite")},
        "inputs": [s.to_json() for s in lifted.inputs],
        "outputs": [s.to_json() for s in lifted.outputs],
        "output_structure": lifted.output_structure,
        **({"input_mutations": lifted.input_mutations} if lifted.input_mutations else {}),
        "graph_passes": {k: v for k, v in lifted.graph_passes.items() if v or k in _ALWAYS_REPORTED},
    }


def _write_static(lifted, program: _Program, opts: _Options, output_path, timings) -> BuildResult:
    from . import bundle as bundle_fmt

    main = next(iter(program.codes.values()))  # the memory plan: the first target's
    with opts.stage("write"):
        weights_blob, weight_entries = bundle_fmt.pack_weights(program.weights)
        version = bundle_fmt.format_version_for(bundle_fmt.STATIC_FORMAT_VERSION, weight_entries)
        manifest = {**_manifest_head(lifted, version), "weights": weight_entries,
                    "weights_sha256": bundle_fmt.weight_chunk_digests(weights_blob),
                    "weights_xxh3": bundle_fmt.weight_chunk_checksums(weights_blob), "call": program.call,
                    "memory_plan": main.memory_plan.to_json(), "targets": {}}
        sections = []
        for name, code in program.codes.items():
            manifest["targets"][name] = code.manifest()
            sections += code.sections()
        sections.append(("weights", weights_blob, bundle_fmt.PAGE))
        size = bundle_fmt.write_bundle(output_path, manifest, sections)
    cuda = program.codes.get("cuda")
    return BuildResult(Path(output_path), size, manifest, timings, cuda.source if cuda else None)


def _build_dynamic(dyn_ep, dim_names, names, examples, buckets, opts: _Options, output_path, timings) -> BuildResult:
    """One static program per bucket combination, sharing one weights section (format version 2)."""
    import hashlib
    import itertools

    from . import bundle as bundle_fmt
    from .frontend import dynamic_dims
    from .frontend import export as frontend

    with opts.stage("export"):
        decomposed = dyn_ep.run_decompositions()
        syms = dynamic_dims.symbols(decomposed, names, dim_names)
        dynamic_dims.choose_buckets(syms, dynamic_dims.parse_buckets(buckets), names)
        _check_section_count(syms, opts)
        for s in syms:
            s.not_padded = dynamic_dims.padding_obstacle(decomposed, s)
        if examples is None:
            examples = _examples_from_signature(decomposed, syms)

    programs, codes, weight_index, blobs = [], [], {}, []  # codes: per program, target name -> code
    shapes_at: dict[tuple, list[list[int]]] = {}
    first = None
    for combo in itertools.product(*[s.buckets for s in syms]):
        sizes = dict(zip((s.name for s in syms), combo))
        ex = list(examples)
        for s, size in zip(syms, combo):
            for i, dim in s.uses:
                ex[i] = dynamic_dims.resize(ex[i], dim, size)
        with opts.stage("export"):
            lifted = frontend.export_and_lift(dyn_ep.module(), ex)
        program = _compile_program(lifted, opts)
        if first is None:
            first = lifted
        elif ([s.dtype for s in lifted.inputs], [s.dtype for s in lifted.outputs], lifted.output_structure) != \
                ([s.dtype for s in first.inputs], [s.dtype for s in first.outputs], first.output_structure):
            raise BuildError(f"the model's outputs differ in number, dtype or structure between sizes {sizes} and "
                             "the first bucket: a dynamic bundle needs one signature")
        call = []
        for arg in program.call:  # weights stored once across programs, keyed by content (folded
            kind, _, i = arg.partition(":")  # constants are numbered per program)
            if kind != "weight":
                call.append(arg)
                continue
            stored = program.weights[int(i)]
            arr = stored[1]
            key = (bundle_fmt.stored_dtype(stored), arr.shape, hashlib.sha256(arr.tobytes()).digest())
            if key not in weight_index:
                weight_index[key] = len(blobs)
                blobs.append(stored)
            call.append(f"weight:{weight_index[key]}")
        out_shapes = [list(o.shape) for o in lifted.outputs]
        shapes_at[combo] = out_shapes
        n = len(programs)
        main = next(iter(program.codes.values()))  # arena_bytes, kernels and memory_plan: the first target's
        entry = {"sizes": sizes}
        for code in program.codes.values():  # each target's code of this program: its own sections
            entry.update(code.program_manifest(n))
        entry.update({"call": call, "output_shapes": out_shapes, "arena_bytes": main.memory_plan.arena_bytes,
                      "kernels": main.kernels, "memory_plan": main.memory_plan.to_json()})
        programs.append(entry)
        codes.append(program.codes)

    with opts.stage("write"):
        dims = []
        for k, s in enumerate(syms):
            rules = None
            if s.not_padded is None:  # output dims along this symbol, the others at their largest bucket
                at = {c[k]: shapes_at[c] for c in shapes_at if all(c[j] == o.buckets[-1]
                                                                    for j, o in enumerate(syms) if j != k)}
                rules = dynamic_dims.affine_outputs(at)
            dims.append(s.to_json(rules))
        manifest = _manifest_head(first, bundle_fmt.DYNAMIC_FORMAT_VERSION)
        for s in syms:
            for i, dim in s.uses:
                manifest["inputs"][i]["shape"][dim] = -1
                manifest["inputs"][i].setdefault("symbols", [None] * len(first.inputs[i].shape))[dim] = s.name
        for o, out in enumerate(manifest["outputs"]):
            for d in range(len(out["shape"])):
                if len({sh[o][d] for sh in shapes_at.values()}) == 1:
                    continue
                out["shape"][d] = -1
                for k, s in enumerate(syms):  # a dim that is one symbol's size in every program
                    if all(sh[o][d] == combo[k] for combo, sh in shapes_at.items()):
                        out.setdefault("symbols", [None] * len(out["shape"]))[d] = s.name
                        break
        weights_blob, weight_entries = bundle_fmt.pack_weights(blobs)
        manifest["format_version"] = bundle_fmt.format_version_for(manifest["format_version"], weight_entries)
        last = programs[-1]
        manifest.update({"weights": weight_entries, "weights_sha256": bundle_fmt.weight_chunk_digests(weights_blob),
                         "weights_xxh3": bundle_fmt.weight_chunk_checksums(weights_blob),
                         "dynamic_dims": dims,
                         "programs": programs, "call": last["call"], "memory_plan": last["memory_plan"],
                         "targets": {}})
        sections = []
        for target in opts.targets:
            manifest["targets"][target.name] = target.dynamic_manifest([c[target.name] for c in codes],
                                                                       [p["sizes"] for p in programs])
            sections += [s for n, c in enumerate(codes) for s in c[target.name].program_sections(n)]
        sections.append(("weights", weights_blob, bundle_fmt.PAGE))
        size = bundle_fmt.write_bundle(output_path, manifest, sections)
    cuda_sources = [c["cuda"].source for c in codes if "cuda" in c]
    return BuildResult(Path(output_path), size, manifest, timings, cuda_sources[-1] if cuda_sources else None,
                       cuda_sources or None)


def _check_section_count(syms, opts: _Options) -> None:
    """Each program has a section per target (and per cubin): refuse before compiling what cannot be written."""
    from .frontend import dynamic_dims

    count = 1
    for s in syms:
        count *= len(s.buckets)
    per_program = sum(t.sections_per_program() for t in opts.targets)
    limit = dynamic_dims.MAX_PROGRAMS  # the 64 sections a bundle holds, less manifest and weights
    if count * per_program > limit:
        names = ",".join(t.name for t in opts.targets)
        raise BuildError(f"{count} bucket combination(s) x {per_program} section(s) each (targets {names}, cubins "
                         f"included) is more than the {limit} code sections a bundle holds: choose fewer sizes with "
                         "--buckets, or ship fewer cubins (--cuda-sass)")


def _examples_from_signature(ep, syms) -> list:
    """Example inputs of a .pt2 without recorded ones: its input dtypes at the smallest buckets."""
    from torch.export.graph_signature import InputKind

    from .frontend import export as frontend

    at = {s.expr: s.buckets[0] for s in syms}
    out = []
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    for spec, node in zip(ep.graph_signature.input_specs, placeholders):
        if spec.kind != InputKind.USER_INPUT:
            continue
        val = node.meta["val"]
        shape = tuple(at[d.node.expr] if not isinstance(d, int) else d for d in val.shape)
        out.append(frontend.example_from_shape(shape, val.dtype))
    return out
