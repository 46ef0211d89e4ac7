"""Edge shapes never take the process down: zero-size dimensions (inputs, outputs, intermediates,
every position), 0-d inputs and outputs, rank 6, single elements, constructor ops (eye, arange in
8-bit types, embedding_bag), and every numpy layout `run` accepts (Fortran order, negative and
other strides, transposed views, byte-swapped, unaligned, read-only, numpy scalars).

Each model is built in a child process and run in another one (where torch cannot be imported),
so a crash fails the test with its signal instead of killing pytest. Several cases share one model
(a build costs seconds); the outputs of every layout variant are compared with eager PyTorch.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TESTS, assert_matches_eager, flat_outputs, run_cpp_sample


class ZeroSizeInputs(nn.Module):
    """Zero-size inputs in every position, reduced over, multiplied through (a matmul's K = 0:
    the output is all zeros, or the bias), and passed to zero-size outputs."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 0))  # Linear(0, 5): the output is the bias
        self.b = nn.Parameter(torch.randn(5))
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, a, b, c, d, e, img):
        return (torch.mm(a, b),                   # 3x0 @ 0x4 -> 3x4 zeros
                torch.bmm(d, e),                  # 2x3x0 @ 2x0x5
                F.linear(a, self.w, self.b),      # K = 0 plus a bias
                a.sum(1), a.mean(1), a.amax(0),          # empty reductions (the mean is NaN)
                torch.relu(c) * 2,                # zero-size output, leading dimension
                torch.cat([c, torch.ones(2, 5)]) + 1,   # zero-size operand of a concatenation
                self.conv(img),                   # batch 0 through the conv kernel
                d.transpose(1, 2) - 1)            # zero-size, transposed


class ZeroSizeIntermediates(nn.Module):
    """Non-empty inputs whose intermediates (and some outputs) have a zero-size dimension."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        empty_cols = x[:, :0]                     # 3x0 intermediate
        empty_rows = x[:0]                        # 0x4 intermediate
        mid = empty_cols.unsqueeze(-1).expand(3, 0, 4) * 2   # 3x0x4: zero in the middle
        return (torch.cat([empty_cols, x], 1).relu(),
                empty_cols.sum(1) + x[:, 0],
                self.fc(empty_rows),              # M = 0 through the GEMM: 0x5
                empty_rows @ x.t(),               # 0x3
                (x.t() @ empty_cols) @ empty_cols.t(),  # K = 0 inside a chain: 4x3 zeros
                mid,
                torch.softmax(empty_rows, 0))


class Scalars(nn.Module):
    """0-d inputs (float and int64) and 0-d outputs."""

    def forward(self, a, s, i):
        return a * s + s, (a.sum() * s), s * 2, i + 1, (a * i).amax(), torch.full((), 3.0) * s


class Rank6(nn.Module):
    """Rank-6 input and outputs, permutes and reductions over size-1 and other axes; single elements."""

    def forward(self, x, one, ones6):
        y = x * 2 + 1
        return (y.permute(5, 4, 3, 2, 1, 0).contiguous(), y.sum(3), torch.softmax(y, 2),
                y + one, (ones6 * x).sum((0, 2)), one * 3, ones6.relu(), one @ one)


class Constructors(nn.Module):
    """Constructor-style ops: eye (an 8-bit arange inside), aranges in 8-bit dtypes, embedding_bag
    with an empty bag, embedding of zero indices; 8-bit tensors with Python numbers."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 3, mode="sum")
        self.emb = nn.Embedding(10, 3)

    def forward(self, x, idx, offsets, no_idx):
        return (torch.eye(4) + x, torch.eye(4, 6, dtype=torch.int64) + 1,
                torch.arange(2, 9, 3, dtype=torch.int8), torch.arange(5, dtype=torch.uint8) * 2,
                self.bag(idx, offsets), self.emb(no_idx), torch.zeros(0, 3) + x.sum(),
                idx.to(torch.int8) - 3, idx.to(torch.uint8) * 2.5)   # 8-bit tensor and a Python number


def _zero_size_inputs():
    return ZeroSizeInputs(), (torch.randn(3, 0), torch.randn(0, 4), torch.randn(0, 5), torch.randn(2, 3, 0),
                              torch.randn(2, 0, 5), torch.randn(0, 3, 8, 8))


def _zero_size_intermediates():
    return ZeroSizeIntermediates(), (torch.randn(3, 4),)


def _scalars():
    return Scalars(), (torch.randn(3), torch.tensor(2.5), torch.tensor(3))


def _rank6():
    return Rank6(), (torch.randn(2, 1, 3, 1, 2, 3), torch.randn(1, 1), torch.randn(1, 1, 1, 1, 1, 1))


def _constructors():
    return Constructors(), (torch.randn(4, 4), torch.tensor([1, 2, 4, 5, 4, 3]), torch.tensor([0, 2, 2]),
                            torch.zeros(0, dtype=torch.int64))


