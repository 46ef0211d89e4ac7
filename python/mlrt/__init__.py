"""mlrt: run bundles built by `mlpack build`. numpy in, numpy out; never imports torch.

    import mlrt
    model = mlrt.load("model.bundle")
    y = model.run(x)               # one output -> one array; a tuple of outputs -> a tuple
    model.inputs, model.outputs    # [TensorSpec(name, dtype, shape), ...]; a dynamic dim is its symbol: ('batch', 8)
    model.dynamic_dims             # [DynamicDim(name='batch', min=1, max=32, buckets=(1, 8, 32), padded=True)]

    gpu = mlrt.load("model.bundle", device="cuda:0")
    y = gpu.run_dlpack(x_cuda)     # DLPack in (torch/CuPy/JAX CUDA tensors), DeviceArray out
    torch.from_dlpack(y)           # zero-copy; or y.numpy()
"""

from __future__ import annotations

import collections
import functools
import json
import os
from typing import Any

import numpy as np

from ._mlrt import DeviceArray, DynamicDim, Error, TensorSpec
from ._mlrt import load as _load
from ._mlrt import max_bundle_format_version, version

__all__ = ["load", "Model", "Error", "TensorSpec", "DynamicDim", "DeviceArray", "version", "get_cmake_dir", "get_include_dir", "get_pkgconfig_dir"]
__version__ = version()


