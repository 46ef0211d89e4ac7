"""Several CPU targets' code in one bundle (`--cpu x86-64-v3,aarch64`): one Target named "cpu"
over a list of CPU targets (each from its own folder; this module imports none of them).

Every variant lowers with the same LoweringOptions, so they share one planned program: the same
kernel calls, the same arena plan, the same stored weights (one `weights` section). Only the
machine code differs. The manifest's `targets.cpu` is the first variant, exactly as a
single-variant bundle's (an older runtime reads that one), plus `variants`: every variant in
order, which the runtime tries in turn (docs/bundle-format.md, "CPU code variants").
"""

from __future__ import annotations

import dataclasses

from ..errors import BuildError
from ..lower.bufferize import forward_func
from ..lower.program import hooks


def _renamed(sections: list, k: int, static: bool) -> tuple[list, dict]:
    """Variant k's sections under names of their own (cpu.so -> cpu.v1.so, cpu.p3 -> cpu.p3.v1);
    variant 0 keeps its names. Returns the sections and old -> new names."""
    if k == 0:
        return sections, {name: name for name, _, _ in sections}
    names = {}
    for name, _, _ in sections:
        names[name] = name.replace("cpu.so", f"cpu.v{k}.so") if static else f"{name}.v{k}"
    return [(names[n], data, align) for n, data, align in sections], names


class CpuVariantsCode:
    """One program compiled for every variant."""

    def __init__(self, codes: list):
        self.codes = codes
        self.memory_plan = codes[0].memory_plan
        self.kernels = codes[0].kernels

    def manifest(self) -> dict:
        variants = []
        for k, code in enumerate(self.codes):
            entry = code.manifest()
            _, names = _renamed(code.sections(), k, True)
            entry["section"] = names[entry["section"]]
            entry.pop("kernels", None)  # the same in every variant: the top level's
            variants.append(entry)
        return {**self.codes[0].manifest(), "variants": variants}

    def sections(self) -> list:
        return [s for k, code in enumerate(self.codes) for s in _renamed(code.sections(), k, True)[0]]

    def program_manifest(self, n: int) -> dict:
        variants = []
        for k, code in enumerate(self.codes):
            entry = code.program_manifest(n)
            _, names = _renamed(code.program_sections(n), k, False)
            variants.append({**entry, "section": names[entry["section"]]})
        return {**self.codes[0].program_manifest(n), "variants": variants}

    def program_sections(self, n: int) -> list:
        return [s for k, code in enumerate(self.codes) for s in _renamed(code.program_sections(n), k, False)[0]]


class CpuVariants:
    """targets.Target over several CPU targets, in the order --cpu named them."""

    name = "cpu"

    def __init__(self, variants: list):
        self.variants = variants
        self.weight_layouts = frozenset.intersection(*(v.weight_layouts for v in variants))
        self.packs_weights = any(v.packs_weights for v in variants)

    def lowering(self, weight_layouts: frozenset):
        options = [v.lowering(weight_layouts) for v in self.variants]
        if any(o != options[0] for o in options[1:]):
            raise BuildError("internal: the --cpu variants ask for different lowerings; they must share one "
                             "planned program")
        return options[0]

    def compile(self, planned, dump=None, stage=None) -> CpuVariantsCode:
        """Each variant compiles its own copy of the planned program (compiling rewrites it); the
        first variant's dumps and stages keep their plain names, the others' are prefixed / suffixed
        with their level."""
        dump, stage = hooks(dump, stage)
        codes = []
        for k, variant in enumerate(self.variants):
            own = planned if k == len(self.variants) - 1 else _copy(planned)
            if k == 0:
                codes.append(variant.compile(own, dump, stage))
            else:
                codes.append(variant.compile(own, lambda name, text, v=variant: dump(f"{v.cpu}-{name}", text),
                                             lambda name, v=variant: stage(f"{name} ({v.cpu})")))
        return CpuVariantsCode(codes)

    def sections_per_program(self) -> int:
        return sum(v.sections_per_program() for v in self.variants)

    def dynamic_manifest(self, codes: list, sizes: list[dict]) -> dict:
        per_variant = [v.dynamic_manifest([c.codes[k] for c in codes], sizes) for k, v in enumerate(self.variants)]
        variants = [{key: value for key, value in m.items() if key != "kernels"} for m in per_variant]
        return {**per_variant[0], "variants": variants}


def _copy(planned):
    """A PlannedProgram with its own module (the MLIR text parsed again in the same context)."""
    from torch_mlir import ir

    module = ir.Module.parse(str(planned.module), context=planned.module.context)
    return dataclasses.replace(planned, module=module, func=forward_func(module))
