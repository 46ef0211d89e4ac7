"""The padding proof of dynamic dims (compiler/mlpack/frontend/dynamic_dims.py), without compiling anything.

A verdict "paddable" is checked against eager PyTorch: the model run on inputs zero-padded from v
to the bound, cut back, must equal the model run at v, for every v below the bound. A verdict "not
paddable" must name the op that mixes entries along the dim. The checker may refuse a model that
is paddable in fact, never wrongly accept one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mlpack.frontend import dynamic_dims as dd
from mlpack.errors import BuildError


def _verdict(model, examples, specs, names=None):
    names = names or [f"x{i}" for i in range(len(examples))]
    ep, dim_names = dd.export_dynamic(model.eval(), examples, names, [dd.parse_dynamic(s) for s in specs])
    ep = ep.run_decompositions()
    syms = dd.symbols(ep, names, dim_names)
    return {s.name: dd.padding_obstacle(ep, s) for s in syms}, syms


def _padded_equals_eager(model, examples, sym, v):
    """Runs the model at the bound on zero-padded inputs and at v; compares the outputs' leading entries."""
    big = [x.clone() for x in examples]
    small = list(big)
    for i, dim in sym.uses:
        small[i] = big[i].narrow(dim, 0, v)
        pad = torch.zeros_like(big[i])
        pad.narrow(dim, 0, v).copy_(small[i])
        big[i] = pad
    with torch.no_grad():
        yb, ys = model(*big), model(*small)
    yb, ys = (yb if isinstance(yb, tuple) else (yb,)), (ys if isinstance(ys, tuple) else (ys,))
    for a, b in zip(yb, ys):
        for d in range(a.dim()):
            if a.shape[d] != b.shape[d]:
                a = a.narrow(d, 0, b.shape[d])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, stride=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = self.c2(F.relu(self.bn(self.c1(x))))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class ClsToken(nn.Module):
    """A ViT-style class token concatenated in front of the tokens, then attention over tokens."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.attn(x, x, x, need_weights=False)[0][:, 0]


class MaskedEncoder(nn.Module):
    """nn.TransformerEncoderLayer batch_first (MultiheadAttention runs seq-first inside) with a padding mask."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)

    def forward(self, ids, mask):
        return self.layer(self.emb(ids), src_key_padding_mask=mask == 0)