MODELS = {"zero_size_inputs": _zero_size_inputs, "zero_size_intermediates": _zero_size_intermediates,
          "scalars": _scalars, "rank6": _rank6, "constructors": _constructors}

# Layout variants each model is run with (per input; "c" = as built). See _LAYOUTS in the runner.
VARIANTS = {
    "zero_size_inputs": [["c"] * 6, ["fortran", "reversed", "strided", "transposed", "reversed", "unaligned"]],
    "zero_size_intermediates": [["c"], ["fortran"], ["reversed"], ["strided"], ["transposed"], ["byteswapped"],
                                ["unaligned"], ["readonly"]],
    "scalars": [["c", "c", "c"], ["c", "scalar", "scalar"], ["reversed", "byteswapped", "unaligned"],
                ["strided", "readonly", "byteswapped"]],
    "rank6": [["c"] * 3, ["fortran", "reversed", "transposed"], ["reversed", "byteswapped", "fortran"],
              ["strided", "unaligned", "strided"], ["transposed", "fortran", "readonly"]],
    "constructors": [["c"] * 4, ["fortran", "reversed", "strided", "reversed"], ["byteswapped"] * 4],
}


def _build_all(out_dir: str, names: list[str]) -> None:
    """Child process: build each model, recording which one is in progress (a crash names it)."""
    import mlpack
    from mlpack.errors import BuildError

    out = Path(out_dir)
    for name in names:
        (out / "building").write_text(name)
        torch.manual_seed(0)
        model, inputs = MODELS[name]()
        try:
            mlpack.build(model.eval(), inputs, out / f"{name}.bundle")
            result = {"ok": True}
        except BuildError as e:  # a clear build-time error is allowed; the test decides if expected
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        (out / f"{name}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict]:
    """name -> {"ok": True} | {"ok": False, "error": ...}: every model built in child processes;
    one that crashes its builder is recorded with the signal, and the rest are built in a new one."""
    out = tmp_path_factory.mktemp("edge_bundles")
    results: dict[str, dict] = {}
    todo = list(MODELS)
    while todo:
        code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_edge_shapes as t; " \
               f"t._build_all(sys.argv[1], sys.argv[2:])"
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-W", "ignore", "-c", code, str(out), *todo], capture_output=True, text=True,
                              timeout=900)
        for name in list(todo):
            if (out / f"{name}.json").exists():
                results[name] = json.loads((out / f"{name}.json").read_text())
                results[name]["bundle"] = out / f"{name}.bundle"
                todo.remove(name)
        if proc.returncode != 0:
            name = (out / "building").read_text() if (out / "building").exists() else todo[0]
            results[name] = {"ok": False, "error": f"the build process died ({_describe(proc.returncode)}):\n"
                                                   f"{proc.stderr[-3000:]}"}
            todo.remove(name)
    return results


def _describe(rc: int) -> str:
    if rc < 0:
        return f"signal {signal.Signals(-rc).name}"
    return f"exit status {rc}"


# The child that runs a bundle: torch cannot be imported there (the runtime must not need it).
_RUNNER = r"""
import json, sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this process")
sys.meta_path.insert(0, _Block())
import numpy as np
import mlrt

def reversed_view(a):  # same values, a negative stride on every axis
    if a.ndim == 0:
        return a
    flip = (slice(None, None, -1),) * a.ndim
    return np.ascontiguousarray(a[flip])[flip]

def strided(a):  # every other element of a larger buffer along the last axis
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]

def unaligned(a):  # the same dtype at an odd address
    raw = np.zeros(a.nbytes + 1, np.uint8)
    v = raw[1:].view(a.dtype).reshape(a.shape)
    v[...] = a
    return v

def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a

LAYOUTS = {
    "c": lambda a: a,
    "fortran": np.asfortranarray,
    "reversed": reversed_view,
    "strided": strided,
    "transposed": lambda a: np.ascontiguousarray(a.T).T,
    "byteswapped": lambda a: a.astype(a.dtype.newbyteorder()),
    "unaligned": unaligned,
    "readonly": readonly,
    "scalar": lambda a: a[()],                       # numpy scalar (np.float32(2.5), np.int64(3))
}

bundle, inputs_path, variants_path, out_path = sys.argv[1:5]
with np.load(inputs_path) as z:
    arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
model = mlrt.load(bundle)
results = {}
for v, layouts in enumerate(json.loads(open(variants_path).read())):
    given = [LAYOUTS[name](a) for a, name in zip(arrays, layouts)]
    for a, g, name in zip(arrays, given, layouts):
        assert np.array_equal(np.asarray(g), a) and np.shape(g) == a.shape, name
    snapshot = [np.array(g, copy=True) for g in given]
    outputs = model.run_flat(*given)
    for s, g, name in zip(snapshot, given, layouts):  # inputs are read-only to the model
        assert np.array_equal(s, np.asarray(g), equal_nan=True), f"input changed ({name})"
    for k, o in enumerate(outputs):
        results[f"v{v}_{k}"] = o
    results[f"v{v}_n"] = np.array(len(outputs))
np.savez(out_path, **results)
"""


