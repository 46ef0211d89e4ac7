"""Dynamic dims end to end: mlpack build --dynamic / .pt2 dynamic_shapes -> one bundle -> mlrt at every size.

Every model runs at its lower bound, its upper bound, every bucket and sizes between buckets, each
compared with eager PyTorch at that size (none only at the bound). The bundle-level promises are
checked on the manifest: format version 2, one weights section shared by all programs (the same
bytes as a static bundle's), each program's arena at its live-bytes lower bound.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import assert_matches_eager, flat_outputs

import mlpack
import mlrt
from mlpack.bundle import read_bundle
from mlpack.cli import main as cli


class SmallNet(nn.Module):
    """conv + BN + ReLU + max pool + residual + global pool + Linear: the CNN ops, batch-independent."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)
        y = F.relu(y + self.c2(y))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class MaskedEncoder(nn.Module):
    """Token ids and an attention mask (1 = token, 0 = padding), as a BERT-style encoder takes them."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.pos = nn.Parameter(torch.randn(1, 16, 32) * 0.1)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)

    def forward(self, ids, mask):
        x = self.emb(ids) + self.pos[:, : ids.shape[1]]
        return self.layer(x, src_key_padding_mask=mask == 0)


class CausalDecoder(nn.Module):
    """A GPT-style block: causal self-attention (SDPA, is_causal) and a GELU MLP, then logits."""

    def __init__(self, vocab=64, d=32, heads=4):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        x = x + self.ff(self.ln2(x))
        return self.head(x)


def _eager(model, *xs):
    with torch.no_grad():
        return flat_outputs(model(*[torch.from_numpy(x) for x in xs]))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    d = tmp_path_factory.mktemp("dyn_cnn")
    result = mlpack.build(model, [torch.randn(2, 3, 12, 12)], d / "dyn.bundle", dynamic=["x:0=1..8"])
    static = mlpack.build(model, [torch.randn(8, 3, 12, 12)], d / "static8.bundle")
    return model, result, static, d


def test_cnn_runs_at_every_batch_size(cnn):
    model, result, _, d = cnn
    m = mlrt.load(d / "dyn.bundle")
    rng = np.random.default_rng(0)
    assert [p["sizes"]["x_0"] for p in result.manifest["programs"]] == [1, 2, 4, 8]
    for n in range(1, 9):  # the bounds, every bucket and every size between
        x = rng.standard_normal((n, 3, 12, 12)).astype(np.float32)
        y = m.run(x)
        assert y.shape == (n, 10)
        assert_matches_eager([y], _eager(model, x))


def test_cnn_bundle_shares_weights_and_plans_each_program(cnn):
    _, result, static, d = cnn
    man = result.manifest
    info = read_bundle(d / "dyn.bundle")
    assert info.format_version == 2 and man["format_version"] == 2
    assert man["inputs"][0]["shape"] == [-1, 3, 12, 12] and man["inputs"][0]["symbols"] == ["x_0", None, None, None]
    assert man["outputs"][0]["shape"] == [-1, 10]
    (dim,) = man["dynamic_dims"]
    assert (dim["min"], dim["max"], dim["buckets"]) == (1, 8, [1, 2, 4, 8])
    assert dim["padding"] == {"outputs": [{"output": 0, "dim": 0, "mul": 1, "add": 0}]}
    # one copy of the weights, byte for byte the static bundle's
    sizes = {s.name: s.size for s in info.sections}
    static_sizes = {s.name: s.size for s in read_bundle(d / "static8.bundle").sections}
    assert sizes["weights"] == static_sizes["weights"]
    assert [(w["name"], w["shape"]) for w in man["weights"]] == \
        [(w["name"], w["shape"]) for w in static.manifest["weights"]]
    for p in man["programs"]:
        plan = p["memory_plan"]
        assert plan["arena_bytes"] <= 1.1 * plan["lower_bound_bytes"] + 64
    at8 = next(p for p in man["programs"] if p["sizes"]["x_0"] == 8)
    assert at8["arena_bytes"] == static.manifest["memory_plan"]["arena_bytes"]
    assert mlrt.load(d / "dyn.bundle").arena_bytes == max(p["arena_bytes"] for p in man["programs"])


def test_sizes_out_of_bounds_and_wrong_static_dims_are_refused(cnn):
    _, _, _, d = cnn
    m = mlrt.load(d / "dyn.bundle")
    for shape, message in [((9, 3, 12, 12), "outside 1..8"), ((0, 3, 12, 12), "outside 1..8"),
                           ((2, 3, 12, 13), "12")]:
        with pytest.raises(mlrt.Error, match=message):
            m.run(np.zeros(shape, np.float32))


def test_concurrent_runs_at_different_sizes(cnn):
    model, _, _, d = cnn
    m = mlrt.load(d / "dyn.bundle", num_threads=1)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((n, 3, 12, 12)).astype(np.float32) for n in (1, 3, 8, 5, 2, 7)]
    refs = [_eager(model, x) for x in xs]
    errors = []

    def work(k):
        try:
            for _ in range(10):
                assert_matches_eager([m.run(xs[k])], refs[k])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_masked_encoder_dynamic_batch_and_sequence(tmp_path):
    """Batch and sequence both pad between their buckets: the padded keys are masked by the
    model's own padding mask (zero-padded), which the compiler proves before allowing it."""
    torch.manual_seed(0)
    model = MaskedEncoder().eval()
    ids, mask = torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    result = mlpack.build(model, [ids, mask], tmp_path / "enc.bundle",
                          dynamic=["ids:0=batch:1..4", "mask:0=batch:1..4", "ids:1=seq:4..16", "mask:1=seq:4..16"],
                          buckets=["batch=1,4", "seq=4,8,16"])
    dims = {d["name"]: d for d in result.manifest["dynamic_dims"]}
    assert dims["batch"]["padding"] is not None
    assert dims["seq"]["padding"] is not None, dims["seq"].get("not_padded")
    m = mlrt.load(tmp_path / "enc.bundle")
    rng = np.random.default_rng(0)
    for b in (1, 2, 3, 4):
        for t in (4, 5, 8, 11, 16):  # buckets and lengths between them
            x = rng.integers(0, 100, (b, t)).astype(np.int64)
            msk = np.ones((b, t), np.int64)
            msk[0, t // 2:] = 0  # padding tokens in the first sentence
            y = m.run(x, msk)
            assert y.shape[:2] == (b, t)
            assert_matches_eager([y], _eager(model, x, msk))
    with pytest.raises(mlrt.Error, match="batch"):  # the two inputs disagree on the batch
        m.run(np.zeros((2, 8), np.int64), np.ones((3, 8), np.int64))


def test_causal_decoder_from_a_dynamic_pt2(tmp_path):
    """A .pt2 exported with dynamic_shapes keeps its dims (no --dynamic); the CLI builds and inspects it."""
    from torch.export import Dim

    torch.manual_seed(0)
    model = CausalDecoder().eval()
    seq = Dim("seq", min=2, max=12)
    ep = torch.export.export(model, (torch.randint(0, 64, (1, 6)),), dynamic_shapes={"ids": {1: seq}})
    torch.export.save(ep, tmp_path / "dec.pt2")
    out = tmp_path / "dec.bundle"
    built = CliRunner().invoke(cli, ["build", str(tmp_path / "dec.pt2"), "-o", str(out), "--buckets", "ids:1=2,6"])
    assert built.exit_code == 0, built.output
    assert "dynamic dim ids_1: 2..12, buckets [2, 6, 12]" in built.output
    shown = CliRunner().invoke(cli, ["inspect", str(out)]).output
    assert "dynamic dim ids_1: 2..12, buckets [2, 6, 12]" in shown
    assert "programs: 3" in shown
    m = mlrt.load(out)
    assert m.dynamic_dims[0].padded  # causal: a valid query never reaches a padded key
    rng = np.random.default_rng(0)
    for t in (2, 3, 6, 7, 11, 12):
        x = rng.integers(0, 64, (1, t)).astype(np.int64)
        y = m.run(x)
        assert y.shape == (1, t, 64)
        assert_matches_eager([y], _eager(model, x))
    with pytest.raises(mlrt.Error, match=r"2\.\.12"):
        m.run(np.zeros((1, 13), np.int64))


def test_build_errors(tmp_path):
    from torch.export import Dim

    model = nn.Linear(4, 2).eval()
    with pytest.raises(mlpack.BuildError, match="no input named 'x'"):
        mlpack.build(model, [torch.randn(2, 4)], tmp_path / "a.bundle", dynamic=["x:0=1..4"])
    with pytest.raises(mlpack.BuildError, match="outside the dim's range"):
        mlpack.build(model, [torch.randn(2, 4)], tmp_path / "a.bundle", dynamic=["0:0=1..4"], buckets=["0:0=1,9"])
    with pytest.raises(mlpack.BuildError, match="needs dynamic dims"):
        mlpack.build(model, [torch.randn(2, 4)], tmp_path / "a.bundle", buckets=["0:0=1,2"])
    ep = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes={"input": {0: Dim("b", min=1)}})
    with pytest.raises(mlpack.BuildError, match="upper bound"):
        mlpack.build(ep, None, tmp_path / "a.bundle")


