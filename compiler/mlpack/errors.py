"""Errors the compiler reports to users.

Every error that reaches the CLI is a `BuildError`: a message a user can act on, never a raw
traceback from torch or MLIR (those stay attached as `__cause__` for `-v`).
"""

import re


def node_location(node) -> str:
    """Where an FX node of an exported model comes from: module path (class) and source line."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
        where = f"module '{path or '<root>'}' ({cls_name})"
    else:
        where = "module '<root>'"
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)', node.meta.get("stack_trace") or "")
    if frames:
        file, line, fn, code = frames[-1]
        where += f", {file}:{line} in {fn}: {code.strip()}"
    return where


class BuildError(Exception):
    """A model could not be built into a bundle; the message says why and what to do."""


class UnsupportedOpError(BuildError):
    """An operator the compiler cannot lower; names the op and where it sits in the model."""

    def __init__(self, op: str, locations: list[str], detail: str = ""):
        self.op = op
        self.locations = locations
        where = "\n".join(f"  at {loc}" for loc in locations) or "  (location in the model unknown)"
        msg = f"unsupported operator '{op}': the compiler cannot lower it to code\n{where}"
        if detail:
            msg += f"\n{detail}"
        super().__init__(msg)


class MissingCompilerDependencies(BuildError):
    """torch / torch-mlir / llvmlite are not installed (a runtime-only install)."""

    def __init__(self, missing: str):
        super().__init__(
            f"mlpack build needs the compiler dependencies, and '{missing}' is not installed.\n"
            "Install them with:  pip install torch==2.13.0 && pip install 'mlpack-mlrt[compiler]'\n"
            "(or, from a checkout:  pip install torch==2.13.0 && pip install '.[compiler]')"
        )
