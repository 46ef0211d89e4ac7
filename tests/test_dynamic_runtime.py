"""Dynamic dims (bundle format version 2) on the runtime side: loading, per-call shapes, bucket
choice, zero-padded runs with outputs cut back, the errors, and hostile version-2 manifests.

The compiler side is tested elsewhere; here a version-2 bundle is *spliced* from static builds of
the same model, one per bucket (docs/bundle-format.md, "Dynamic dimensions"): each build's cpu.so
becomes a program section, their weights are merged into one section (a weight several builds
store identically is stored once: builds at different sizes may pack some weights differently),
and the manifest gets `dynamic_dims` and `programs`."""

from __future__ import annotations

import copy
import os
import re
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import mlpack
import mlrt
from mlpack import bundle as bf

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "Segmentation fault")


# ----------------------------------------------------------------------------------- the splice

def build_static(model, make_inputs, sizes_list, directory: Path) -> list[tuple[dict, Path]]:
    """One static bundle per entry of `sizes_list` ({symbol: size}), built from make_inputs(**sizes)."""
    builds = []
    for sizes in sizes_list:
        path = directory / ("static_" + "_".join(f"{k}{v}" for k, v in sizes.items()) + ".bundle")
        mlpack.build(model, make_inputs(**sizes), path)
        builds.append((dict(sizes), path))
    return builds


def write_v2(path: Path, manifest, sections) -> None:
    """write_bundle with a version-2 header (the header is not hashed)."""
    bf.write_bundle(path, manifest, sections)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, 2)
    path.write_bytes(bytes(data))


