"""The shared object of a CPU target: the model's objects linked with the target's C microkernels
(targets/cpu_kernels/*.c: one set of sources, ISA blocks inside) and memrefCopy (cpu_support/memref_copy.c) by a C compiler for that target (the
system's for x86-64, a cross compiler for aarch64). Each kernel object is compiled once per
(sources, compiler, flags) and cached in $MLPACK_CACHE_DIR.

Entry ABI of the produced shared object (see docs/bundle-format.md):
    void mlrt_entry(void **args, const mlrt_host_api *host)  // args[i]: pointer for manifest "call"[i]
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from ..errors import BuildError

MEMREF_COPY = Path(__file__).parent / "cpu_support" / "memref_copy.c"


def _entry_wrapper(num_args: int, call: tuple[list[str], list[str]] | None = None) -> str:
    types, call_args = call or (["void *"] * num_args, [f"a[{i}]" for i in range(num_args)])
    params = ", ".join(types)
    args = ", ".join(call_args)
    # Only stdint.h: the kernels' header brings immintrin.h, whose parsing was most of the link.
    return ("#include <stdint.h>\n"
            "typedef struct mlrt_host_api mlrt_host_api;\n"
            "void mlrt_set_host(const mlrt_host_api *host);\n"
            f"extern void forward({params});\n"
            "__attribute__((visibility(\"default\"))) void mlrt_entry(void **a, const mlrt_host_api *host) {\n"
            f"  mlrt_set_host(host);\n  forward({args});\n  mlrt_set_host(0);\n}}\n")


def _cache_dir() -> Path:
    """Where compiled kernel objects are kept: $MLPACK_CACHE_DIR, else $XDG_CACHE_HOME/mlpack."""
    env = os.environ.get("MLPACK_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlpack"


def _compiler_identity(cc: str, missing: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError as e:
        raise BuildError(missing) from e
    except subprocess.CalledProcessError as e:
        raise BuildError(f"the C compiler {cc!r} does not run: {e.stderr.strip()}") from e


def support_objects(cc: str, cpu_flags: list[str], kernels_dir: Path, missing: str) -> list[Path]:
    """The microkernels in `kernels_dir` and memrefCopy compiled with `cpu_flags` (-march=...),
    each object cached under a hash of its sources (the .c file and every kernel header), the
    compiler's identity and the flags: the same inputs always give the same object, so builds skip
    ~5 s of C compilation and stay reproducible. A cache that cannot be written only costs the
    compile. `missing`: the error when `cc` is not installed."""
    import hashlib

    sources = [MEMREF_COPY, *sorted(kernels_dir.glob("*.c"))]
    headers = b"".join(h.name.encode() + h.read_bytes() for h in sorted(kernels_dir.glob("*.h")))
    flags = ["-c", "-fPIC", "-O3", *cpu_flags, "-std=gnu11", "-fvisibility=hidden", f"-I{kernels_dir}"]
    ident = _compiler_identity(cc, missing)
    objects = []
    for src in sources:
        key = hashlib.sha256(b"\0".join([src.read_bytes(), headers, ident.encode(), " ".join(flags[:-1]).encode()]))
        obj = _cache_dir() / "kernels" / f"{src.stem}-{key.hexdigest()[:24]}.o"
        if not obj.exists():
            try:
                obj.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=obj.parent, suffix=".o.tmp")
                os.close(fd)
            except OSError:  # read-only cache: compile into a private folder instead
                tmp_dir = Path(tempfile.mkdtemp(prefix="mlpack-kernels-"))
                obj = tmp_dir / obj.name
                tmp = str(tmp_dir / (obj.name + ".tmp"))
            try:  # the bare file name from its own folder: no path of this machine in the object
                subprocess.run([cc, *flags, src.name, "-o", tmp], check=True, capture_output=True, text=True,
                               cwd=src.parent)
            except subprocess.CalledProcessError as e:
                Path(tmp).unlink(missing_ok=True)
                raise BuildError(f"compiling the microkernel {src.name} failed:\n{e.stderr}") from e
            os.replace(tmp, obj)  # atomic: concurrent builds see a whole object or none
        objects.append(obj)
    return objects


def link_shared_object(objs: list[bytes], num_args: int, cc: str, cpu_flags: list[str], kernels_dir: Path,
                       missing: str, call: tuple[list[str], list[str]] | None = None) -> bytes:
    """The model's objects + the target's kernels -> the bytes of one PIC shared object exporting
    mlrt_entry. `cc`: the target's C compiler (`missing`: the error if it is not installed)."""
    support = support_objects(cc, cpu_flags, kernels_dir, missing)
    with tempfile.TemporaryDirectory(prefix="mlpack-link-") as tmp:
        tmp_path = Path(tmp)
        names = [f"model{i}.o" for i in range(len(objs))]
        for name, obj in zip(names, objs):
            (tmp_path / name).write_bytes(obj)
        (tmp_path / "entry.c").write_text(_entry_wrapper(num_args, call))
        # Reproducible: files named relative to the temp folder (cwd), so its name is in no symbol;
        # the build ID is a hash of the content, whatever the linker's default.
        cmd = [cc, "-shared", "-fPIC", "-O3", *cpu_flags,
               "-std=gnu11", "-fvisibility=hidden", f"-I{kernels_dir}", "-o", "model.so",
               *names, "entry.c", *map(str, support),
               "-lm", "-Wl,-z,noexecstack", "-Wl,-z,now", "-Wl,--no-undefined", "-Wl,--build-id=sha1"]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp)
        except subprocess.CalledProcessError as e:
            raise BuildError(f"linking the model's shared object failed:\n{e.stderr}") from e
        return (tmp_path / "model.so").read_bytes()
