"""LLVM IR -> object files, in worker processes, on every core.

The model's IR is split into partitions of whole functions (`@forward` and the loop nests that
outline_loops moved out of it, each with its OpenMP regions), balanced by size; each partition is
compiled at -O2 by a worker process. Processes, not threads: llvmlite serializes every LLVM call
behind one lock. They also keep the build's own process safe: an LLVM crash on some input ends
a worker, and the build reports it as an error.

Loop nests that come out identical (a transformer's blocks run the same elementwise loops on
different buffers, which the nests take as arguments) are compiled once: every copy but the first
is dropped and its calls go to the first. That is most of a deep model's IR. It is done on the
MLIR, before lowering to LLVM (outline_loops.merge_identical_nests), and again here on the LLVM
IR text (`merge_identical`), for nests only the LLVM IR shows to be the same.

The split depends on the IR alone (never on the core count), so the same model always gives the
same objects. One worker per core takes partitions in turn, largest first, until none is left:
starting a worker (Python and LLVM) costs ~0.2 s of CPU, as much as compiling a small partition.
Run as a script, this module is the worker: framed LLVM IR modules on stdin, framed objects on
stdout (`_serve`).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# IR lines per partition. LLVM's time grows faster than the module: MobileViT's 33K lines took
# 6.5 s of CPU as one module, 5.8 s as 5 partitions and 5.3 s as 21 (Zen 3). Small partitions
# also balance the workers: 5 equal ones on 2 workers leave one idle for a fifth of the time.
PARTITION_LINES = 1500
MAX_PARTITIONS = 32

_DEFINE = re.compile(r"^define ([^@]*)@([-\w.$]+)\(")


class CompileError(Exception):
    pass


def compile_objects(llvm_ir: str, triple: str, cpu: str, features: str = "") -> list[bytes]:
    """Objects for `llvm_ir` (a module whose functions can be linked from separate objects), for
    `triple` (e.g. x86_64-unknown-linux-gnu) at LLVM CPU `cpu` with `features` ("+neon,..." or "")."""
    parts = split_module(merge_identical(llvm_ir))
    todo = sorted(range(len(parts)), key=lambda i: (-len(parts[i]), i))  # largest first: the last ones fill gaps
    lock, objs = threading.Lock(), [b""] * len(parts)

    def drain() -> None:
        with _Worker(triple, cpu, features) as worker:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                try:
                    objs[i] = worker.compile(parts[i])
                except CompileError:
                    with lock:
                        todo.clear()  # the build fails: the other workers stop after their current part
                    raise

    workers = max(1, min(len(parts), len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(drain) for _ in range(workers)]:
            done.result()
    return objs


def split_module(llvm_ir: str) -> list[str]:
    """Partitions of `llvm_ir`, each a complete module: the shared preamble (types, globals,
    declarations, attributes, metadata), its own functions, and declarations of the outlined
    functions other partitions define. Internal helpers outside any group are copied into all."""
    # Imported here: run as a script, this module is a worker, outside any package.
    from .outline_loops import PREFIX as OUTLINED_PREFIX

    preamble, groups, helpers = [], {}, []
    for key, body in _pieces(llvm_ir):
        if key is None:
            preamble.extend(body)
        elif key == "forward" or key.startswith(OUTLINED_PREFIX):
            groups.setdefault(key, []).append(body)
        else:
            helpers.append(body)
    total = sum(len(b) for g in groups.values() for b in g)
    n = max(1, min(MAX_PARTITIONS, total // PARTITION_LINES))
    if n == 1:
        return [llvm_ir]
    # Largest first onto the lightest partition; @forward stays in partition 0.
    sizes = [0] * n
    owner = {"forward": 0}
    sizes[0] = sum(len(b) for b in groups.get("forward", []))
    for key in sorted((k for k in groups if k != "forward"), key=lambda k: (-sum(map(len, groups[k])), k)):
        p = min(range(n), key=lambda j: (sizes[j], j))
        owner[key] = p
        sizes[p] += sum(map(len, groups[key]))
    shared = "\n".join(preamble)
    helper_text = "\n".join("\n".join(b) for b in helpers)
    parts = []
    for p in range(n):
        out = [shared, helper_text]
        for key in groups:
            if owner[key] == p:
                for body in groups[key]:
                    first = body[0]
                    if key != "forward" and _DEFINE.match(first).group(2) == key:
                        first = first.replace("define internal ", "define hidden ", 1)
                    out.append("\n".join([first, *body[1:]]))
            elif key != "forward":
                out.append(_declaration(next(b[0] for b in groups[key] if _DEFINE.match(b[0]).group(2) == key)))
        parts.append("\n".join(out) + "\n")
    return parts


def _pieces(llvm_ir: str):
    """(group key, lines) per function definition, in order; (None, [line]) for every other line.
    The key is the function's name up to `..` (an outlined nest and its OpenMP regions share one)."""
    lines = llvm_ir.split("\n")
    i = 0
    while i < len(lines):
        m = _DEFINE.match(lines[i])
        if not m:
            yield None, [lines[i]]
            i += 1
            continue
        if not lines[i].endswith("{"):
            raise CompileError(f"unexpected function header in LLVM IR: {lines[i][:200]}")
        end = lines.index("}", i)
        yield m.group(2).split("..")[0], lines[i:end + 1]
        i = end + 1