def splice_manifest(builds, dynamic_dims, input_symbols):
    """(manifest, sections) of a version-2 bundle made of static builds (one per bucket combination)."""
    weights, blob, seen = [], bytearray(), {}
    programs, sections = [], []
    for k, (sizes, src) in enumerate(builds):
        m = bf.read_bundle(src).manifest
        data = bf.section_bytes(src, "weights")
        remap = {}
        for i, w in enumerate(m["weights"]):
            raw = data[w["offset"]:w["offset"] + w["nbytes"]]
            key = (w["name"], w["dtype"], tuple(w["shape"]), raw)
            if key not in seen:
                offset = -(-len(blob) // 64) * 64
                blob += b"\0" * (offset - len(blob)) + raw
                seen[key] = len(weights)
                weights.append({**w, "offset": offset})
            remap[i] = seen[key]
        call = [f"weight:{remap[int(c.split(':')[1])]}" if c.startswith("weight:") else c for c in m["call"]]
        section = f"cpu.p{k}"
        sections.append((section, bf.section_bytes(src, "cpu.so"), 4096))
        programs.append({"sizes": sizes, "section": section, "entry": m["targets"]["cpu"]["entry"], "call": call,
                         "output_shapes": [o["shape"] for o in m["outputs"]],
                         "arena_bytes": m["memory_plan"]["arena_bytes"], "memory_plan": m["memory_plan"]})
    last = bf.read_bundle(builds[-1][1]).manifest
    inputs = [dict(spec, shape=[-1 if s else n for n, s in zip(spec["shape"], syms)], symbols=syms)
              for spec, syms in zip(last["inputs"], input_symbols)]
    outputs = []
    for o, spec in enumerate(last["outputs"]):
        shapes = [p["output_shapes"][o] for p in programs]
        outputs.append(dict(spec, shape=[-1 if len({s[d] for s in shapes}) > 1 else n
                                         for d, n in enumerate(spec["shape"])]))
    cpu = {k: v for k, v in last["targets"]["cpu"].items() if k not in ("section", "entry")}
    manifest = {**last, "format_version": 2, "inputs": inputs, "outputs": outputs, "weights": weights,
                "dynamic_dims": dynamic_dims, "programs": programs, "targets": {"cpu": cpu}}
    return manifest, sections + [("weights", bytes(blob), 4096)]


def splice(builds, dynamic_dims, input_symbols, path: Path, edit=None) -> Path:
    manifest, sections = splice_manifest(builds, dynamic_dims, input_symbols)
    manifest = copy.deepcopy(manifest)  # edits must not reach the builds' dicts
    if edit is not None:
        edit(manifest)
    write_v2(path, manifest, sections)
    return path


# ----------------------------------------------------------------------------------- the models

class TwoInputMLP(torch.nn.Module):
    """Rows are independent: padding the batch dim is exact."""

    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

    def forward(self, x, y):
        return self.mlp(x) + y


BATCH = {"name": "batch", "min": 1, "max": 8, "buckets": [1, 4, 8],
         "padding": {"outputs": [{"output": 0, "dim": 0, "mul": 1, "add": 0}]}}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoInputMLP().eval()
    d = tmp_path_factory.mktemp("dynamic_mlp")
    builds = build_static(model, lambda batch: [torch.randn(batch, 8), torch.randn(batch, 4)],
                          [{"batch": 1}, {"batch": 4}, {"batch": 8}], d)
    path = splice(builds, [BATCH], [["batch", None], ["batch", None]], d / "mlp_dynamic.bundle")
    return model, builds, path, d


def _ref(model, *arrays):
    with torch.no_grad():
        return model(*[torch.from_numpy(a) for a in arrays]).numpy()


def _inputs(batch, seed=0):
    rng = np.random.default_rng(seed + batch)
    return rng.standard_normal((batch, 8), np.float32), rng.standard_normal((batch, 4), np.float32)


# ----------------------------------------------------------------------------------- behaviour

def test_specs_and_dynamic_dims(mlp):
    model, builds, path, _ = mlp
    m = mlrt.load(path)
    x, y = m.inputs
    assert (x.name, x.shape, x.min_shape, x.max_shape, x.is_dynamic) == ("x", ("batch", 8), (1, 8), (8, 8), True)
    assert y.shape == ("batch", 4)
    assert repr(x) == "TensorSpec(name='x', dtype=float32, shape=('batch', 8))"
    (out,) = m.outputs
    assert (out.shape, out.min_shape, out.max_shape) == (("batch", 4), (1, 4), (8, 4))
    (dim,) = m.dynamic_dims
    assert (dim.name, dim.min, dim.max, dim.buckets, dim.padded) == ("batch", 1, 8, (1, 4, 8), True)
    assert "buckets=(1, 4, 8)" in repr(dim)
    assert m.arena_bytes == max(bf.read_bundle(p).manifest["memory_plan"]["arena_bytes"] for _, p in builds)
    assert mlrt.max_bundle_format_version() >= 2  # 3 since bfloat16 weights
    # A static bundle: no dynamic dims, bounds equal to the shape.
    static = mlrt.load(builds[0][1])
    assert static.dynamic_dims == [] and static.inputs[0].shape == static.inputs[0].min_shape == (1, 8)
    assert not static.inputs[0].is_dynamic


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 7, 8])
def test_runs_at_buckets_and_between(mlp, batch):
    model, _, path, _ = mlp
    m = mlrt.load(path)
    x, y = _inputs(batch)
    assert m.output_shapes(x, y) == [(batch, 4)]
    out = m.run(x, y)
    assert out.shape == (batch, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, _ref(model, x, y), rtol=1e-5, atol=1e-5)
    # Inputs by name, and non-contiguous inputs, go through the same path.
    xt = np.asfortranarray(x)
    np.testing.assert_allclose(m.run(x=xt, y=y), out, rtol=0, atol=0)


def test_padded_rows_do_not_leak(mlp):
    """Rows of a padded run depend only on the rows given: the same row gives the same result at
    every batch size (inputs are padded with zeros, never with stale memory)."""
    model, _, path, _ = mlp
    m = mlrt.load(path)
    x, y = _inputs(8, seed=5)
    full = m.run(x, y)
    for b in (1, 2, 3, 5, 6, 7):
        np.testing.assert_allclose(m.run(x[:b], y[:b]), full[:b], rtol=1e-5, atol=1e-5)


