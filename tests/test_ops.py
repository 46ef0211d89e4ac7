"""Op families beyond plain linalg, each built with mlpack and compared with eager PyTorch:
torch-mlir's tm_tensor ops (sort, topk, cumsum, scatter: compiler/mlpack/lower/tm_tensor.py), our own
decompositions (adaptive max pooling, det / slogdet, fmod, resizes: compiler/mlpack/frontend/decompositions.py),
and small configs of real architectures that needed them (RoBERTa, EdgeNeXt, Swin).
Several ops share one model where they can: every build costs seconds."""

import re

import numpy as np
import pytest
import torch
from torch import nn

import mlpack
import mlrt
from conftest import assert_matches_eager, flat_outputs


def _build_and_compare(model, inputs, tmp_path, rtol=1e-4):
    model = model.eval()
    with torch.no_grad():
        ref = flat_outputs(model(*inputs))
    result = mlpack.build(model, inputs, tmp_path / "m.bundle")
    out = mlrt.load(tmp_path / "m.bundle").run_flat(*[x.numpy() for x in inputs])
    assert_matches_eager(out, ref, rtol)
    return result, out


class SortFamily(nn.Module):
    """tm_tensor.sort (sort, argsort, topk) and tm_tensor.topk (kthvalue)."""

    def forward(self, x):
        v, i = torch.sort(x, dim=-1)
        vd, idd = torch.sort(x, dim=0, descending=True)
        a = torch.argsort(x, dim=1, descending=True)
        tv, ti = torch.topk(x, 3, dim=-1)
        sv, si = torch.topk(x, 2, dim=0, largest=False)
        kv, ki = torch.kthvalue(x, 4, dim=1)
        return v, i, vd, idd, a, tv, ti, sv, si, kv, ki