def merge_identical(llvm_ir: str) -> str:
    """Drops every outlined loop nest (with its OpenMP regions, `name..*`) whose text equals an
    earlier one's up to its own name, and points the calls at the earlier one."""
    from .outline_loops import PREFIX as OUTLINED_PREFIX

    pieces: list[str | tuple[str]] = []  # text, or (key,) where an outlined group goes
    groups: dict[str, list[str]] = {}
    for key, lines in _pieces(llvm_ir):
        body = "\n".join(lines)
        if key is None or not key.startswith(OUTLINED_PREFIX):
            pieces.append(body)
            continue
        if key not in groups:
            groups[key] = []
            pieces.append((key,))
        groups[key].append(body)
    first: dict[bytes, str] = {}
    same: dict[str, str] = {}
    for key, bodies in groups.items():
        own = re.compile("@" + re.escape(key) + r"\b")
        digest = hashlib.sha256("\n".join(own.sub("@SELF", b) for b in bodies).encode()).digest()
        kept = first.setdefault(digest, key)
        if kept != key:
            same[key] = kept
    if not same:
        return llvm_ir
    text = "\n".join(p if isinstance(p, str) else "\n".join(groups[p[0]]) for p in pieces
                     if isinstance(p, str) or p[0] not in same)
    return re.sub("@(" + re.escape(OUTLINED_PREFIX) + r"\d+)\b(?!\.\.)", lambda m: "@" + same.get(m.group(1), m.group(1)),
                  text)


def _declaration(header: str) -> str:
    """`declare hidden` for the function a `define internal ... {` line opens (no parameter names,
    no attribute groups)."""
    m = _DEFINE.match(header)
    start, depth = m.end(), 1
    for j in range(start, len(header)):
        depth += {"(": 1, ")": -1}.get(header[j], 0)
        if depth == 0:
            break
    params = [re.sub(r"\s+%[-\w.$]+$", "", a.strip()) for a in header[start:j].split(",") if a.strip()]
    ret = m.group(1).replace("internal ", "").strip()
    return f"declare hidden {ret} @{m.group(2)}({', '.join(params)})"


_LENGTH = struct.Struct("<Q")  # the frame header: the byte count of what follows


class _Worker:
    """A worker process (this module as a script), compiling one framed module after another."""

    def __init__(self, triple: str, cpu: str, features: str):
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty LLVM cannot block on it
        self._proc = subprocess.Popen([sys.executable, str(Path(__file__)), triple, cpu, features],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    def __enter__(self) -> _Worker:
        return self

    def __exit__(self, *exc) -> None:
        self._proc.kill()  # after its last object, or on an error: nothing of it is wanted then
        self._proc.wait()
        self._proc.stdin.close()
        self._proc.stdout.close()
        self._stderr.close()

    def compile(self, llvm_ir: str) -> bytes:
        data = llvm_ir.encode()
        try:
            self._proc.stdin.write(_LENGTH.pack(len(data)) + data)
            self._proc.stdin.flush()
            head = self._proc.stdout.read(_LENGTH.size)
            if len(head) == _LENGTH.size:
                size = _LENGTH.unpack(head)[0]
                obj = self._proc.stdout.read(size)
                if len(obj) == size:
                    return obj
        except (BrokenPipeError, OSError):
            pass  # the worker died: its exit status and message say why
        code = self._proc.wait()
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace").strip()
        raise CompileError(f"LLVM failed (exit status {code}): {err[-2000:] or 'no message'}")


def _serve(triple: str, cpu: str, features: str) -> None:
    """The worker: compile each framed module on stdin, answer with the framed object, until EOF."""
    read, write = sys.stdin.buffer.read, sys.stdout.buffer
    while len(head := read(_LENGTH.size)) == _LENGTH.size:
        obj = compile_object(read(_LENGTH.unpack(head)[0]).decode(), triple, cpu, features)
        write.write(_LENGTH.pack(len(obj)) + obj)
        write.flush()


def compile_object(llvm_ir: str, triple: str, cpu: str, features: str = "") -> bytes:
    """One module -> one object, in this process (the worker's job)."""
    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    tm = llvm.Target.from_triple(triple).create_target_machine(
        cpu=cpu, features=features, opt=3, reloc="pic", codemodel="small")
    mod = llvm.parse_assembly(llvm_ir)
    mod.triple = triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    # The -O2 pipeline: -O3 made 2.4x the code (unswitched and unrolled loop copies) and took 2.7x
    # as long in the passes, and its bundles ran no faster: -O2 / -O3 time 0.95-1.01 on 12 corpus
    # models; codegen 1.2-2.9 s less per model (xcit, segformer, eva02, mobilevit).
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=2))
    pb.getModulePassManager().run(mod, pb)
    return tm.emit_object(mod)


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