def test_out_of_range_sizes(mlp):
    _, _, path, _ = mlp
    m = mlrt.load(path)
    for b in (0, 9, 40):
        x, y = np.zeros((b, 8), np.float32), np.zeros((b, 4), np.float32)
        with pytest.raises(mlrt.Error, match=rf"input 0 \('x'\) dim 0 \(batch\): {b} is outside 1\.\.8"):
            m.run(x, y)
        with pytest.raises(mlrt.Error, match="outside 1..8"):
            m.output_shapes(x, y)


def test_mismatched_symbol(mlp):
    _, _, path, _ = mlp
    m = mlrt.load(path)
    x, _ = _inputs(4)
    _, y = _inputs(5)
    with pytest.raises(mlrt.Error, match=r"input 1 \('y'\) dim 0 \(batch\) is 5, but input 0 \('x'\) dim 0 \(batch\) "
                                         r"is 4: dims of one symbol must be equal"):
        m.run(x, y)


def test_wrong_static_dim_rank_and_dtype(mlp):
    _, _, path, _ = mlp
    m = mlrt.load(path)
    x, y = _inputs(4)
    with pytest.raises(mlrt.Error, match=r"input 0 \('x'\): expected shape \[batch,8\], got \[4,9\] \(dim 1 must be 8\)"):
        m.run(np.zeros((4, 9), np.float32), y)
    with pytest.raises(mlrt.Error, match=r"input 1 \('y'\): expected shape \[batch,4\] \(rank 2\), got \[4\] \(rank 1\)"):
        m.run(x, np.zeros(4, np.float32))
    with pytest.raises(mlrt.Error, match=r"input 0 \('x'\): expected dtype float32, got float64"):
        m.run(x.astype(np.float64), y)
    with pytest.raises(mlrt.Error, match="expected 2 input"):
        m.run(x)


def test_not_padded_symbol_runs_buckets_only(mlp, tmp_path):
    model, builds, _, _ = mlp
    dim = {**BATCH, "padding": None, "not_padded": "softmax reduces over a dim of size batch (model.py:12)"}
    path = splice(builds, [dim], [["batch", None], ["batch", None]], tmp_path / "np.bundle")
    m = mlrt.load(path)
    assert m.dynamic_dims[0].padded is False
    assert m.dynamic_dims[0].not_padded.startswith("softmax reduces")
    for b in (1, 4, 8):
        x, y = _inputs(b)
        np.testing.assert_allclose(m.run(x, y), _ref(model, x, y), rtol=1e-5, atol=1e-5)
    x, y = _inputs(5)
    with pytest.raises(mlrt.Error, match=r"input 0 \('x'\) dim 0 \(batch\): size 5 has no compiled code: this bundle "
                                         r"runs batch at 1, 4, 8 only, and not padded to the next bucket "
                                         r"\(softmax reduces over a dim of size batch \(model.py:12\)\)"):
        m.run(x, y)
    with pytest.raises(mlrt.Error, match="has no compiled code"):
        m.output_shapes(x, y)


def test_python_threads_at_different_shapes(mlp):
    model, _, path, _ = mlp
    m = mlrt.load(path, num_threads=1)
    expected = {b: m.run(*_inputs(b)) for b in range(1, 9)}
    failures = []

    def worker(t):
        for r in range(40):
            b = 1 + (t * 3 + r) % 8
            out = m.run(*_inputs(b))
            if out.shape != (b, 4) or not np.array_equal(out, expected[b]):
                failures.append((t, r, b))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_cpu_only_dynamic_bundle_on_cuda(mlp):
    _, _, path, _ = mlp
    with pytest.raises(mlrt.Error, match=r"built for cpu only; rebuild with mlpack build --target cuda"):
        mlrt.load(path, device="cuda:0")