@pytest.mark.parametrize("name", ["hf_bert", "tv_mobilenet_v3_small"])
def test_corpus_models_with_a_dynamic_batch(name, tmp_path):
    """Models nobody here wrote: a batch of 1..4 from buckets 1 and 4, so 2 and 3 run padded."""
    import corpus
    from mlpack.frontend import dynamic_dims

    model, example = corpus.make(name)
    result = mlpack.build(model, list(example), tmp_path / "m.bundle",
                          dynamic=[f"{i}:0=batch:1..4" for i in range(len(example))], buckets=["batch=1,4"])
    assert result.manifest["dynamic_dims"][0]["padding"] is not None  # the proof holds for the batch dim
    m = mlrt.load(tmp_path / "m.bundle")
    gen = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 4):
        xs = [dynamic_dims.resize(x, 0, n) for x in example]
        if xs[0].is_floating_point():  # distinct images, so a row mix-up would show
            xs[0] = xs[0] + 0.1 * torch.randn(xs[0].shape, generator=gen)
        elif n > 1:  # distinct sentences
            xs[0][1:] = torch.randint(0, 100, xs[0][1:].shape, generator=gen)
        assert_matches_eager(m.run_flat(*[x.numpy() for x in xs]), _eager(model, *[x.numpy() for x in xs]))