def _c_array(a: np.ndarray) -> np.ndarray:
    """`a` as the runtime reads it: C-contiguous, aligned, native byte order, same dtype and shape.
    Returns `a` itself when it already is; else a copy (Fortran order, slices with any strides,
    negative ones included, unaligned or byte-swapped buffers). Keeps 0-d arrays 0-d, which
    np.ascontiguousarray does not."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


class Model:
    """A loaded bundle. Immutable; `run` may be called from many threads at once (it releases the GIL)."""

    def __init__(self, native, path: str):
        self._native = native
        self.path = path
        self.manifest = json.loads(native.manifest_json)
        self._structure = self.manifest.get("output_structure", 0)
        # Inputs the model updates in place: (input index, output index). `run` writes them back.
        self._mutations = [(m["input"], m["output"]) for m in self.manifest.get("input_mutations", [])]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._native.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._native.outputs

    @property
    def dynamic_dims(self) -> list[DynamicDim]:
        """The symbols of the inputs' dynamic dims (format version 2 bundles); [] for a static bundle."""
        return self._native.dynamic_dims

    @property
    def arena_bytes(self) -> int:
        return self._native.arena_bytes

    @property
    def num_threads(self) -> int:
        return self._native.num_threads

    @property
    def device(self) -> str:
        """Where the model runs: 'cpu' or 'cuda:N'."""
        return self._native.device

    @property
    def device_bytes(self) -> int:
        """GPU memory the model holds (weights + execution contexts so far); 0 on cpu."""
        return self._native.device_bytes

    @property
    def cpu_variant(self) -> str:
        """On cpu, the bundle's CPU code this model runs, chosen at load (the first variant in the
        bundle's order whose architecture and features this CPU has): '<level> (<arch>)', e.g.
        'x86-64-v3 (x86_64)'. Empty on cuda."""
        return self._native.cpu_variant

    @property
    def kernel_isa(self) -> str:
        """On cpu, the instruction set the microkernels picked at load from this CPU: 'avx512f'
        where an AVX2-level bundle finds AVX-512F (MLRT_KERNEL_ISA=avx2 keeps it off), 'avx2',
        'c' for the portable code. Empty on cuda and for bundles built before it was recorded."""
        return self._native.kernel_isa

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run on numpy arrays, positionally or by input name. Returns the model's output structure
        (one output -> one array; tuples, lists, dicts, named tuples and constants such as None as
        the PyTorch model returned them). An input the model updates in place (`x.add_(1)`) gets
        its new value written back when it is a writable numpy array of the declared dtype and shape
        (for a dynamic bundle: the shape it had in this call, which is the new value's shape)."""
        flat = self.run_flat(*args, **kwargs)
        if self._mutations:
            names = [s.name for s in self._native.inputs]
            given = list(args) + [kwargs[n] for n in names[len(args):] if n in kwargs]
            for i, k in self._mutations:
                a = given[i] if i < len(given) else None
                if isinstance(a, np.ndarray) and a.flags.writeable and a.shape == flat[k].shape \
                        and a.dtype == flat[k].dtype:
                    np.copyto(a, flat[k])
        return _rebuild(self._structure, flat)

    def run_flat(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """Like `run`, but returns the outputs as a flat list in `outputs` order."""
        return self._native.run_flat(self._arrays(args, kwargs))

    def output_shapes(self, *args: Any, **kwargs: Any) -> list[tuple[int, ...]]:
        """The shape of every output (flat, `outputs` order) for these inputs, without running:
        validates them like `run` (a dynamic bundle: each dynamic dim within its range, the dims of
        one symbol equal, a size between buckets only where padding applies)."""
        return self._native.output_shapes(self._arrays(args, kwargs))

    def _arrays(self, args: tuple, kwargs: dict) -> list[np.ndarray]:
        """The inputs, positional or by name, as C-contiguous numpy arrays in `inputs` order."""
        specs = self._native.inputs
        if kwargs:
            names = [s.name for s in specs]
            unknown = sorted(set(kwargs) - set(names))
            if unknown:
                raise Error(f"unknown input name(s) {unknown}; the model's inputs are {names}")
            if len(args) + len(kwargs) != len(specs):
                raise Error(f"expected {len(specs)} input(s), got {len(args) + len(kwargs)}")
            args = args + tuple(kwargs[n] for n in names[len(args):])
        if len(args) != len(specs):
            raise Error(f"expected {len(specs)} input(s) {[s.name for s in specs]}, got {len(args)}")
        arrays = []
        for i, a in enumerate(args):
            if not isinstance(a, np.ndarray):
                if hasattr(a, "__array__") or isinstance(a, (list, tuple, int, float, bool)):
                    a = np.asarray(a)
                else:
                    raise Error(f"input {i} ('{specs[i].name}'): expected a numpy array, got {type(a).__name__}")
            arrays.append(_c_array(a))
        return arrays

    def run_dlpack(self, *args: Any, stream: int = 1) -> Any:
        """CUDA models only: run on GPU tensors from any DLPack producer (torch CUDA tensors, CuPy,
        JAX, or this model's DeviceArray outputs), without a trip through host memory. Each input
        must be on this model's GPU (`__dlpack_device__() == (2, N)`), with exactly the declared
        dtype and shape, and contiguous row-major (else mlrt.Error; numpy arrays are refused: use
        `run`). The inputs are read in place (copied device to device into the run's buffers).

        `stream`: the CUDA stream the inputs are ready on, as DLPack's stream argument (1, the
        default: the legacy default stream, e.g. torch's default stream; 2: the per-thread default
        stream; else a cudaStream_t value; 0 means 1). Each producer is asked to order its pending
        work before that stream (`__dlpack__(stream=...)`), and the run waits for that stream.
        Synchronous: returns when the outputs are complete.

        Returns the model's output structure (like `run`) of `DeviceArray`s: mlrt-owned GPU memory,
        freed when the DeviceArray and every DLPack consumer of it are gone (even after the model)."""
        specs = self._native.inputs
        if len(args) != len(specs):
            raise Error(f"expected {len(specs)} input(s) {[s.name for s in specs]}, got {len(args)}")
        return _rebuild(self._structure, self._native.run_dlpack(list(args), stream))

    __call__ = run

    def __repr__(self) -> str:
        device = "" if self.device == "cpu" else f", device={self.device!r}"
        return f"mlrt.Model({self.path!r}{device}, inputs={self.inputs}, outputs={self.outputs})"


_CONSTANTS = {"none": lambda v: None, "bool": bool, "int": int, "str": str,
              "float": float}  # float("inf"), float("nan"): JSON has no literal for them


@functools.lru_cache(maxsize=None)
def _namedtuple_class(qualname: str, fields: tuple[str, ...]) -> type:
    """One class per (name, fields), so every run returns instances of the same type."""
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in qualname.rsplit(".", 1)[-1]) or "Output"
    if not name[0].isalpha():
        name = "Output_" + name
    return collections.namedtuple(name, fields, rename=True)


def _rebuild(node: Any, flat: list) -> Any:
    """The model's output from the manifest's `output_structure` (docs/bundle-format.md): an int is
    output `i`; other nodes are dicts with a `type`."""
    if isinstance(node, int):
        return flat[node]
    kind = node.get("type") if isinstance(node, dict) else None
    if kind in _CONSTANTS:
        return _CONSTANTS[kind](node.get("value"))
    if kind not in ("tuple", "list", "dict", "namedtuple"):
        raise Error(f"output_structure has a node of type {kind!r}, which this mlrt ({__version__}) does not "
                    "know: upgrade mlrt, or use run_flat")
    items = [_rebuild(n, flat) for n in node["items"]]
    if kind == "tuple":
        return tuple(items)
    if kind == "list":
        return items
    if kind == "namedtuple":
        return _namedtuple_class(node.get("class", "Output"), tuple(node["fields"]))(*items)
    return dict(zip(node["keys"], items))


def _public_key_bytes(key) -> bytes:
    """32 raw bytes from bytes, a hex string, or the path of a `.pub` file from `mlpack keygen`."""
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    text = os.fspath(key)
    if os.path.exists(text):
        text = open(text).read()
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise Error("public_key must be 32 bytes, 64 hex digits, or a .pub file from `mlpack keygen`") from None


def load(path: str | os.PathLike, verify: str = "fast", num_threads: int = 0, public_key=None,
         device: str = "cpu") -> Model:
    """Load and verify a bundle. verify: 'fast' (SHA-256 of the code and manifest, the weights by
    their XXH3 chunk checksums where listed), 'full' (SHA-256 of every section) or 'skip-weights'.
    num_threads: threads per run (0: MLRT_NUM_THREADS, else the physical cores).
    public_key: require a valid Ed25519 signature by this key (bytes, hex, or a .pub file).
    device: 'cpu', 'cuda' (= 'cuda:0') or 'cuda:N' (needs a bundle built with --target cuda and the
    NVIDIA driver); run/run_flat still take and return numpy arrays."""
    path = os.fspath(path)
    key = _public_key_bytes(public_key) if public_key is not None else b""
    if not isinstance(device, str):
        raise Error(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    return Model(_load(path, verify, num_threads, key, device), path)


def get_cmake_dir() -> str:
    """Directory holding mlrtConfig.cmake: `cmake -Dmlrt_DIR=$(python -c 'import mlrt; print(mlrt.get_cmake_dir())')`."""
    return os.path.join(os.path.dirname(__file__), "lib", "cmake", "mlrt")


def get_include_dir() -> str:
    return os.path.join(os.path.dirname(__file__), "include")


def get_pkgconfig_dir() -> str:
    """Directory holding mlrt.pc: `PKG_CONFIG_PATH=$(python -c 'import mlrt; print(mlrt.get_pkgconfig_dir())')`."""
    return os.path.join(os.path.dirname(__file__), "lib", "pkgconfig")
