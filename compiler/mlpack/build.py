"""The build driver: model -> frontend -> import -> codegen (+ memory plan) -> bundle.

Each stage is timed and reported through `progress(stage, seconds)` so the CLI can show it.
"""

from __future__ import annotations

import importlib.metadata
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import BuildError, MissingCompilerDependencies

TARGETS = ("cpu", "cuda")
_ALWAYS_REPORTED = ("batchnorm_folded", "constants_folded", "var_mean_in_float32")  # other passes: when they did something


@dataclass
class BuildResult:
    path: Path
    bundle_bytes: int
    manifest: dict
    timings: dict[str, float] = field(default_factory=dict)
    cuda_source: str | None = None  # the generated CUDA C++ of a cuda target (for tests and debugging)

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
    """
    _require_compiler_deps()
    import numpy as np
    import torch

    from . import bundle as bundle_fmt
    from . import frontend, model_io
    from .codegen_cpu import DEFAULT_CPU, compile_cpu
    from .codegen_cuda import DEFAULT_SASS, DEFAULT_SM, compile_cuda
    from .importer import import_program

    targets = [t.strip() for t in target.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise BuildError(f"unknown target {target!r}: this build supports {', '.join(TARGETS)}")
    cpu = cpu or DEFAULT_CPU
    timings: dict[str, float] = {}
    report = progress or (lambda stage, secs: None)

    @contextmanager
    def stage(name: str):
        t0 = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - t0
        report(name, timings[name])

    dump_dir = Path(dump_ir) if dump_ir else None
    if dump_dir:
        dump_dir.mkdir(parents=True, exist_ok=True)

    dumped = 0  # numbered per build: a second build into the same folder replaces the first's files

    def dump(name: str, text: str) -> None:
        nonlocal dumped
        if dump_dir:
            (dump_dir / f"{dumped:02d}-{name}.mlir").write_text(text)
            dumped += 1

    examples = None
    if example_inputs is not None:
        examples = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
                    for x in example_inputs]
    elif input_shapes:
        examples = [frontend.example_from_shape(*frontend.parse_input_shape(s)) for s in input_shapes]

    with stage("export"):
        if isinstance(model, (str, Path)):
            ep = frontend.load_model(model, examples)
        elif isinstance(model, torch.export.ExportedProgram):
            ep = model if examples is None else frontend.export_module(model.module(), examples)
        elif isinstance(model, torch.nn.Module):
            if examples is None:
                raise BuildError("building an nn.Module needs example_inputs (or input_shapes)")
            ep = frontend.export_module(model, examples)
        else:
            raise BuildError(f"cannot build a {type(model).__name__}: pass an nn.Module, ExportedProgram or a path")
        lifted = frontend.lift(ep)
    with stage("import"):
        module = import_program(lifted)
        # A value returned twice (equal computations merged by CSE) becomes one output.
        merged = model_io.merge_duplicate_results(module)
        if merged is not None:
            model_io.remap_outputs(lifted, merged)
        dump("linalg", str(module))
        # Each codegen rewrites its module in place: the CUDA path gets its own copy.
        cuda_module = module
        if "cuda" in targets and "cpu" in targets:
            cuda_module = import_program(lifted)
            if model_io.merge_duplicate_results(cuda_module) != merged:
                raise BuildError("internal: the CPU and CUDA imports return different results")
    # Winograd, small-map and 3-D conv weights are CPU-only layouts: a bundle whose weights the
    # CUDA target shares keeps those convs on the plain layout.
    cpu_only = "cuda" not in targets
    art = compile_cpu(module, cpu, dump, stage, winograd=winograd, cpu_only=cpu_only) if "cpu" in targets else None
    cuda = None
    if "cuda" in targets:
        cuda = compile_cuda(cuda_module, precision, cuda_arch or DEFAULT_SM, dump, stage, prepack=art is not None,
                            sass=DEFAULT_SASS if cuda_sass is None else tuple(cuda_sass))
        if art is not None and art.prepack != cuda.prepack:
            raise BuildError("internal: the CPU and CUDA targets disagree on which weights are pre-packed")
    main = art if art is not None else cuda
    with stage("write"):
        from .kernel_calls import WEIGHT_LAYOUTS

        weights = list(lifted.weights)
        for arg, pre in main.prepack.items():  # stored in a kernel's layout, transformed once here
            kind, i = lifted.call_args[arg]
            if kind != "weight" or weights[i][1].shape != pre.shape:
                raise BuildError(f"internal: argument {arg} marked for packing is not a {pre.shape} weight")
            what, transform = WEIGHT_LAYOUTS[pre.layout]
            if pre.groups == 1:
                weights[i] = (f"{weights[i][0]} ({what})", transform(weights[i][1]))
            else:
                weights[i] = (f"{weights[i][0]} ({what} per group)", transform(weights[i][1], pre.groups))
        weights_blob, weight_entries = bundle_fmt.pack_weights(weights)
        call = [f"{kind}:{i}" for kind, i in lifted.call_args]
        call += [f"output:{i}" for i in range(len(lifted.outputs))] + ["arena"]
        for a in (art, cuda):
            if a is not None and len(call) != a.num_args:
                raise BuildError(f"internal: entry takes {a.num_args} args, the call list has {len(call)}")
        manifest = {
            "format_version": bundle_fmt.FORMAT_VERSION,
            "producer": {"mlpack": _version("mlpack-mlrt"), "torch": torch.__version__,
                         "torch_mlir": _version("torch-mlir"), "llvmlite": _version("llvmlite")},
            "inputs": [s.to_json() for s in lifted.inputs],
            "outputs": [s.to_json() for s in lifted.outputs],
            "output_structure": lifted.output_structure,
            **({"input_mutations": lifted.input_mutations} if lifted.input_mutations else {}),
            "weights": weight_entries,
            "call": call,
            "memory_plan": main.memory_plan.to_json(),
            "graph_passes": {k: v for k, v in lifted.graph_passes.items() if v or k in _ALWAYS_REPORTED},
            "targets": {},
        }
        sections = []
        if art is not None:
            manifest["targets"]["cpu"] = {"arch": "x86_64", "cpu": art.cpu, "features": art.features,
                                          "section": "cpu.so", "entry": "mlrt_entry", "host_abi": 1,
                                          "kernels": art.kernels}
            sections.append(("cpu.so", art.shared_object, bundle_fmt.PAGE))
        if cuda is not None:
            manifest["targets"]["cuda"] = cuda.manifest()
            sections += cuda.sections()
        sections.append(("weights", weights_blob, bundle_fmt.PAGE))
        size = bundle_fmt.write_bundle(output_path, manifest, sections)
    return BuildResult(Path(output_path), size, manifest, timings, cuda.source if cuda else None)