def test_sort_topk_kthvalue(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(5, 9)  # no ties: eager's order among equal keys is its own
    result, out = _build_and_compare(SortFamily(), (x,), tmp_path)
    assert out[1].dtype == np.int64 and sorted(out[1][0].tolist()) == list(range(9))
    assert result.manifest["memory_plan"]["arena_bytes"] > 0


class ScanFamily(nn.Module):
    """tm_tensor.scan: cumsum / cumprod, float and integer, inner and outer dims."""

    def forward(self, x, n):
        return torch.cumsum(x, 1), torch.cumsum(x, 0), torch.cumprod(x, -1), torch.cumsum(n, -1) * 2 + 1


def test_cumsum_cumprod(tmp_path):
    torch.manual_seed(1)
    x = torch.rand(3, 6, 5) + 0.5
    n = torch.randint(-5, 5, (4, 7))
    _build_and_compare(ScanFamily(), (x, n), tmp_path)


class ScatterFamily(nn.Module):
    """tm_tensor.scatter: scatter, scatter_add (repeated indices), index_put (+ accumulate), all
    non-mutating: the input stays as it was."""

    def forward(self, x, perm, idx, src, rows, vals):
        a = torch.scatter(x, 1, perm, src)
        b = torch.scatter_add(x, 1, idx, src)
        c = x.index_put((rows,), vals)
        d = x.index_put((rows.flip(0),), vals, accumulate=True)
        e = torch.scatter(x, 0, perm[:2, :4] % 4, 1.5)
        return a, b, c, d, e, x * 2


def test_scatter_index_put(tmp_path):
    torch.manual_seed(2)
    x = torch.randn(4, 8)
    perm = torch.stack([torch.randperm(8)[:5] for _ in range(4)])  # unique per row: order-free
    idx = torch.randint(0, 8, (4, 5))  # repeats: scatter_add sums them
    src = torch.randn(4, 5)
    rows = torch.tensor([3, 0])
    vals = torch.randn(2, 8)
    _build_and_compare(ScatterFamily(), (x, perm, idx, src, rows, vals), tmp_path)


class Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.uneven = nn.AdaptiveMaxPool2d((4, 3), return_indices=True)  # windows of 3 and 4 rows
        self.uniform = nn.AdaptiveMaxPool2d((5, 7))  # one window size at a fixed stride
        self.one_d = nn.AdaptiveMaxPool1d(4)

    def forward(self, x, s):
        v, i = self.uneven(x)
        return v, i, self.uniform(x), self.one_d(s), torch.nn.functional.adaptive_max_pool2d(x, 1)


def test_adaptive_max_pool(tmp_path):
    torch.manual_seed(3)
    _build_and_compare(Pools(), (torch.randn(2, 3, 10, 7), torch.randn(1, 4, 10)), tmp_path)


class Determinants(nn.Module):
    def forward(self, a, spd):
        sign, logabs = torch.linalg.slogdet(a)
        return torch.det(a), torch.linalg.det(a), sign, logabs, torch.logdet(spd)


def test_det_slogdet(tmp_path):
    torch.manual_seed(4)
    a = torch.randn(3, 5, 5)
    a[1, :, 2] = 0  # singular: det 0, sign 0, log|det| -inf
    b = torch.randn(2, 4, 4)
    spd = b @ b.mT + torch.eye(4)
    model = Determinants().eval()
    with torch.no_grad():
        ref = flat_outputs(model(a, spd))
    mlpack.build(model, (a, spd), tmp_path / "m.bundle")
    out = mlrt.load(tmp_path / "m.bundle").run_flat(a.numpy(), spd.numpy())
    assert np.isneginf(ref[3][1]) and np.isneginf(out[3][1]) and out[0][1] == 0 and out[2][1] == 0
    finite = [0, 2]  # -inf would make the tolerance (scaled by max |r|) infinite: compare the rest
    assert_matches_eager(out[:3] + [out[3][finite]] + out[4:], ref[:3] + [ref[3][finite]] + ref[4:])


class Resizes(nn.Module):
    """Every resize form the decompositions rewrite, and ones they leave to the generic path."""

    def forward(self, x, tall):
        f = nn.functional.interpolate
        return (f(x, size=(20, 27), mode="bilinear", align_corners=False),  # upscale, odd factors
                f(x, size=(20, 27), mode="bilinear", align_corners=True),
                f(x, scale_factor=(2.5, 1.5), mode="bilinear"),  # the scale given: eager's 1/scale
                f(x, size=(4, 5), mode="bilinear"),  # downscale
                f(x, size=x.shape[-2:], mode="bilinear"),  # same size: a copy
                f(x, size=(24, 22), mode="nearest"),  # whole factors 3, 2
                f(x, scale_factor=3, mode="nearest"),
                f(x, size=(12, 15), mode="nearest"),  # not whole: the generic path
                nn.Upsample(scale_factor=2, mode="bilinear")(tall))  # the height pass first


def test_resizes_match_eager(tmp_path):
    torch.manual_seed(6)
    x, tall = torch.randn(2, 3, 8, 11), torch.randn(1, 2, 40, 3)
    result, _ = _build_and_compare(Resizes(), (x, tall), tmp_path)
    assert result.manifest["targets"]["cpu"]["kernels"] == {"mlrt_matmul_f32": 10}  # two per bilinear resize


class MoreResizes(nn.Module):
    """Bicubic, 1-D linear and trilinear on the same matrices; nearest and nearest-exact by whole
    factors in 1, 2 and 3 dims as broadcasts; the generic path where matrices would cost more."""

    def forward(self, x, seq, vol, long_seq):
        f = nn.functional.interpolate
        return (f(x, size=(20, 27), mode="bicubic", align_corners=False),  # 2 matmuls
                f(x, size=(20, 27), mode="bicubic", align_corners=True),  # 2
                f(x, scale_factor=0.5, mode="bicubic"),  # 2: downscale, eager's 1/scale
                f(seq, scale_factor=3, mode="linear"),  # 1
                f(seq, size=7, mode="linear", align_corners=True),  # 1
                f(vol, scale_factor=2, mode="trilinear"),  # 3
                f(vol, size=(3, 5, 6), mode="trilinear", align_corners=True),  # 1: two dims keep their size
                f(x, scale_factor=2, mode="nearest-exact"),  # broadcasts from here on
                f(x, size=(12, 15), mode="nearest-exact"),  # not whole: the generic path
                f(seq, scale_factor=2, mode="nearest"),
                f(vol, scale_factor=(1, 2, 3), mode="nearest"),
                f(long_seq, scale_factor=4, mode="linear"))  # 256 -> 1024: dense matrices cost more


def test_more_resizes_match_eager(tmp_path):
    torch.manual_seed(8)
    inputs = (torch.randn(2, 3, 8, 11), torch.randn(2, 3, 10), torch.randn(1, 2, 4, 5, 6), torch.randn(1, 4, 256))
    result, _ = _build_and_compare(MoreResizes(), inputs, tmp_path)
    assert result.manifest["targets"]["cpu"]["kernels"] == {"mlrt_matmul_f32": 12}


class ResizePair(nn.Module):
    def forward(self, x):
        f = nn.functional.interpolate
        return f(x, scale_factor=2, mode="bilinear") + f(x, scale_factor=2, mode="nearest")


def test_resizes_with_a_dynamic_batch(tmp_path):
    """The rewritten resizes keep the batch symbolic: one bundle serves every batch size."""
    torch.manual_seed(7)
    model = ResizePair().eval()
    result = mlpack.build(model, [torch.randn(2, 3, 6, 7)], tmp_path / "m.bundle", dynamic=["x:0=1..4"])
    assert result.manifest["targets"]["cpu"]["kernels"] == {"mlrt_matmul_f32": 2}
    m = mlrt.load(tmp_path / "m.bundle")
    for batch in (1, 3):
        x = torch.randn(batch, 3, 6, 7)
        with torch.no_grad():
            ref = flat_outputs(model(x))
        assert_matches_eager(m.run_flat(x.numpy()), ref)


class Bicubic(nn.Module):
    def forward(self, x):
        return nn.functional.interpolate(x, scale_factor=2, mode="bicubic")


def test_resize_along_a_dynamic_dim(tmp_path):
    """A resized dim that is dynamic takes the generic path; its size, trunc(2.0 * h), is not
    paddable, so each bucket gets its own program (the padding proof used to raise sympy's error)."""
    torch.manual_seed(9)
    mlpack.build(Bicubic().eval(), [torch.randn(1, 3, 8, 5)], tmp_path / "m.bundle", dynamic=["x:2=4..8"])
    m = mlrt.load(tmp_path / "m.bundle")
    for h in (4, 8):
        x = torch.randn(1, 3, h, 5)
        with torch.no_grad():
            ref = flat_outputs(Bicubic()(x))
        assert_matches_eager(m.run_flat(x.numpy()), ref)


class RollFmod(nn.Module):
    def forward(self, x, y):
        i = torch.arange(8) - 3
        return torch.roll(x, (2, -1), (0, 1)), x[..., torch.fmod(i + 8, 8)], torch.fmod(i, 3), torch.fmod(y, 0.7)


def test_roll_and_fmod(tmp_path):
    torch.manual_seed(5)
    _build_and_compare(RollFmod(), (torch.randn(3, 8), torch.randn(6) * 3), tmp_path)


def test_a_lowering_torch_mlir_marks_wrong_is_refused():
    """torch-mlir lowers some unsupported cases to `cf.assert false`: that must stop the build,
    not be erased with the data-dependent asserts (it would compute wrong values)."""
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d

    from mlpack.lower.bufferize import strip_asserts
    from mlpack.errors import BuildError

    text = """func.func @forward(%a: tensor<4xf32>, %c: i1) -> tensor<4xf32> {
      %false = arith.constant false
      cf.assert %c, "data-dependent check"
      cf.assert %false, "unimplemented: only support cases with fixed stride size."
      return %a : tensor<4xf32>
    }"""
    ctx = ir.Context()
    torch_d.register_dialect(ctx)
    with ctx:
        with pytest.raises(BuildError, match=re.escape("only support cases with fixed stride size")):
            strip_asserts(ir.Module.parse(text))
        ok = ir.Module.parse(text.replace('cf.assert %false, "unimplemented: only support cases with fixed '
                                          'stride size."\n', ""))
        assert strip_asserts(ok) == 1 and "cf.assert" not in str(ok)


# --------------------------------------------------------------------------- real architectures


def _define_torchvision_ops() -> None:
    """transformers / timm import torchvision, whose module needs its C++ ops' schemas (this
    torchvision build has no compiled ops)."""
    try:
        torch.ops.torchvision.nms  # noqa: B018
    except (AttributeError, RuntimeError):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _define_torchvision_ops.lib = lib


class LastHidden(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).last_hidden_state


def _roberta():
    """Position ids come from a cumsum over the non-padding mask (tm_tensor.scan)."""
    pytest.importorskip("transformers")
    from transformers import RobertaConfig, RobertaModel

    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40)
    ids = torch.randint(2, 100, (2, 12))
    ids[1, -3:] = cfg.pad_token_id  # padding: its positions stay at padding_idx
    return LastHidden(RobertaModel(cfg)), (ids,)