def _run_variants(bundle: Path, inputs: list[np.ndarray], variants: list[list[str]], tmp_path: Path):
    inputs_path, variants_path, out_path = tmp_path / "in.npz", tmp_path / "variants.json", tmp_path / "out.npz"
    np.savez(inputs_path, *inputs)
    variants_path.write_text(json.dumps(variants))
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", _RUNNER, str(bundle), str(inputs_path), str(variants_path),
                           str(out_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"running {bundle.name} failed ({_describe(proc.returncode)}):\n{proc.stderr[-3000:]}"
    with np.load(out_path) as z:
        return [[z[f"v{v}_{k}"] for k in range(int(z[f"v{v}_n"]))] for v in range(len(variants))]


def _reference(name: str):
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    with torch.no_grad():
        return [x.numpy() for x in inputs], flat_outputs(model.eval()(*inputs))


@pytest.mark.parametrize("name", list(MODELS))
def test_edge_shapes_build_run_and_match_eager(name, built, tmp_path):
    result = built[name]
    assert result["ok"], result["error"]
    inputs, reference = _reference(name)
    for layouts, outputs in zip(VARIANTS[name], _run_variants(result["bundle"], inputs, VARIANTS[name], tmp_path)):
        try:
            assert_matches_eager(outputs, reference)
        except AssertionError as e:
            raise AssertionError(f"input layouts {layouts}: {e}") from None


def test_zero_size_and_scalar_shapes_are_declared(built):
    import mlrt

    m = mlrt.load(built["zero_size_inputs"]["bundle"])
    assert [s.shape for s in m.inputs][:3] == [(3, 0), (0, 4), (0, 5)]
    assert m.outputs[0].shape == (3, 4) and m.outputs[6].shape == (0, 5)
    s = mlrt.load(built["scalars"]["bundle"])
    assert [x.shape for x in s.inputs] == [(3,), (), ()]
    assert [x.shape for x in s.outputs][1:] == [()] * 5


def test_zero_d_input_errors_name_the_shape(built):
    """A 0-d input is not a 1-element 1-d array (nor the reverse): both are refused, by shape."""
    import mlrt

    m = mlrt.load(built["scalars"]["bundle"])
    a = np.zeros(3, np.float32)
    with pytest.raises(mlrt.Error, match=r"input 1 \('s'\): expected shape \[\], got \[1\]"):
        m.run(a, np.ones(1, np.float32), np.int64(3))
    with pytest.raises(mlrt.Error, match=r"input 0 \('a'\): expected shape \[3\], got \[\]"):
        m.run(np.float32(1), np.float32(2), np.int64(3))
    with pytest.raises(mlrt.Error, match=r"input 1 \('s'\): expected dtype float32, got float64"):
        m.run(a, 2.5, np.int64(3))  # a Python float is float64: no silent casts


def test_edge_shapes_in_cpp(built, cpp_sample, tmp_path):
    """The C++ sample reads and writes 0-d and zero-size .npy files and runs them (null data
    pointers for the zero-byte inputs)."""
    for name in ("scalars", "zero_size_inputs"):
        inputs, reference = _reference(name)
        (tmp_path / name).mkdir()
        assert_matches_eager(run_cpp_sample(cpp_sample, built[name]["bundle"], inputs, tmp_path / name), reference)


def test_zero_input_channel_conv_builds_or_fails_cleanly(tmp_path):
    """A conv over zero input channels: the build either works (and matches eager) or stops with a
    clear BuildError; it never crashes (checked in a child process)."""
    code = f"""
import sys; sys.path.insert(0, {str(TESTS)!r})
import torch, torch.nn.functional as F, mlpack
from mlpack.errors import BuildError
class M(torch.nn.Module):
    def forward(self, x):
        return F.conv2d(x, torch.ones(4, 0, 3, 3), torch.arange(4.0))
try:
    mlpack.build(M(), (torch.randn(1, 0, 6, 6),), {str(tmp_path / 'c0.bundle')!r})
    print("built")
except BuildError as e:
    print("BuildError:", str(e).splitlines()[0])
"""
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{_describe(proc.returncode)}:\n{proc.stderr[-3000:]}"
    if proc.stdout.startswith("built"):
        x = torch.randn(1, 0, 6, 6)
        ref = flat_outputs(F.conv2d(x, torch.ones(4, 0, 3, 3), torch.arange(4.0)))
        assert_matches_eager(_run_variants(tmp_path / "c0.bundle", [x.numpy()], [["c"]], tmp_path)[0], ref)
    else:
        assert proc.stdout.startswith("BuildError: ") and len(proc.stdout.strip()) > len("BuildError: ") + 10
