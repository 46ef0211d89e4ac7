"""Run a CUDA bundle's generated kernels on the CPU (see mlrt_cuda_kernels.cuh here): compile the
generated source with the host shim, then execute the launch table in order on numpy buffers laid
out exactly as the runtime lays out device memory (one pointer per manifest `call` entry)."""

from __future__ import annotations

import ctypes
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
KERNELS = HERE.parent.parent / "compiler" / "mlpack" / "targets" / "cuda" / "kernels"

_DRIVER = """
typedef void (*mlrt_kernel_fn)(void *const *);
extern "C" int mlrt_emulate(int index, void *const *args, const unsigned *grid, const unsigned *block) {
  static const mlrt_kernel_fn table[] = {%s};
  if (index < 0 || index >= (int)(sizeof(table) / sizeof(table[0]))) return 1;
  gridDim = {grid[0], grid[1], grid[2]};
  blockDim = {block[0], block[1], block[2]};
  for (unsigned bz = 0; bz < grid[2]; ++bz)
    for (unsigned by = 0; by < grid[1]; ++by)
      for (unsigned bx = 0; bx < grid[0]; ++bx)
        for (unsigned t = 0; t < block[0] * block[1] * block[2]; ++t) {
          blockIdx = {bx, by, bz};
          threadIdx = {t %% block[0], (t / block[0]) %% block[1], t / (block[0] * block[1])};
          table[index](args);
        }
  return 0;
}
extern "C" int mlrt_emulate_named(const char *name, void *const *args, const unsigned *grid, const unsigned *block) {
  static const char *const names[] = {%s};
  for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); ++i)
    if (strcmp(names[i], name) == 0) return mlrt_emulate(i, args, grid, block);
  return 1;
}
"""


def ptx_key(ptx: str) -> str:
    """FNV-1a 64 of the PTX text: the name (<key>.so) under which the stand-in libcuda.so.1 of
    test_cuda_runtime.py finds the emulation library of a module it is asked to load."""
    h = 0xCBF29CE484222325
    for byte in ptx.encode("ascii"):
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


class Emulation:
    def __init__(self, source: str, launches: list[dict], workdir: Path, so: Path | None = None):
        names = [l["kernel"] for l in launches]
        kernels = sorted(set(re.findall(r"void __launch_bounds__\([\d, ]+\) (k\d+)\(", source)), key=lambda k: int(k[1:]))
        self.index = {k: i for i, k in enumerate(kernels)}
        self.launches = launches
        assert set(names) <= set(kernels), "launch table names a kernel the source lacks"
        cu = workdir / "emulated.cc"
        cu.write_text(source + _DRIVER % (", ".join(kernels), ", ".join(f'"{k}"' for k in kernels)))
        so = so or workdir / "emulated.so"
        subprocess.run(["g++", "-std=c++17", "-O1", "-shared", "-fPIC", "-w", f"-I{HERE}", f"-I{KERNELS}",
                        "-o", str(so), str(cu)], check=True)
        self.lib = ctypes.CDLL(str(so))

    def run(self, buffers: list[np.ndarray]) -> None:
        ptrs = (ctypes.c_void_p * len(buffers))(*[b.ctypes.data for b in buffers])
        for l in self.launches:
            grid = (ctypes.c_uint * 3)(*l["grid"])
            block = (ctypes.c_uint * 3)(*l["block"])
            assert self.lib.mlrt_emulate(self.index[l["kernel"]], ptrs, grid, block) == 0


def run_bundle_emulated(source: str, manifest: dict, weights_blob: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Executes the CUDA target of a bundle (its generated source, manifest and weights) on the CPU."""
    cuda = manifest["targets"]["cuda"]
    weights = np.frombuffer(weights_blob, dtype=np.uint8).copy()
    outputs = [np.zeros(o["shape"], dtype=o["dtype"]) for o in manifest["outputs"]]
    arena = np.full(max(cuda["arena_bytes"], 64), 0xFF, dtype=np.uint8)  # garbage, like a fresh device arena
    buffers = []
    for entry in manifest["call"]:
        kind, _, idx = entry.partition(":")
        if kind == "input":
            buffers.append(np.ascontiguousarray(inputs[int(idx)]))
        elif kind == "weight":
            w = manifest["weights"][int(idx)]
            buffers.append(weights[w["offset"]:w["offset"] + max(w["nbytes"], 1)])
        elif kind == "output":
            buffers.append(outputs[int(idx)])
        else:
            buffers.append(arena)
    with tempfile.TemporaryDirectory(prefix="mlrt-emulate-") as tmp:
        Emulation(source, cuda["launches"], Path(tmp)).run(buffers)
    return outputs