class Unmasked(nn.Module):
    """The same encoder with no padding mask: padded tokens would be attended to."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)

    def forward(self, ids):
        return self.layer(self.emb(ids))


class HandAttention(nn.Module):
    """Hand-written attention: BERT's additive mask ((1 - mask) * finfo.min) or a causal mask from
    arange comparisons, a scale, softmax, then a projection; `norm` divides each row by its norm first."""

    def __init__(self, causal=False, norm=False):
        super().__init__()
        self.qkv, self.out = nn.Linear(16, 48), nn.Linear(16, 16)
        self.causal, self.norm = causal, norm

    def forward(self, x, mask):
        if self.norm:
            x = x / x.norm(dim=-1, keepdim=True)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) * 16 ** -0.5
        if self.causal:
            i = torch.arange(x.shape[1])
            scores = scores.masked_fill(i[None, :] > i[:, None], float("-inf"))
        scores = scores + (1.0 - mask[:, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        return self.out(torch.softmax(scores, -1) @ v)


class SdpaBlock(nn.Module):
    """F.scaled_dot_product_attention, causal or with a boolean mask (True: attend) from the input."""

    def __init__(self, causal):
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.causal = causal

    def forward(self, x, mask):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 2, 8).permute(2, 0, 3, 1, 4)
        attn_mask = None if self.causal else mask.bool()[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.causal)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *x):
        return self.fn(*x)


PADDABLE = [
    ("mlp", lambda: nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)), lambda: [torch.randn(6, 8)],
     ["0:0=b:1..6"]),
    ("convs batch", Convs, lambda: [torch.randn(6, 3, 9, 9)], ["0:0=b:1..6"]),
    ("cls token batch", ClsToken, lambda: [torch.randn(6, 5, 16)], ["0:0=b:1..6"]),
    ("encoder batch", MaskedEncoder, lambda: [torch.randint(0, 50, (6, 7)), torch.ones(6, 7, dtype=torch.long)],
     ["0:0=b:1..6", "1:0=b:1..6"]),
    ("cumsum prefix", lambda: Lambda(lambda x: torch.cumsum(x, 1) * 2), lambda: [torch.randn(3, 6)], ["0:1=t:1..6"]),
    ("pad in front", lambda: Lambda(lambda x: F.pad(x, (2, 0)) + 1), lambda: [torch.randn(3, 6)], ["0:1=t:1..6"]),
    ("rows of a flattened batch", lambda: Lambda(lambda x: (x.reshape(-1, 4) * 3).reshape(x.shape[0], 2, 4)),
     lambda: [torch.randn(6, 2, 4)], ["0:0=b:1..6"]),
    # Attention over a padded sequence: the padded keys are masked by the model's own mask.
    ("encoder seq, key padding mask", MaskedEncoder,
     lambda: [torch.randint(0, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)], ["0:1=s:1..7", "1:1=s:1..7"]),
    ("additive finfo.min mask", HandAttention, lambda: [torch.randn(2, 7, 16), torch.ones(2, 7)],
     ["0:1=s:1..7", "1:1=s:1..7"]),
    ("causal mask from arange", lambda: HandAttention(causal=True), lambda: [torch.randn(2, 7, 16), torch.ones(2, 7)],
     ["0:1=s:1..7", "1:1=s:1..7"]),
    ("sdpa causal", lambda: SdpaBlock(causal=True), lambda: [torch.randn(2, 7, 16), torch.ones(2, 7)],
     ["0:1=s:1..7", "1:1=s:1..7"]),
    ("sdpa boolean mask", lambda: SdpaBlock(causal=False), lambda: [torch.randn(2, 7, 16), torch.ones(2, 7)],
     ["0:1=s:1..7", "1:1=s:1..7"]),
    ("masked mean pooling", lambda: Lambda(lambda x, m: (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)),
     lambda: [torch.randn(2, 7, 4), torch.ones(2, 7)], ["0:1=s:1..7", "1:1=s:1..7"]),
]

NOT_PADDABLE = [
    ("mean over batch", lambda: Lambda(lambda x: x - x.mean(0)), lambda: [torch.randn(6, 3)], ["0:0=b:1..6"], "mean"),
    ("size as a value", lambda: Lambda(lambda x: x / x.shape[0]), lambda: [torch.randn(6, 3)], ["0:0=b:1..6"],
     "size as a value"),
    ("softmax over seq", lambda: Lambda(lambda x: torch.softmax(x, 1)), lambda: [torch.randn(2, 6)], ["0:1=t:1..6"],
     "softmax"),
    ("append after", lambda: Lambda(lambda x: torch.cat([x, x.new_ones(2, 1)], 1)), lambda: [torch.randn(2, 6)],
     ["0:1=t:1..6"], "cat"),
    ("last entry", lambda: Lambda(lambda x: x[:, -1]), lambda: [torch.randn(2, 6)], ["0:1=t:1..6"], "select"),
    ("pad after", lambda: Lambda(lambda x: F.pad(x, (0, 2), value=1.0)), lambda: [torch.randn(2, 6)], ["0:1=t:1..6"],
     "pad"),
    ("conv along seq", lambda: nn.Conv1d(2, 2, 3, padding=1), lambda: [torch.randn(1, 2, 6)], ["0:2=t:1..6"],
     "convolution"),
    ("batch inside a merged dim", lambda: Lambda(lambda x: x.transpose(0, 1).reshape(-1)), lambda: [torch.randn(6, 3)],
     ["0:0=b:1..6"], "merges"),
    ("encoder seq without a mask", Unmasked, lambda: [torch.randint(0, 50, (2, 7))], ["0:1=s:1..7"], "softmax"),
    ("a mask that marks padding with True", lambda: Lambda(
        lambda x, pad: torch.softmax((x @ x.transpose(1, 2)).masked_fill(pad[:, None, :], float("-inf")), -1) @ x),
     lambda: [torch.randn(2, 7, 4), torch.zeros(2, 7, dtype=torch.bool)], ["0:1=s:1..7", "1:1=s:1..7"], "softmax"),
    ("rows divided by their norm", lambda: HandAttention(norm=True), lambda: [torch.randn(2, 7, 16), torch.ones(2, 7)],
     ["0:1=s:1..7", "1:1=s:1..7"], "softmax"),
    ("plain mean over seq", lambda: Lambda(lambda x: x.mean(1)), lambda: [torch.randn(2, 7)], ["0:1=s:1..7"], "mean"),
    # The output's size, trunc(2.0 * h), is no polynomial in h (sympy refused it: a crash before).
    ("resize by a float scale", lambda: Lambda(lambda x: F.interpolate(x, scale_factor=2, mode="bicubic")),
     lambda: [torch.randn(1, 2, 6, 5)], ["0:2=h:2..6"], "not a polynomial"),
]


@pytest.mark.parametrize("name,make,inputs,specs", PADDABLE, ids=[p[0] for p in PADDABLE])
def test_paddable_verdicts_hold_in_eager(name, make, inputs, specs):
    torch.manual_seed(0)
    model, examples = make().eval(), inputs()
    verdicts, syms = _verdict(model, examples, specs)
    assert all(v is None for v in verdicts.values()), verdicts
    for sym in syms:
        for v in range(1, sym.hi):
            _padded_equals_eager(model, examples, sym, v)


@pytest.mark.parametrize("name,make,inputs,specs,reason", NOT_PADDABLE, ids=[p[0] for p in NOT_PADDABLE])
def test_mixing_ops_are_refused_with_their_name(name, make, inputs, specs, reason):
    torch.manual_seed(0)
    verdicts, _ = _verdict(make().eval(), inputs(), specs)
    (why,) = set(verdicts.values())
    assert why is not None and reason in why, why


def test_refusal_names_module_and_source_line():
    verdicts, _ = _verdict(Unmasked().eval(), [torch.randint(0, 50, (2, 7))], ["0:1=s:1..7"])
    assert "module 'layer.self_attn' (MultiheadAttention)" in verdicts["s"]
    assert ".py:" in verdicts["s"]


@pytest.mark.parametrize("spec,message", [
    ("x:0=1..", "upper bound"),
    ("x:0=4..2", "above max"),
    ("x=1..4", "INPUT:DIM"),
    ("x:0=b:1..99999999999999", "too large"),
])
def test_bad_declarations(spec, message):
    with pytest.raises(BuildError, match=message):
        dd.declarations([spec])


def test_declaration_forms_agree():
    from torch.export import Dim

    forms = [["x:0=batch:1..32"], {"x": {0: ("batch", 1, 32)}}, {"x": {0: Dim("batch", min=1, max=32)}},
             {"x": {0: "batch:1..32"}}]
    decls = [dd.declarations(f)[0] for f in forms]
    assert all((d.input, d.dim, d.name, d.lo, d.hi) == ("x", 0, "batch", 1, 32) for d in decls)
    with pytest.raises(BuildError, match="upper bound"):
        dd.declarations({"x": {0: Dim("batch", min=1)}})


def test_buckets():
    assert dd.default_buckets(1, 32) == [1, 2, 4, 8, 16, 32]
    assert dd.default_buckets(3, 20) == [3, 4, 8, 16, 20]
    assert dd.parse_buckets(["x:0=8,1,32", "seq=16"]) == {"x:0": [1, 8, 32], "seq": [16]}
    with pytest.raises(BuildError, match="expected"):
        dd.parse_buckets(["x:0=1;2"])


def test_affine_outputs():
    # output 0 grows with the dim (cls token in front: 1 + v), output 1 does not
    rules = dd.affine_outputs({2: [[1, 3, 8], [5]], 4: [[1, 5, 8], [5]], 8: [[1, 9, 8], [5]]})
    assert rules == [{"output": 0, "dim": 1, "mul": 1, "add": 1}]