def test_version_1_header_with_a_version_2_manifest(mlp, tmp_path):
    _, builds, _, _ = mlp
    manifest, sections = splice_manifest(builds, [BATCH], [["batch", None], ["batch", None]])
    bf.write_bundle(tmp_path / "v1.bundle", manifest, sections)
    data = bytearray((tmp_path / "v1.bundle").read_bytes())
    struct.pack_into("<I", data, 8, 1)
    (tmp_path / "v1.bundle").write_bytes(bytes(data))
    with pytest.raises(mlrt.Error, match="format_version disagrees"):
        mlrt.load(tmp_path / "v1.bundle")


def test_version_2_without_programs_is_static(mlp, tmp_path):
    """A version-2 manifest without `programs` reads like version 1."""
    _, builds, _, _ = mlp
    info = bf.read_bundle(builds[1][1])
    manifest = dict(info.manifest, format_version=2)
    sections = [(s.name, bf.section_bytes(builds[1][1], s.name), s.alignment) for s in info.sections
                if s.name != "manifest"]
    write_v2(tmp_path / "s.bundle", manifest, sections)
    m = mlrt.load(tmp_path / "s.bundle")
    assert m.dynamic_dims == [] and m.inputs[0].shape == (4, 8)
    x, y = _inputs(4)
    np.testing.assert_allclose(m.run(x, y), mlrt.load(builds[1][1]).run(x, y), rtol=0, atol=0)


def _del(path):
    def edit(m):
        *head, last = path
        node = m
        for k in head:
            node = node[k]
        del node[last]
    return edit


def _set(path, value):
    def edit(m):
        *head, last = path
        node = m
        for k in head:
            node = node[k]
        node[last] = value
    return edit