def _timm(name, size, **kwargs):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs), (torch.randn(1, 3, size, size),)


ARCHITECTURES = {
    "roberta": _roberta,
    # Fourier positional encoding: cumsum of a mask (tm_tensor.scan) inside a conv network.
    "edgenext_xx_small": lambda: _timm("edgenext_xx_small", 32, depths=(1, 1, 2, 1)),
    # Shifted windows: torch.roll (index fmod) and the attention mask; two blocks per stage.
    "swin_small_config": lambda: _timm("swin_tiny_patch4_window7_224", 64, depths=(2, 2), embed_dim=16,
                                       num_heads=(1, 2), window_size=4, img_size=64),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_real_architecture_matches_eager(name, tmp_path):
    _define_torchvision_ops()
    torch.manual_seed(0)
    model, inputs = ARCHITECTURES[name]()
    _build_and_compare(model, inputs, tmp_path)


class SlicedOperands(nn.Module):
    """Matmuls whose B is a slice of a fused projection (a view at an offset, row stride 3d): the
    GEMM reads it in place, so its buffer must stay alive until that call (a packing scratch once
    landed on top of it)."""

    def __init__(self, d=32):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x, a):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return a @ v, a[0] @ k[0], x.transpose(-1, -2) @ v


def test_matmul_on_slices_of_a_fused_projection(tmp_path):
    torch.manual_seed(0)
    result, _ = _build_and_compare(SlicedOperands(), (torch.randn(2, 16, 32), torch.randn(2, 16, 16)), tmp_path)
    assert sum(result.manifest["targets"]["cpu"]["kernels"].values()) == 4  # every matmul on the GEMM


