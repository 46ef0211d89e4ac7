"""Targets: each folder turns a planned program (lower/program.py) into the code sections of a
bundle, behind the one interface below. No target imports another; a new target is a new folder
with a class implementing `Target`, named in `_REGISTRY` (docs/compiler-internals.md).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..errors import BuildError
from ..lower.memory_plan import MemoryPlan
from ..lower.program import LoweringOptions, PlannedProgram

# --target name -> "folder:class". The order is the bundle's: the first target of a bundle gives
# the manifest its memory plan, and the sections follow this order.
_REGISTRY = {"cpu": "x86_64:X86_64", "cuda": "cuda:Cuda"}
NAMES = tuple(_REGISTRY)
# The CPU code generators: each `--cpu` level goes to the folder whose class lists it (LEVELS);
# no level given: the registry's "cpu" folder at its default level.
_CPU_FOLDERS = ("x86_64:X86_64", "aarch64:Aarch64")


@dataclass(frozen=True)
class TargetOptions:
    """The build's options for its targets; each target reads its own."""

    cpu: str | None = None  # cpu: level(s), comma-separated ("x86-64-v3", "neoverse-n1", "x86-64-v3,aarch64")
    winograd: bool = True  # x86_64: 3x3 stride-1 convs as Winograd
    precision: str = "fp32"  # cuda: operand precision of matmul / conv
    cuda_arch: int | None = None  # cuda: minimum compute capability (default 80)
    cuda_sass: Sequence[int] | None = None  # cuda: cubins to ship besides the PTX (default 80, 90)
    bundle_targets: tuple = ()  # the --target names of the bundle (set by create): who shares the weights


class TargetCode(Protocol):
    """One program compiled for one target: what the bundle stores of it."""

    memory_plan: MemoryPlan  # the arena this code was compiled against
    kernels: dict  # kernel name -> count, as the manifest reports it

    def manifest(self) -> dict:
        """A static bundle's manifest["targets"][name]."""

    def sections(self) -> list[tuple[str, bytes, int]]:
        """A static bundle's sections of this target: (name, bytes, alignment)."""

    # Optional: stored_weights(weights) -> weights, the program's (name, array) weights as this
    # code reads them, where it reads some in another dtype: such entries become (name, array,
    # manifest dtype) (the CUDA target's fp16/bf16 weights; only when no other target shares them).

    def program_manifest(self, n: int) -> dict:
        """A dynamic bundle: the keys this target adds to manifest["programs"][n]."""

    def program_sections(self, n: int) -> list[tuple[str, bytes, int]]:
        """A dynamic bundle: program n's sections of this target."""


class Target(Protocol):
    """A code generator. Built once per build with the build's TargetOptions."""

    name: str  # the --target name, and the key under the manifest's "targets"
    weight_layouts: frozenset  # stored weight layouts (lower/kernel_calls.WEIGHT_LAYOUTS) its code reads
    packs_weights: bool  # whether it asks for them (else the plain layout, unless another target asks)

    def lowering(self, weight_layouts: frozenset) -> LoweringOptions:
        """What this target needs of lowering, given the weight layouts the bundle allows; checks
        this target's options first."""

    def compile(self, planned: PlannedProgram, dump: Callable, stage: Callable) -> TargetCode:
        """A planned program (lowered with this target's options) -> its code."""

    def sections_per_program(self) -> int:
        """How many sections each program of a dynamic bundle takes."""

    def dynamic_manifest(self, codes: list[TargetCode], sizes: list[dict]) -> dict:
        """A dynamic bundle's manifest["targets"][name], from every program's code (sizes: each
        program's bucket sizes, for errors)."""


def _load(entry: str):
    folder, cls = entry.split(":")
    return getattr(importlib.import_module(f"{__name__}.{folder}"), cls)


def cpu_levels() -> dict[str, tuple[str, ...]]:
    """Every --cpu level, by architecture ({"x86_64": ("x86-64", ...), "aarch64": (...)})."""
    return {cls.arch: cls.LEVELS for cls in map(_load, _CPU_FOLDERS)}


def _cpu_target(options: TargetOptions):
    """The CPU target for --cpu: one level's target, or CpuVariants over several (each level's
    code in one bundle; the runtime runs the first its CPU can)."""
    levels = [c.strip() for c in (options.cpu or "").split(",") if c.strip()]
    if not levels:
        return _load(_REGISTRY["cpu"])(options)
    if len(set(levels)) != len(levels):
        raise BuildError(f"--cpu {options.cpu!r} names a level twice")
    classes = list(map(_load, _CPU_FOLDERS))
    variants = []
    for level in levels:
        cls = next((c for c in classes if level in c.LEVELS), None)
        if cls is None:
            known = "; ".join(f"{c.arch}: {', '.join(c.LEVELS)}" for c in classes)
            raise BuildError(f"unknown --cpu level {level!r} ({known})")
        variants.append(cls(dataclasses.replace(options, cpu=level)))
    if len(variants) == 1:
        return variants[0]
    from .cpu_variants import CpuVariants

    return CpuVariants(variants)


def create(spec: str, options: TargetOptions) -> list[Target]:
    """The targets a --target value names ("cpu", "cuda", "cpu,cuda"), in registry order."""
    names = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in names if t not in _REGISTRY]
    if unknown or not names:
        raise BuildError(f"unknown target {spec!r}: this build supports {', '.join(NAMES)}")
    options = dataclasses.replace(options, bundle_targets=tuple(n for n in NAMES if n in names))
    return [_cpu_target(options) if name == "cpu" else _load(_REGISTRY[name])(options)
            for name in NAMES if name in names]


def weight_layouts(targets: Sequence[Target]) -> frozenset:
    """The stored weight layouts a bundle of these targets uses: those every target reads, if any
    target asks for them. (CPU alone: all of its layouts; with CUDA: packed B panels only; CUDA
    alone: none, so bundles of one model at different batch sizes carry the same weights.)"""
    if not any(t.packs_weights for t in targets):
        return frozenset()
    return frozenset.intersection(*(t.weight_layouts for t in targets))