HOSTILE = [
    (_set(["dynamic_dims", 0, "buckets"], [4, 1, 8]), "buckets must be strictly increasing"),
    (_set(["dynamic_dims", 0, "buckets"], [1, 1, 8]), "buckets must be strictly increasing"),
    (_set(["dynamic_dims", 0, "buckets"], [0, 4, 8]), r"buckets must be integers within 1\.\.8"),
    (_set(["dynamic_dims", 0, "buckets"], []), "'buckets' must be an array"),
    (_set(["dynamic_dims", 0, "max"], 16), r"the last bucket \(8\) must equal max \(16\)"),
    (_set(["dynamic_dims", 0, "min"], 9), "min 9 > max 8"),
    (_set(["dynamic_dims", 0, "max"], 1 << 41), r"'min' and 'max' must be integers in \[0, 2\^40\]"),
    (_set(["dynamic_dims", 0, "min"], -1), r"'min' and 'max' must be integers"),
    (_set(["dynamic_dims", 0, "name"], ""), "'name' must be 1..128 printable"),
    (_set(["dynamic_dims", 0, "name"], "ba tch"), "'name' must be 1..128 printable"),
    (_set(["dynamic_dims"], []), "needs a non-empty array 'dynamic_dims'"),
    (_del(["dynamic_dims"]), "needs a non-empty array 'dynamic_dims'"),
    (lambda m: m["dynamic_dims"].append(dict(m["dynamic_dims"][0])), "duplicate symbol 'batch'"),
    (lambda m: m["dynamic_dims"].append({**m["dynamic_dims"][0], "name": "seq", "padding": None}),
     r"\('seq'\) sizes no input dim"),
    (lambda m: m["dynamic_dims"].append({**m["dynamic_dims"][0], "name": "seq"}),
     "output 0 dim 0 is already cut by another symbol"),
    (_set(["dynamic_dims", 0, "padding"], 5), "'padding' must be null or"),
    (_set(["dynamic_dims", 0, "padding", "outputs", 0, "output"], 5), "output 5 is out of range"),
    (_set(["dynamic_dims", 0, "padding", "outputs", 0, "output"], -1), "needs integers output, dim, mul"),
    (_set(["dynamic_dims", 0, "padding", "outputs", 0, "dim"], 2), "dim 2 is out of range for output 0 of rank 2"),
    (_set(["dynamic_dims", 0, "padding", "outputs", 0, "dim"], 1), "is static"),
    (_set(["dynamic_dims", 0, "padding", "outputs", 0, "mul"], -1), "needs integers output, dim, mul"),
    (_set(["dynamic_dims", 0, "padding", "outputs", 0, "add"], -5), "add \\+ mul \\* min is negative"),
    (lambda m: m["dynamic_dims"][0]["padding"]["outputs"].append(m["dynamic_dims"][0]["padding"]["outputs"][0]),
     "lists that output dim twice"),
    (_set(["dynamic_dims", 0, "padding", "outputs"], []), r"output 0 dim 0 changes with symbol 'batch'"),
    (_set(["dynamic_dims", 0, "padding", "outputs", 0, "mul"], 2), r"padding of 'batch' says 0 \+ 2 \* 1 = 2"),
    (_set(["dynamic_dims", 0, "not_padded"], 7), "'not_padded' must be a string"),
    (_del(["programs", 0, "sizes", "batch"]), "misses symbol 'batch'"),
    (_set(["programs", 0, "sizes", "seq"], 1), "names 'seq', which is not a symbol"),
    (_set(["programs", 0, "sizes", "batch"], 3), r"sizes\.batch is not one of its buckets"),
    (_set(["programs", 1, "sizes", "batch"], 1), r"programs\[1\] has the same sizes as programs\[0\]"),
    (_set(["programs", 1, "section"], "cpu.nope"), "code section 'cpu.nope' is missing"),
    (_set(["programs", 1, "section"], "weights"), "code section may not be 'weights'"),
    (_set(["programs", 1, "entry"], 3), "needs strings 'section' and 'entry'"),
    (lambda m: m["programs"].pop(), r"one program per combination of buckets: 3 combination\(s\), 2 program\(s\)"),
    (_set(["programs"], []), "'programs' must be an array of 1"),
    (_set(["programs"], {}), "'programs' must be an array of 1"),
    (lambda m: m["programs"][0]["call"].append("output:0"), r"output 0 must appear exactly once in programs\[0\]\.call"),
    (lambda m: m["programs"][0]["call"].remove("arena"), "arena exactly once"),
    (lambda m: m["programs"][2]["call"].append("weight:9999"), "out of range"),
    (_set(["programs", 0, "arena_bytes"], 1 << 50), "'arena_bytes' missing or out of range"),
    (_set(["programs", 0, "output_shapes"], []), "'output_shapes' must hold one shape per output"),
    (_set(["programs", 0, "output_shapes", 0], [1, 5]), "dim 1 is 5, but the output's shape says 4"),
    (_set(["programs", 0, "output_shapes", 0], [1]), "must have the output's rank"),
    (_set(["programs", 0, "output_shapes", 0], [1 << 41, 4]), r"dimensions must be integers in \[0, 2\^40\]"),
    (_set(["programs", 0, "output_shapes", 0], [2, 4]), r"output_shapes\[0\]\[0\] is 2, but the padding"),
    (_del(["inputs", 0, "symbols"]), "a shape with -1 needs 'symbols'"),
    (_set(["inputs", 0, "symbols"], ["nope", None]), "must name a symbol of dynamic_dims \\(got 'nope'\\)"),
    (_set(["inputs", 0, "symbols"], ["batch"]), "'symbols' must be an array with one entry per dim"),
    (_set(["inputs", 0, "symbols"], ["batch", "batch"]), "dim 1 is static, so its symbol must be null"),
    (_set(["inputs", 0, "shape"], [-2, 8]), "must be -1 \\(dynamic\\) or integers"),
    (_set(["weights", 0, "shape"], [-1, 16]), r"integers in \[0, 2\^40\]"),
    (_set(["outputs", 0, "symbols"], [None, "batch"]), "dim 1 is static, so its symbol must be null"),
    (_set(["targets", "cuda"], {"section": "cuda.ptx"}), "targets.cuda needs string ptx_isa and precision"),
    (_set(["targets", "cuda"], {"ptx_isa": "8.0", "min_sm": 80, "min_driver": 12000, "precision": "fp32"}),
     r"programs\[0\]: needs an object 'cuda' \(the bundle has a CUDA target\)"),
    (_del(["targets"]), "needs targets.cpu or targets.cuda"),
    (_set(["targets", "cpu", "features"], 5), "targets.cpu needs arch, cpu and features"),
]


