"""What models take and return beyond float32 tensors in tuples, built with mlpack and run with
mlrt, against eager PyTorch: constants and named tuples in the output structure, a tensor returned
twice, inputs mutated in place, float16/bfloat16 models, integer operands of float ops, and
aten.empty_permuted. A few models with many cases each: every build costs seconds."""

import collections
import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import mlpack
import mlrt
from conftest import TESTS, assert_matches_eager, run_without_torch

Pair = collections.namedtuple("Pair", ["first", "second"])


@dataclasses.dataclass
class Stats:
    mean: torch.Tensor
    spread: torch.Tensor


torch.export.register_dataclass(Stats)


class Record(collections.OrderedDict):
    """Like transformers' ModelOutput: an OrderedDict subclass registered as a pytree node."""


pytree.register_pytree_node(Record, lambda d: (list(d.values()), list(d.keys())),
                            lambda values, keys: Record(zip(keys, values)))


def assert_like_eager(got, ref, path="out", rtol=1e-4):
    """Same nesting, container kinds, field names and constants; tensors within rtol."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(got, np.ndarray), f"{path}: {type(got).__name__}"
        assert_matches_eager([got], [ref.detach().numpy()], rtol)
    elif isinstance(ref, tuple) and hasattr(ref, "_fields") or pytree.is_structseq_instance(ref) \
            or dataclasses.is_dataclass(ref):
        fields = (ref._fields if hasattr(ref, "_fields") else list(ref.__match_args__)
                  if pytree.is_structseq_instance(ref) else [f.name for f in dataclasses.fields(ref)])
        assert tuple(got._fields) == tuple(fields), path
        assert type(got).__name__ == type(ref).__name__, path
        for f in fields:
            assert_like_eager(getattr(got, f), getattr(ref, f), f"{path}.{f}", rtol)
    elif isinstance(ref, dict):
        assert isinstance(got, dict) and list(got) == list(ref), path
        for k in ref:
            assert_like_eager(got[k], ref[k], f"{path}[{k!r}]", rtol)
    elif isinstance(ref, (tuple, list)):
        assert type(got) is type(ref) and len(got) == len(ref), path
        for i, (g, r) in enumerate(zip(got, ref)):
            assert_like_eager(g, r, f"{path}[{i}]", rtol)
    elif isinstance(ref, float) and math.isnan(ref):
        assert isinstance(got, float) and math.isnan(got), path
    else:
        assert type(got) is type(ref) and got == ref, f"{path}: {got!r} != {ref!r}"


# --------------------------------------------------------------------------- output structure


class Structured(nn.Module):
    def forward(self, x):
        y = x * 2
        # (float("nan") would be fine here; torch.export itself refuses it: nan != nan.)
        return (y, None, 3, 0.5, True, "tag", float("inf"), -1.5e300, -(2 ** 62),
                {"max": torch.max(x, dim=1), "minmax": torch.aminmax(x, dim=0), "pair": Pair(x + 1, None),
                 "stats": Stats(x.mean(0), x.std(0)), "record": Record(a=x - 1, b=7)},
                [y, x * 3, x * 3, x],  # y again (same tensor), two equal computations, the input itself
                torch.var_mean(x, dim=1))


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("io") / "structured.bundle"
    result = mlpack.build(Structured(), (x,), path)
    with torch.no_grad():
        ref = Structured()(x)
    return x, ref, path, result.manifest


def test_constants_and_named_tuples(structured):
    x, ref, path, manifest = structured
    out = mlrt.load(path).run(x.numpy())
    assert_like_eager(out, ref)
    assert out[9]["max"].values is out[9]["max"][0]  # a namedtuple: by name and by position
    assert type(out[9]["max"]).__name__ == "max" and out[9]["max"]._fields == ("values", "indices")
    # The same tensor returned twice is one bundle output (and one array); equal computations too.
    assert out[10][0] is out[0] and out[10][1] is out[10][2]
    s = manifest["output_structure"]
    assert s["items"][1] == {"type": "none"} and s["items"][6] == {"type": "float", "value": "inf"}
    assert s["items"][9]["items"][0] == {"type": "namedtuple", "class": "torch.return_types.max",
                                         "fields": ["values", "indices"], "items": [1, 2]}
    assert s["items"][9]["items"][4]["type"] == "dict" and s["items"][9]["items"][4]["keys"] == ["a", "b"]
    assert s["items"][9]["items"][4]["class"].endswith("Record")
    tensors = [t for t in pytree.tree_leaves(ref) if isinstance(t, torch.Tensor)]
    assert len(manifest["outputs"]) == len(tensors) - 2  # y twice and x * 3 twice: one output each


def test_structure_without_torch(structured, tmp_path):
    """run_flat in a process that cannot import torch; `run`'s structure there too."""
    x, ref, path, manifest = structured
    npz = tmp_path / "in.npz"
    np.savez(npz, x.numpy())
    flat = run_without_torch(path, npz, tmp_path)
    assert len(flat) == len(manifest["outputs"])
    np.testing.assert_allclose(flat[0], (x * 2).numpy(), rtol=1e-6)
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import no_torch_run, mlrt, numpy as np\n"
            f"out = mlrt.load({str(path)!r}).run(np.load({str(npz)!r})['arr_0'])\n"
            "assert out[1] is None and out[2] == 3 and out[9]['max']._fields == ('values', 'indices')\n"
            "assert 'torch' not in sys.modules\n"
            "print(repr(out[9]['pair']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Pair(first=array(") and "second=None" in proc.stdout


