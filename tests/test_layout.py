"""The compiler's folders import one way: frontend -> lower -> targets -> bundle, with build.py and
cli.py on top, and no target imports another (docs/architecture.md). Read from the sources' import
statements, so a wrong arrow fails here before it tangles the tree."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "compiler" / "mlpack"
# Folder -> the folders (and top-level modules) it may import.
ALLOWED = {
    "frontend": {"frontend", "errors"},
    "lower": {"lower", "frontend", "errors"},
    "targets": {"targets", "lower", "bundle", "errors"},
    "bundle": {"bundle", "errors"},
}


def _imports(path: Path) -> list[tuple[str, ...]]:
    """The mlpack modules `path` imports, as paths inside the package (('lower', 'program'), ...)."""
    here = path.relative_to(PACKAGE).parent.parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[:len(here) - node.level + 1]
            mod = tuple(node.module.split(".")) if node.module else ()
            if mod:
                out.append(base + mod)
            else:
                out += [base + (a.name,) for a in node.names]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            out += [tuple(n.split(".")[1:]) for n in names if n.split(".")[0] == "mlpack"]
    return out


def test_folders_import_one_way():
    targets = {p.name for p in (PACKAGE / "targets").iterdir() if (p / "__init__.py").exists()}
    assert {"x86_64", "aarch64", "cuda"} <= targets
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).parts
        if len(rel) == 1:
            continue  # build.py, cli.py, ...: the top may import anything
        for mod in _imports(path):
            if mod and mod[0] not in ALLOWED[rel[0]]:
                wrong.append(f"{'/'.join(rel)} imports {'.'.join(mod)}")
            elif mod[:1] == ("targets",) and len(mod) > 1 and mod[1] in targets and mod[1] != rel[1]:
                wrong.append(f"{'/'.join(rel)} imports another target: {'.'.join(mod)}")
    assert not wrong, "\n".join(wrong)


def test_every_target_folder_has_its_kernels_beside_it():
    """The CPU targets share one folder of C kernels (targets/cpu_kernels: sources only, no
    __init__.py, so not a target and imported by none); CUDA keeps its own beside it."""
    from mlpack.targets.aarch64.codegen import KERNELS_DIR as A64
    from mlpack.targets.x86_64.link import KERNELS_DIR as X86

    shared = PACKAGE / "targets" / "cpu_kernels"
    assert not (shared / "__init__.py").exists()
    assert {p.suffix for p in shared.iterdir()} <= {".c", ".h"} and (shared / "mlrt_kernels.h").exists()
    assert A64.name == X86.name == "cpu_kernels" and A64.parent.name == X86.parent.name == "targets"
    for target in ("x86_64", "aarch64"):
        assert not (PACKAGE / "targets" / target / "kernels").exists(), f"{target} has its own kernels again"
    assert any((PACKAGE / "targets" / "cuda" / "kernels").iterdir())
