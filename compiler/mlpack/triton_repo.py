"""`mlpack triton-repo`: a Triton Inference Server model repository serving one bundle.

    REPO/NAME/config.pbtxt           backend "mlrt"; inputs/outputs auto-completed by the backend
    REPO/NAME/libtriton_mlrt.so      the backend, copied from the installed mlrt package
    REPO/NAME/<version>/model.bundle

Triton looks for a model's backend library in its version folder, then its model folder, so
`tritonserver --model-repository REPO` needs no --backend-directory. See docs/serving.md.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

BACKEND_LIB = "libtriton_mlrt.so"

_TRITON_DTYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
                  "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                  "bool": "TYPE_BOOL"}


class TritonRepoError(Exception):
    pass


def backend_library() -> Path:
    """libtriton_mlrt.so inside the installed mlrt package (pip builds it beside libmlrt)."""
    import mlrt

    path = Path(mlrt.__file__).parent / "lib" / BACKEND_LIB
    if not path.exists():
        raise TritonRepoError(f"{path} not found: this mlrt was built without the Triton backend "
                              "(reinstall with pip, or build with cmake -DMLRT_BUILD_TRITON=ON and pass --backend)")
    return path


@dataclass
class BatchInfo:
    batchable: bool
    max: int = 0
    why_not: str = ""


def batch_info(model) -> BatchInfo:
    """Whether Triton can batch this bundle: the same rule as the backend's FindBatchDim
    (runtime/triton/mlrt_backend.cc): dim 0 of every input and output is one dynamic symbol whose
    range starts at 1 and whose sizes between buckets run padded."""
    if not model.dynamic_dims:
        return BatchInfo(False, why_not="the bundle has no dynamic dims")
    symbols = set()
    for spec in [*model.inputs, *model.outputs]:
        if not spec.shape or not isinstance(spec.shape[0], str):
            return BatchInfo(False, why_not=f"'{spec.name}' has no dynamic dim 0")
        symbols.add(spec.shape[0])
    if len(symbols) != 1:
        return BatchInfo(False, why_not=f"dim 0 has several symbols: {sorted(symbols)}")
    (symbol,) = symbols
    for d in model.dynamic_dims:
        if d.name == symbol:
            if d.min != 1:
                return BatchInfo(False, why_not=f"batch dim '{symbol}' starts at {d.min}, not 1")
            if not d.padded and len(d.buckets) != d.max:
                return BatchInfo(False, why_not=f"batch dim '{symbol}' runs at its buckets only ({d.not_padded})")
            return BatchInfo(True, d.max)
    return BatchInfo(False, why_not=f"dim 0 symbol '{symbol}' is not an input dynamic dim")


def _io_block(key: str, specs) -> list[str]:
    lines = [f"{key} ["]
    for i, s in enumerate(specs):
        dims = ", ".join("-1" if isinstance(d, str) else str(d) for d in s.shape)
        lines.append(f'  {{ name: "{s.name}" data_type: {_TRITON_DTYPES[str(s.dtype)]} dims: [ {dims} ] }}'
                     + ("," if i + 1 < len(specs) else ""))
    return lines + ["]"]


def write_repo(bundle: str | os.PathLike, repo: str | os.PathLike, name: str | None = None, instances: int = 1,
               max_batch: int | None = None, kind: str = "cpu", gpus: tuple[int, ...] = (), threads: int | None = None,
               version: int = 1, queue_delay_us: int = 100, backend: str | os.PathLike | None = None) -> Path:
    """Writes REPO/NAME (config.pbtxt, VERSION/model.bundle, libtriton_mlrt.so); returns that folder.

    max_batch: None = the bundle's batch max when it can batch, else 0; 0 = one request per run.
    kind: "cpu" (KIND_CPU, `instances` instances sharing one loaded model) or "gpu" (KIND_GPU on
    `gpus`, default all; the bundle needs a CUDA target). threads: mlrt threads per run (default:
    physical cores). queue_delay_us: the dynamic batcher's max_queue_delay_microseconds."""
    import mlrt

    bundle = Path(bundle)
    name = name or bundle.stem
    if not name or "/" in name or name.startswith("."):
        raise TritonRepoError(f"bad model name {name!r}")
    if instances < 1:
        raise TritonRepoError(f"--instances must be at least 1, got {instances}")
    if kind not in ("cpu", "gpu"):
        raise TritonRepoError(f"kind must be cpu or gpu, got {kind!r}")
    lib = Path(backend) if backend else backend_library()

    try:
        model = mlrt.load(str(bundle), verify="skip-weights", num_threads=1)
        info = batch_info(model)
    except mlrt.Error as e:
        if kind != "gpu" or "device=" not in str(e):
            raise TritonRepoError(f"cannot read {bundle}: {e}") from e
        model, info = None, BatchInfo(False, why_not="a cuda-only bundle (its batch dim is read through a CPU load)")

    if max_batch is None:
        max_batch = info.max if info.batchable else 0
    if max_batch > 0 and not info.batchable:
        raise TritonRepoError(f"--max-batch {max_batch}: {bundle} cannot batch: {info.why_not} "
                              "(rebuild with e.g. mlpack build --dynamic x:0=1..8)")
    if max_batch > info.max and info.batchable:
        raise TritonRepoError(f"--max-batch {max_batch} is above the bundle's batch max {info.max}")
    if max_batch < 0:
        raise TritonRepoError(f"--max-batch must be >= 0, got {max_batch}")

    lines = [
        "# Written by `mlpack triton-repo`. The mlrt backend checks this against model.bundle and fills in",
        "# what is left out (inputs, outputs, max_batch_size) from the bundle's signature.",
        f'name: "{name}"',
        'backend: "mlrt"',
    ]
    if max_batch > 0:
        lines += [f"max_batch_size: {max_batch}",
                  f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}"]
    elif info.batchable and model is not None:
        # Batching off for a batchable bundle: declare the full shapes so the backend keeps max_batch_size 0.
        lines += _io_block("input", model.inputs) + _io_block("output", model.outputs)
    group = f"kind: KIND_{kind.upper()} count: {instances}"
    if kind == "gpu" and gpus:
        group += f" gpus: [ {', '.join(str(g) for g in gpus)} ]"
    lines.append(f"instance_group [ {{ {group} }} ]")
    if threads is not None:
        lines.append(f'parameters {{ key: "num_threads" value {{ string_value: "{threads}" }} }}')

    folder = Path(repo) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    # Copy then rename: a server polling the repository never sees a half-written bundle.
    tmp = folder / str(version) / ".model.bundle.tmp"
    shutil.copyfile(bundle, tmp)
    os.replace(tmp, folder / str(version) / "model.bundle")
    tmp = folder / f".{BACKEND_LIB}.tmp"
    shutil.copyfile(lib, tmp)
    os.replace(tmp, folder / BACKEND_LIB)
    (folder / "config.pbtxt").write_text("\n".join(lines) + "\n")
    return folder