@pytest.mark.parametrize("edit, message", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_hostile_version_2_manifest(mlp, tmp_path, edit, message):
    _, builds, _, _ = mlp
    path = splice(builds, [BATCH], [["batch", None], ["batch", None]], tmp_path / "h.bundle", edit)
    with pytest.raises(mlrt.Error, match=message):
        mlrt.load(path)


def test_dynamic_dims_without_programs(mlp, tmp_path):
    _, builds, _, _ = mlp
    path = splice(builds, [BATCH], [["batch", None], ["batch", None]], tmp_path / "h.bundle", _del(["programs"]))
    with pytest.raises(mlrt.Error, match="'dynamic_dims' without 'programs'"):
        mlrt.load(path)


# ------------------------------------------------------- two symbols, rank 3, an int64 input

class Seq(torch.nn.Module):
    """(batch, seq, 8) float and (batch, seq) int64 in; (batch, seq, 4) and (batch, 3) out."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 4)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x, ids):
        return self.proj(x) + ids.unsqueeze(-1).to(torch.float32), self.head(x[:, 0])


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    torch.manual_seed(1)
    model = Seq().eval()
    d = tmp_path_factory.mktemp("dynamic_seq")
    sizes = [{"batch": b, "seq": s} for b in (1, 3) for s in (2, 5)]
    builds = build_static(model, lambda batch, seq: [torch.randn(batch, seq, 8), torch.randint(0, 9, (batch, seq))],
                          sizes, d)
    dims = [{"name": "batch", "min": 1, "max": 3, "buckets": [1, 3],
             "padding": {"outputs": [{"output": 0, "dim": 0, "mul": 1, "add": 0},
                                     {"output": 1, "dim": 0, "mul": 1, "add": 0}]}},
            {"name": "seq", "min": 1, "max": 5, "buckets": [2, 5],
             "padding": {"outputs": [{"output": 0, "dim": 1, "mul": 1, "add": 0}]}}]
    path = splice(builds, dims, [["batch", "seq", None], ["batch", "seq"]], d / "seq_dynamic.bundle")
    return model, path


def test_two_symbols_rank_3_and_int64(seq):
    model, path = seq
    m = mlrt.load(path)
    assert [s.shape for s in m.inputs] == [("batch", "seq", 8), ("batch", "seq")]
    assert [s.shape for s in m.outputs] == [("batch", "seq", 4), ("batch", 3)]
    assert [d.name for d in m.dynamic_dims] == ["batch", "seq"]
    rng = np.random.default_rng(3)
    for b in (1, 2, 3):
        for s in (1, 2, 3, 4, 5):
            x = rng.standard_normal((b, s, 8), np.float32)
            ids = rng.integers(-5, 5, (b, s), dtype=np.int64)
            assert m.output_shapes(x, ids) == [(b, s, 4), (b, 3)]
            out, head = m.run(x, ids)
            with torch.no_grad():
                ref_out, ref_head = model(torch.from_numpy(x), torch.from_numpy(ids))
            np.testing.assert_allclose(out, ref_out.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(head, ref_head.numpy(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- an input updated in place

class AddInPlace(torch.nn.Module):
    def forward(self, x):
        x.add_(1.0)
        return x.sum(-1)


def test_input_mutation_write_back_at_dynamic_shapes(tmp_path):
    builds = build_static(AddInPlace(), lambda batch: [torch.randn(batch, 3)], [{"batch": 2}, {"batch": 4}],
                          tmp_path)
    m0 = bf.read_bundle(builds[0][1]).manifest
    assert m0["input_mutations"] == [{"input": 0, "output": 1}]
    dims = [{"name": "batch", "min": 1, "max": 4, "buckets": [2, 4],
             "padding": {"outputs": [{"output": 0, "dim": 0, "mul": 1, "add": 0},
                                     {"output": 1, "dim": 0, "mul": 1, "add": 0}]}}]
    m = mlrt.load(splice(builds, dims, [["batch", None]], tmp_path / "mut.bundle"))
    for b in (1, 2, 3, 4):
        x = np.arange(b * 3, dtype=np.float32).reshape(b, 3)
        before = x.copy()
        total = m.run(x)
        np.testing.assert_array_equal(x, before + 1)
        np.testing.assert_allclose(total, (before + 1).sum(-1), rtol=1e-6)


# ----------------------------------------------------------- the C++ runtime under sanitizers

@pytest.fixture(scope="module")
def asan(sanitizer_build) -> Path:
    return sanitizer_build("address")


def _asan_env():
    return {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0"}


def test_cpp_concurrent_runs_at_different_shapes(mlp, seq, asan):
    """stress_test concurrency: threads share the model, each run at its own shapes (OutputShapes,
    caller-provided and allocated outputs), bit-identical to a single-threaded run."""
    for path in (mlp[2], seq[1]):
        proc = subprocess.run([str(asan / "mlrt_stress_test"), "concurrency", str(path), "6", "30"],
                              capture_output=True, text=True, timeout=600, env=_asan_env())
        report = proc.stdout + proc.stderr
        assert proc.returncode == 0, report
        assert "6 threads x 30 runs, 0 mismatches, 0 errors" in proc.stdout, report
        assert int(re.search(r"\((\d+) input shapes\)", proc.stdout).group(1)) >= 3, report
        assert not any(marker in report for marker in SANITIZER_MARKERS), report


def test_cpp_concurrent_runs_at_different_shapes_tsan(mlp, sanitizer_build):
    proc = subprocess.run([str(sanitizer_build("thread") / "mlrt_stress_test"), "concurrency", str(mlp[2]), "4", "20"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TSAN_OPTIONS": "halt_on_error=1"})
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "0 mismatches, 0 errors" in proc.stdout, report
    assert "WARNING: ThreadSanitizer" not in report, report


def test_cpp_run_and_hostile_manifests_under_asan(mlp, asan, tmp_path):
    model, builds, path, _ = mlp
    x, y = _inputs(5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    exe = asan / "samples" / "cpp" / "mlrt_run"
    proc = subprocess.run([str(exe), str(path), "-i", str(tmp_path / "x.npy"), "-i", str(tmp_path / "y.npy"), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=_asan_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "input  x: float32[batch=1..8,8]" in proc.stdout
    np.testing.assert_allclose(np.load(tmp_path / "out0.npy"), _ref(model, x, y), rtol=1e-5, atol=1e-5)
    for i, (edit, _) in enumerate(HOSTILE):
        bad = splice(builds, [BATCH], [["batch", None], ["batch", None]], tmp_path / f"h{i}.bundle", edit)
        proc = subprocess.run([str(exe), str(bad), "-i", str(tmp_path / "x.npy"), "-i", str(tmp_path / "y.npy")],
                              capture_output=True, text=True, timeout=300, env=_asan_env())
        report = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "mlrt_run: DATA_LOSS: " in proc.stderr, f"hostile{i}: {report}"
        assert not any(marker in report for marker in SANITIZER_MARKERS), f"hostile{i}: {report}"


def test_cpp_service_with_shapes(mlp, tmp_path, asan):
    """mlrt_serve: READY shows dynamic dims as <symbol>=<min>..<max>; RUN takes a shape token."""
    _, builds, _, _ = mlp
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    one = build_static(model, lambda batch: [torch.randn(batch, 8)], [{"batch": 2}, {"batch": 6}], tmp_path)
    dims = [{"name": "batch", "min": 1, "max": 6, "buckets": [2, 6],
             "padding": {"outputs": [{"output": 0, "dim": 0, "mul": 1, "add": 0}]}}]
    path = splice(one, dims, [["batch", None]], tmp_path / "serve.bundle")
    x3 = np.random.default_rng(0).standard_normal((3, 8), np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x3)).numpy()
    values = ",".join(repr(float(v)) for v in x3.ravel())
    requests = ["INFO", f"RUN r1 3x8 {values}", f"RUN r2 {values}", "RUN r3 7x8 " + ",".join(["0"] * 56),
                "RUN r4 3x8 1,2", "RUN r5 3y8 1", "QUIT"]
    proc = subprocess.run([str(asan / "samples" / "cpp" / "mlrt_serve"), str(path), "--workers", "2"],
                          input="\n".join(requests) + "\n", capture_output=True, text=True, timeout=300,
                          env=_asan_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == lines[1] == "READY input float32 batch=1..6x8"
    replies = {line.split()[1]: line for line in lines[2:]}
    ok = replies["r1"].split()
    assert ok[0] == "OK"
    out = np.array([float(v) for v in ok[3].split(",")], np.float32).reshape(3, 4)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert replies["r2"].startswith("ERR r2 input 'input' has dynamic dims: give its shape")
    assert "7 is outside 1..6" in replies["r3"]
    assert replies["r4"].startswith("ERR r4 expected 24 values, got 2")
    assert replies["r5"].startswith("ERR r5 bad shape '3y8'")
    assert not any(marker in proc.stderr for marker in SANITIZER_MARKERS), proc.stderr


def test_cpp_bench_on_a_dynamic_bundle(mlp, asan):
    _, _, path, _ = mlp
    exe = asan / "samples" / "cpp" / "mlrt_bench"
    for extra, shape in (([], "[8,8] [8,4]"), (["--dim", "batch=3"], "[3,8] [3,4]")):
        proc = subprocess.run([str(exe), str(path), "-n", "3", "--warmup", "1", *extra], capture_output=True,
                              text=True, timeout=300, env=_asan_env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"inputs {shape}" in proc.stdout and "median" in proc.stdout
    proc = subprocess.run([str(exe), str(path), "--dim", "batch=99"], capture_output=True, text=True, timeout=300,
                          env=_asan_env())
    assert proc.returncode == 1 and "99 is outside 1..8" in proc.stderr


CLANG = shutil.which("clang++-14") or shutil.which("clang++")


@pytest.mark.skipif(CLANG is None, reason="clang++ with libFuzzer not installed (scripts/setup.sh installs it as root)")
def test_fuzz_version_2_manifests_bounded(mlp, seq, tmp_path):
    """The libFuzzer harness of tests/test_trust.py, seeded with version-2 bundles, so mutations
    explore the dynamic_dims / programs / padding validation."""
    root = Path(__file__).parent.parent / "runtime"
    fuzzer = tmp_path / "bundle_fuzzer"
    sources = [str(root / "src" / n) for n in ("bundle_reader.cc", "checksum.cc", "json.cc", "sha256.cc", "status.cc")]
    subprocess.run([CLANG, "-std=c++17", "-O1", "-g", "-fsanitize=fuzzer,address,undefined",
                    "-fno-sanitize-recover=undefined", f"-I{root / 'include'}", f"-I{root / 'src'}",
                    f"-I{root / 'third_party' / 'xxhash'}",
                    str(root / "fuzz" / "bundle_fuzzer.cc"), *sources, "-o", str(fuzzer)], check=True)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(mlp[2], corpus / "mlp")
    shutil.copy(seq[1], corpus / "seq")
    seconds = int(os.environ.get("MLRT_FUZZ_SECONDS", "30"))
    proc = subprocess.run([str(fuzzer), str(corpus), f"-max_total_time={seconds}", "-max_len=2000000",
                           "-rss_limit_mb=4096"], capture_output=True, text=True, timeout=seconds + 300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-4000:]
    assert "ERROR:" not in report