class ExpErf(nn.Module):
    def forward(self, x):
        return (torch.exp(x), torch.erf(x / 8), torch.tanh(x / 4), torch.log(x), torch.log(x.abs() * 1e-42),
                torch.log(x.abs() * 1e-6 + 1.0))


def test_exp_erf_tanh_log_over_the_float_range(tmp_path):
    """The inlined exp / erf / tanh / log (lower/llvm_codegen._VECTOR_MATH) against eager at every edge:
    -inf and a softmax mask's dtype minimum (0, computed without denormal intermediates), denormal
    results and (log) inputs, log near 1, the overflow threshold, inf, NaN. Relative error within a few ulp; denormals to 1 ulp of the
    smallest denormal; 0, inf and NaN exact."""
    edges = [-float("inf"), torch.finfo(torch.float32).min, -1e30, -200.0, -103.9, -103.0, -100.0, -95.0, -87.5,
             -87.3, -50.0, -1.0, -1e-8, 0.0, 1e-8, 0.5, 1.0, 10.0, 80.0, 88.7, 88.8, 1e30, float("inf"), float("nan")]
    x = torch.cat([torch.tensor(edges), torch.linspace(-110.0, 90.0, 1000)]).reshape(1, -1)
    model = ExpErf().eval()
    mlpack.build(model, (x,), tmp_path / "m.bundle")
    got = mlrt.load(tmp_path / "m.bundle").run_flat(x.numpy())
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    for g, w in zip(got, want):
        special = ~np.isfinite(w) | (w == 0)
        np.testing.assert_array_equal(g[special], w[special])
        g, w, xs = g[~special], w[~special], x.numpy()[~special]
        ok = np.abs(g - w) <= np.maximum(4e-7 * np.abs(w), 1.5e-45)
        assert ok.all(), (xs[~ok], g[~ok], w[~ok])