def test_inspect_shows_structure(structured):
    _, _, path, _ = structured
    from click.testing import CliRunner

    from mlpack.cli import main as cli

    proc = CliRunner().invoke(cli, ["inspect", str(path)])
    assert proc.exit_code == 0, proc.output
    assert "returns: (output_0, None, 3, 0.5, True, 'tag', inf, -1.5e+300, -4611686018427387904, {" in proc.output
    assert "'max': max(values=output_1, indices=output_2)" in proc.output


def test_unknown_structure_node_is_a_clear_error():
    with pytest.raises(mlrt.Error, match="node of type 'set'"):
        mlrt._rebuild({"type": "set", "items": []}, [])
    assert mlrt._rebuild(0, ["a"]) == "a"  # bundles before constants: an int is an output index


# --------------------------------------------------------------------------- in-place updates


class Mutating(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0, 4.0]))

    def forward(self, x, y, idx):
        x.add_(1)
        x[:, 1:3] = y[:, :2] * self.scale[:2]
        z = x * 2
        y.fill_(0.25)
        x.index_put_((idx,), torch.ones(4))
        return z, x  # x is both a user output and the mutated input's new value


def test_input_mutation(tmp_path):
    gen = torch.Generator().manual_seed(1)
    x, y, idx = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen), torch.tensor([2, 0])
    path = tmp_path / "mutating.bundle"
    manifest = mlpack.build(Mutating(), (x.clone(), y.clone(), idx), path).manifest
    ex, ey = x.clone(), y.clone()
    with torch.no_grad():
        ref = Mutating()(ex, ey, idx)
    names = [o["name"] for o in manifest["outputs"]]
    assert names == ["output_0", "output_1", "mutated:y"]
    assert manifest["input_mutations"] == [{"input": 0, "output": 1}, {"input": 1, "output": 2}]

    m = mlrt.load(path)
    ax, ay = x.numpy().copy(), y.numpy().copy()
    out = m.run(ax, ay, idx.numpy())
    assert_like_eager(out, ref)
    np.testing.assert_allclose(ax, ex.numpy(), rtol=1e-6)  # written back, like eager
    np.testing.assert_allclose(ay, ey.numpy(), rtol=1e-6)
    # run_flat writes nothing back: the new values are its outputs.
    bx, by = x.numpy().copy(), y.numpy().copy()
    flat = m.run_flat(bx, by, idx.numpy())
    np.testing.assert_array_equal(bx, x.numpy())
    np.testing.assert_array_equal(flat[2], ey.numpy())
    # Read-only arrays and keyword inputs: no write-back / written back by name.
    ro = x.numpy().copy()
    ro.flags.writeable = False
    m.run(ro, y=y.numpy().copy(), idx=idx.numpy())
    np.testing.assert_array_equal(ro, x.numpy())
    kx, ky = x.numpy().copy(), y.numpy().copy()
    m.run(kx, y=ky, idx=idx.numpy())
    np.testing.assert_allclose(ky, ey.numpy(), rtol=1e-6)