@pytest.mark.parametrize("name", ["hf_bert", "hf_llama"])
def test_corpus_text_models_with_a_dynamic_sequence(name, tmp_path):
    """Models nobody here wrote: a sequence of 2..16 from buckets 8 and 16, so lengths between run
    padded. BERT is given its attention mask (padding tokens in it), Llama is causal."""
    import corpus
    from mlpack.frontend import dynamic_dims

    model, example = corpus.make(name)
    result = mlpack.build(model, list(example), tmp_path / "m.bundle",
                          dynamic=[f"{i}:1=seq:2..16" for i in range(len(example))], buckets=["seq=8,16"])
    dim = result.manifest["dynamic_dims"][0]
    assert dim["padding"] is not None, dim.get("not_padded")  # the proof holds through attention
    m = mlrt.load(tmp_path / "m.bundle")
    gen = torch.Generator().manual_seed(1)
    for t in (2, 5, 8, 13, 16):
        xs = [dynamic_dims.resize(x, 1, t) for x in example]
        xs[0] = torch.randint(0, 100, xs[0].shape, generator=gen)
        if len(xs) > 1:
            xs[1][0, t // 2:] = 0  # padding tokens in the attention mask
        assert_matches_eager(m.run_flat(*[x.numpy() for x in xs]), _eager(model, *[x.numpy() for x in xs]))


def test_a_batch_of_zero_builds_and_runs(tmp_path):
    """torch-mlir divides by the zero dim lowering a view of an empty tensor (SIGFPE: it would kill
    the build's process); ops with empty results become constants first. A range from 0 has a
    program at 0, and a static build for a batch of 0 works too."""
    torch.manual_seed(0)
    model = SmallNet().eval()
    result = mlpack.build(model, [torch.randn(2, 3, 12, 12)], tmp_path / "z.bundle", dynamic=["x:0=0..4"])
    assert [p["sizes"]["x_0"] for p in result.manifest["programs"]] == [0, 1, 2, 4]
    m = mlrt.load(tmp_path / "z.bundle")
    assert m.run(np.zeros((0, 3, 12, 12), np.float32)).shape == (0, 10)
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 12)).astype(np.float32)
    assert_matches_eager([m.run(x)], _eager(model, x))
    mlpack.build(model, [torch.randn(0, 3, 12, 12)], tmp_path / "s.bundle")
    assert mlrt.load(tmp_path / "s.bundle").run(np.zeros((0, 3, 12, 12), np.float32)).shape == (0, 10)