class Counting(nn.Module):
    """Updates its own state (like BatchNorm's running stats in train mode): not an input mutation."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return x * self.calls


def test_buffer_mutation_still_refused(tmp_path):
    with pytest.raises(mlpack.BuildError, match=r"mutates 'calls' during forward \(BUFFER_MUTATION\)"):
        mlpack.build(Counting(), (torch.randn(3, 4),), tmp_path / "counting.bundle")


# --------------------------------------------------------------------------- float16 / bfloat16


class Half(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        gen = torch.Generator().manual_seed(2)
        self.fc = nn.Linear(16, 8).to(dtype)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(8, 16, generator=gen) * 0.3)
        self.conv = nn.Conv2d(2, 4, 3, padding=1).to(dtype)
        self.dtype = dtype

    def forward(self, x, img):
        h = torch.nn.functional.gelu(self.fc(x))
        c = torch.relu(self.conv(img)).sum((2, 3))
        bias = torch.full((8,), 0.1, dtype=self.dtype)
        return h + bias, c, (h.float() * 3).sum(1), (x.float() * 1.001).to(self.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype, tmp_path):
    gen = torch.Generator().manual_seed(3)
    x, img = torch.randn(4, 16, generator=gen).to(dtype), torch.randn(1, 2, 6, 6, generator=gen).to(dtype)
    model = Half(dtype).eval()
    path = tmp_path / "half.bundle"
    manifest = mlpack.build(model, (x, img), path).manifest
    with torch.no_grad():
        ref = model(x, img)
        ref32 = Half(dtype).eval().float()  # same weights, computed in float32: what the bundle does
        ref32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    port = "float16" if dtype == torch.float16 else "float32"
    assert [i["dtype"] for i in manifest["inputs"]] == [port, port]
    assert [o["dtype"] for o in manifest["outputs"]] == [port, port, "float32", port]
    if dtype == torch.bfloat16:
        assert manifest["inputs"][0]["torch_dtype"] == "bfloat16" and "torch_dtype" not in manifest["outputs"][2]
    as_port = (lambda t: t.numpy()) if dtype == torch.float16 else (lambda t: t.float().numpy())
    out = mlrt.load(path).run(as_port(x), as_port(img))
    # vs eager in the model's dtype: eager rounds every intermediate, the bundle computes in float32
    # and rounds once at the end. bfloat16 keeps 8 bits (2^-8 = 3.9e-3), float16 11 (4.9e-4).
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    for got, r in zip(out, ref):
        assert got.dtype == np.dtype(port if r.dtype == dtype else "float32")
        assert_matches_eager([got.astype(np.float32)], [r.float().numpy()], rtol=tol)
    # vs the same weights in float32: only the final rounding differs (half an ulp of the dtype).
    with torch.no_grad():
        ref_f = ref32(x.float(), img.float())
    for got, r in zip(out[:2], ref_f[:2]):
        assert_matches_eager([got.astype(np.float32)], [r.to(dtype).float().numpy()], rtol=tol / 2)
    if dtype == torch.bfloat16:
        # bfloat16 outputs hold bfloat16 values; float32 inputs are rounded to bfloat16 on entry.
        for got in (out[0], out[1], out[3]):
            np.testing.assert_array_equal(got, torch.from_numpy(got).bfloat16().float().numpy())
        nudged = x.float().numpy() * np.float32(1 + 2 ** -12)  # below half a bfloat16 ulp
        np.testing.assert_array_equal(mlrt.load(path).run(nudged, as_port(img))[3], out[3])


# --------------------------------------------------------------------------- dtypes and odd ops


class Promoting(nn.Module):
    def forward(self, i, j, img):
        e = torch.empty_like(img).fill_(0.5)  # aten.empty_permuted on a channels-last input
        return (i ** 0.5, torch.clamp(i, 0.5, 2.5), torch.clamp(i, min=0.5), torch.sigmoid(i), i / 2, i * 0.5,
                torch.true_divide(i, j), torch.sqrt(j), (i > 2) + 0.5, torch.where(i > 2, i, 0.5), e + img)


def test_int_promotion_and_empty_permuted(tmp_path):
    i = torch.arange(-3, 9).reshape(3, 4)
    j = torch.arange(1, 13).reshape(3, 4)
    img = torch.randn(1, 3, 4, 4).to(memory_format=torch.channels_last)
    path = tmp_path / "promote.bundle"
    result = mlpack.build(Promoting(), (i, j, img), path)
    with torch.no_grad():
        ref = Promoting()(i, j, img)
    out = mlrt.load(path).run(i.numpy(), j.numpy(), img.numpy())
    assert [o.dtype for o in out] == [np.float32] * len(ref)
    assert_like_eager(out, ref)
    assert result.manifest["graph_passes"]["empty_permuted_decomposed"] == 1
    assert json.loads(json.dumps(result.manifest)) == result.manifest
