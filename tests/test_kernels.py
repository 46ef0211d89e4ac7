"""The microkernels and the fusions around them (kernel_calls.py), one small model per path,
each compared with eager PyTorch (fp32, rtol 1e-4). The names say which rewrite they exercise."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mlpack
import mlrt
import zoo
from conftest import assert_matches_eager, flat_outputs


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


class Attention(nn.Module):
    def forward(self, q, k):
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ k


class Residual1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(16, 16, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


class Residual3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(8)
        with torch.no_grad():  # statistics a fold would get wrong if it ignored them
            self.bn.running_mean.uniform_(-0.3, 0.3), self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.uniform_(0.5, 1.5), self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


class GroupedResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 64, 1, groups=8)

    def forward(self, x):
        return torch.clamp(self.conv(x) + x, -1.0, 1.0)


class MixedConv(nn.Module):
    """MixNet-style: the channels split, each split through its own conv (1x1, padded 3x3 and 5x5,
    a depthwise one), the results concatenated. Every conv reads a channel slice at an offset."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(8, 12, 1)
        self.c3 = nn.Conv2d(8, 12, 3, padding=1)
        self.c5 = nn.Conv2d(8, 12, 5, padding=2, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        a, b, c, d = torch.split(torch.tanh(x), 8, dim=1)  # slices of an intermediate, not of the input
        return torch.cat([self.pw(b), self.c3(a).relu(), self.dw(d)], 1), self.c5(c)


class GroupedBottleneck(nn.Module):
    """RegNet-style: 1x1, grouped 3x3, 1x1, each with BN; three in a row have the same shapes, and
    bufferization then gives their grouped convs one shared view of a reused buffer."""

    def __init__(self, c, stride):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, stride, 1, groups=c // 16, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.proj = nn.Sequential(nn.Conv2d(c, c, 1, stride, bias=False), nn.BatchNorm2d(c)) if stride > 1 else None

    def forward(self, x):
        return torch.relu(self.c(self.b(self.a(x))) + (x if self.proj is None else self.proj(x)))


class LinearChain(nn.Module):
    def __init__(self, rows):
        super().__init__()
        self.rows = rows
        self.a = nn.Linear(300, 70)  # 300 > one K block of the GEMM (256): partial sums + epilogue
        self.b = nn.Linear(70, 33, bias=False)

    def forward(self, x):
        return self.b(torch.clamp(self.a(x), -0.5, 0.5))


class ResidualLinear(nn.Module):
    """One row through a wide Linear with a residual and a clamp: the packed one-row GEMV, its
    panels split across threads, a partial last panel, the whole epilogue."""

    def __init__(self, n=520):
        super().__init__()
        self.fc = nn.Linear(n, n)

    def forward(self, x):
        return torch.clamp(self.fc(x) + x, -1.0, 1.0)


class StridedMatmuls(nn.Module):
    """Matmuls on views, read in place by the GEMM: slices at an offset (A and B), a column
    stride (B gathered into panels, also with few rows), heads of a permuted fused qkv."""

    def forward(self, a, big, q):
        qq = q.view(2, 3, 16, 8).permute(1, 0, 2, 3)
        scores = torch.softmax(qq[0] @ qq[2].transpose(-1, -2), -1)
        return (a @ big[:, 8:40], a @ big[:, ::2], a[:, 4:20] @ big[4:20, :], a[:3, :16] @ big[:16, ::2],
                scores @ qq[1])


def _bn(m):
    with torch.no_grad():
        zoo._randomize_batchnorm(m, torch.Generator().manual_seed(3))
    return m.eval()


CASES = {
    "conv_bias_relu": (lambda: nn.Sequential(nn.Conv2d(3, 20, 3, padding=1), nn.ReLU()), [(1, 3, 17, 19)]),
    "conv_bn_relu6_stride2": (lambda: _bn(nn.Sequential(nn.Conv2d(5, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12),
                                                        nn.ReLU6())), [(2, 5, 15, 16)]),
    "conv_asymmetric_dilated": (lambda: nn.Conv2d(4, 7, (3, 5), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
                                [(1, 4, 12, 13)]),
    "conv_deep_k": (lambda: nn.Conv2d(64, 10, 3, padding=1), [(1, 64, 6, 6)]),  # K = 576: split K blocks
    "conv_residual_relu": (lambda: Residual(8), [(1, 8, 10, 10)]),
    # Rows of >= 16 outputs: panels inside one row read each tap at a fixed stride (1, 2 or 3),
    # except at the padding edges and where a panel crosses into the next row.
    "conv_stem_stride2_wide_rows": (lambda: nn.Conv2d(3, 16, 3, 2, 1), [(1, 3, 37, 70)]),
    "conv_stride3_wide_rows": (lambda: nn.Conv2d(4, 8, (3, 2), stride=3, padding=(1, 0)), [(1, 4, 20, 100)]),
    "conv_1x1_wide_rows": (lambda: nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU()), [(2, 8, 5, 48)]),
    # Grouped convs (1 < groups < C): each (image, group) pair on the im2col GEMM, pairs shared out
    # between threads; bias, BN, padding, residual and clamps fused as for plain convs.
    "conv_grouped_bias_batch2": (lambda: nn.Conv2d(8, 12, 3, padding=1, groups=2), [(2, 8, 9, 9)]),
    "conv_grouped_bn_relu_stride2": (lambda: _bn(nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1, groups=4, bias=False),
                                                               nn.BatchNorm2d(64), nn.ReLU())), [(1, 32, 16, 17)]),
    "conv_grouped_dilated_batch3": (lambda: nn.Conv2d(48, 48, 3, padding=2, dilation=2, groups=3),
                                    [(3, 48, 10, 10)]),
    "conv_grouped_1x1_residual": (lambda: GroupedResidual(), [(1, 64, 20, 20)]),
    "grouped_bottlenecks_shared_views": (lambda: _bn(nn.Sequential(GroupedBottleneck(64, 2), GroupedBottleneck(64, 1),
                                                                   GroupedBottleneck(64, 1))), [(1, 64, 16, 16)]),
    # No bias: torch-mlir allocates the output 5-D [N, G, C/G, H, W]; back to back, the second
    # conv reads that 5-D buffer too. Every conv must still be a kernel call (asserted below).
    "conv_grouped_no_bias_relu": (lambda: nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=2, bias=False), nn.ReLU()),
                                  [(1, 32, 16, 16)]),
    "conv_grouped_no_bias_chained": (lambda: nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1, groups=4, bias=False),
                                                           nn.Conv2d(32, 32, 3, 1, 1, groups=4, bias=False)),
                                     [(1, 16, 12, 12)]),
    "conv_grouped_deep_k": (lambda: nn.Conv2d(128, 64, 3, padding=1, groups=2), [(1, 128, 12, 12)]),  # K = 576
    "depthwise_pad_relu6": (lambda: _bn(nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False),
                                                      nn.BatchNorm2d(8), nn.ReLU6())), [(1, 8, 11, 11)]),
    "depthwise_stride2_bias": (lambda: nn.Conv2d(6, 6, 5, 2, 2, groups=6), [(1, 6, 13, 40)]),
    "inverted_residual_inplace": (lambda: _bn(zoo.InvertedResidual(16, 16, 1, 6)), [(1, 16, 14, 14)]),
    # Depthwise paths: rows shorter than a vector (6: merged tails; 3: lane by lane), 7x7 and 9x9
    # taps (vector), 11x11 (past the vector path: scalar taps), stride 3 and dilation (scalar taps),
    # stride 2 with odd padding (even/odd staging), batch 2, and rows too wide for the ring.
    "depthwise_inplace_short_rows": (lambda: _bn(zoo.InvertedResidual(8, 8, 1, 2)), [(2, 8, 9, 6)]),
    "depthwise_inplace_tiny_rows": (lambda: _bn(zoo.InvertedResidual(8, 8, 1, 2)), [(1, 8, 5, 3)]),
    "depthwise_7x7_taps": (lambda: nn.Conv2d(4, 4, 7, padding=3, groups=4), [(1, 4, 10, 19)]),
    "depthwise_9x9_taps": (lambda: nn.Conv2d(3, 3, 9, padding=4, groups=3), [(1, 3, 12, 21)]),
    "depthwise_11x11_scalar_taps": (lambda: nn.Conv2d(2, 2, 11, padding=5, groups=2), [(1, 2, 13, 17)]),
    "depthwise_stride3_dilated": (lambda: nn.Conv2d(5, 5, 3, stride=3, padding=2, dilation=2, groups=5),
                                  [(1, 5, 17, 23)]),
    "depthwise_stride2_odd_pad": (lambda: nn.Conv2d(6, 6, (3, 4), stride=2, padding=(2, 1), groups=6),
                                  [(2, 6, 21, 37)]),
    "depthwise_wide_rows_direct": (lambda: nn.Conv2d(2, 2, 3, padding=1, groups=2), [(1, 2, 5, 800)]),
    # Rows the ring cannot hold, where the compiler would otherwise reuse the input as the output.
    "depthwise_inplace_wide_rows_direct": (lambda: _bn(zoo.InvertedResidual(4, 4, 1, 2)), [(1, 4, 6, 1000)]),
    # Maps of < 32 positions: output channels in the lanes (mlrt_conv2d_small_f32), the batch's
    # positions as the rows; channel counts off the 16-lane panels, K past one K block.
    "conv_small_map_bias_relu_batch2": (lambda: nn.Sequential(nn.Conv2d(32, 40, 3, padding=1), nn.ReLU()),
                                        [(2, 32, 4, 4)]),
    "conv_small_map_residual_relu": (lambda: Residual(24), [(1, 24, 3, 3)]),
    "conv_small_map_stride2_dilated": (lambda: nn.Conv2d(16, 20, 3, stride=2, padding=2, dilation=2),
                                       [(1, 16, 7, 9)]),
    "conv_small_map_1x1": (lambda: nn.Conv2d(64, 24, 1), [(1, 64, 2, 3)]),
    # grouped on small maps (RegNet's late stages): each group's W_g^T in its own panels
    "conv_small_map_grouped_bn_relu": (lambda: _bn(nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, groups=3, bias=False),
                                                                 nn.BatchNorm2d(48), nn.ReLU())), [(1, 48, 2, 2)]),
    "conv_small_map_grouped_stride2_batch2": (lambda: nn.Conv2d(40, 100, 3, stride=2, padding=1, groups=5),
                                              [(2, 40, 6, 5)]),
    "conv_small_map_bn_relu6": (lambda: _bn(nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, bias=False),
                                                          nn.BatchNorm2d(8), nn.ReLU6())), [(1, 16, 5, 5)]),
    # 1-D convs as 2-D convs of height 1; grouped 1-D ones (a wav2vec2 positional conv) as grouped.
    "conv1d_stride2_batch2": (lambda: nn.Conv1d(8, 12, 5, padding=2, stride=2), [(2, 8, 30)]),
    "conv1d_residual_relu": (lambda: Residual1d(), [(1, 16, 40)]),
    "conv1d_stem_groupnorm_gelu": (lambda: nn.Sequential(nn.Conv1d(1, 32, 10, stride=5, bias=False),
                                                         nn.GroupNorm(32, 32), nn.GELU()), [(1, 1, 400)]),
    "conv_grouped_1d_padded": (lambda: nn.Conv1d(24, 24, 16, padding=8, groups=8), [(1, 24, 50)]),
    # 3-D convs: one im2col GEMM over all output depths (weights in A panels), padding read in place.
    "conv3d_bias_padded": (lambda: nn.Conv3d(4, 6, 3, padding=1), [(1, 4, 5, 8, 8)]),
    "conv3d_stem_stride_batch2": (lambda: nn.Conv3d(3, 16, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                                  [(2, 3, 4, 20, 18)]),
    "conv3d_bn_residual_relu": (lambda: Residual3d(), [(1, 8, 4, 6, 6)]),
    "conv3d_depth_dilated": (lambda: nn.Conv3d(20, 24, (2, 3, 3), padding=(0, 1, 1), dilation=(2, 1, 1)),
                             [(1, 20, 6, 5, 5)]),
    "linear_gemv": (lambda: LinearChain(1), [(1, 300)]),
    "linear_gemm": (lambda: LinearChain(40), [(40, 300)]),
    "linear_gemv_wide_residual": (lambda: ResidualLinear(), [(1, 520)]),
    "batch_matmul": (lambda: Attention(), [(3, 20, 16), (3, 24, 16)]),
    "matmul_strided_views": (lambda: StridedMatmuls(), [(24, 24), (24, 64), (2, 16, 24)]),
    # 3x3 stride-1 convs with >= 32 channels: Winograd F(2x2,3x3). Odd sizes leave partial tiles,
    # widths that are not a multiple of 16 tiles put panels across tile rows (the gather path).
    "winograd_bias_relu_odd": (lambda: nn.Sequential(nn.Conv2d(32, 40, 3, padding=1), nn.ReLU()),
                               [(2, 32, 13, 30)]),
    "winograd_residual_relu": (lambda: Residual(32), [(1, 32, 26, 18)]),
    "winograd_unpadded_bn_relu6": (lambda: _bn(nn.Sequential(nn.Conv2d(32, 40, 3, bias=False), nn.BatchNorm2d(40),
                                                             nn.ReLU6())), [(1, 32, 11, 10)]),
    "winograd_asymmetric_padding": (lambda: nn.Conv2d(32, 36, 3, padding=(0, 1)), [(1, 32, 11, 20)]),
    # one panel of tiles pays only with many channels (kernel_calls.WINOGRAD_ONE_PANEL_MIN_CHANNELS2)
    "winograd_few_tiles_many_channels": (lambda: nn.Conv2d(128, 256, 3, padding=1), [(1, 128, 7, 7)]),
    # Maps with enough tiles: F(4x4,3x3). Tile rows of 16 with a cut last tile, of 7 tiles (one
    # dummy lane per 8), of 14 (two), rows and columns cut at the bottom/right edges.
    "winograd4x4_bias_relu_ragged": (lambda: nn.Sequential(nn.Conv2d(32, 40, 3, padding=1), nn.ReLU()),
                                     [(2, 32, 30, 62)]),
    "winograd4x4_unpadded_bn_relu6": (lambda: _bn(nn.Sequential(nn.Conv2d(40, 32, 3, bias=False),
                                                                nn.BatchNorm2d(32), nn.ReLU6())), [(1, 40, 30, 29)]),
    "winograd4x4_asymmetric_padding": (lambda: nn.Conv2d(32, 36, 3, padding=(0, 1)), [(1, 32, 23, 54)]),
    "winograd4x4_residual_relu": (lambda: Residual(32), [(1, 32, 28, 28)]),
    # Pooling: taps in the padding skipped (the -inf / zero padded copy dropped), ceil mode's
    # bottom/right overhang, strides 1-3, dilation, rows of 1-40 outputs, avg with and without
    # counting the padding (the division stays a loop).
    "pool_max_stem_padded": (lambda: nn.MaxPool2d(3, 2, padding=1), [(1, 16, 32, 32)]),
    "pool_max_ceil_mode": (lambda: nn.MaxPool2d(3, 2, ceil_mode=True), [(2, 8, 31, 31)]),
    "pool_max_stride1_dilated": (lambda: nn.MaxPool2d(3, 1, padding=1, dilation=2), [(1, 4, 9, 40)]),
    "pool_max_stride3_wide": (lambda: nn.MaxPool2d((2, 5), 3, padding=(1, 2)), [(1, 3, 11, 86)]),
    "pool_max_1x1_map": (lambda: nn.MaxPool2d(2, 2), [(1, 5, 2, 3)]),
    "pool_avg_padded": (lambda: nn.AvgPool2d(3, 2, padding=1), [(1, 16, 15, 15)]),
    "pool_avg_no_pad_count_ceil": (lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
                                   [(1, 6, 14, 17)]),
    "pool_avg_2x2": (lambda: nn.AvgPool2d(2), [(2, 12, 8, 8)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_path_matches_eager(name, tmp_path):
    torch.manual_seed(0)
    make, shapes = CASES[name]
    model = make().eval()
    inputs = tuple(torch.randn(s) for s in shapes)
    with torch.no_grad():
        ref = flat_outputs(model(*inputs))
    padding_checked = name.startswith(("conv1d", "conv3d")) and "groupnorm" not in name
    result = mlpack.build(model, inputs, tmp_path / "m.bundle", dump_ir=tmp_path / "ir" if padding_checked else None)
    out = mlrt.load(tmp_path / "m.bundle").run_flat(*[x.numpy() for x in inputs])
    assert_matches_eager(out, ref)
    kernels = result.manifest["targets"]["cpu"]["kernels"]
    assert kernels, f"{name}: expected a microkernel call"
    if name == "matmul_strided_views":  # every matmul on a view is a kernel call, none a loop
        assert kernels == {"mlrt_matmul_f32": 6}, kernels
    assert ("mlrt_conv2d_winograd_f32" in kernels) == name.startswith("winograd"), kernels
    if name.startswith("conv3d"):
        assert kernels == {"mlrt_conv3d_f32": 1}, kernels
    if name.startswith("conv1d"):
        assert kernels == {"mlrt_conv2d_packed_f32": 1}, kernels
    if padding_checked:  # the padding is read in place, not copied
        assert "memref.copy" not in next((tmp_path / "ir").glob("*-kernels.mlir")).read_text()
    if name == "grouped_bottlenecks_shared_views":
        assert kernels.get("mlrt_conv2d_grouped_f32") == 3, kernels
    if name.startswith("conv_grouped"):
        assert kernels == {"mlrt_conv2d_grouped_f32": 2 if name.endswith("chained") else 1}, kernels
    if name.startswith("conv_small_map"):
        assert "mlrt_conv2d_small_f32" in kernels and "mlrt_conv2d_grouped_f32" not in kernels, kernels
    if name.startswith("pool"):
        assert kernels == {"mlrt_pool2d_f32": 1}, kernels
    if name.startswith("winograd"):  # the tile the name promises: F(4x4,3x3) or F(2x2,3x3)
        f4 = any(w["name"].endswith("(Winograd F(4x4,3x3))") for w in result.manifest["weights"])
        assert f4 == name.startswith("winograd4x4"), result.manifest["weights"]


def test_small_map_bottlenecks_are_only_kernel_calls(tmp_path):
    """RegNet's last stage (2x2 maps): bufferization hands a grouped conv its padded input's source
    as the output. The small-map conv reads its whole input before it writes, so the padding is
    absorbed in place: no pad copy is left, and every conv is a kernel call."""
    torch.manual_seed(4)
    model = _bn(nn.Sequential(GroupedBottleneck(64, 1), GroupedBottleneck(64, 1))).eval()
    x = torch.randn(1, 64, 2, 2)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    result = mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    assert result.manifest["targets"]["cpu"]["kernels"] == {"mlrt_conv2d_small_f32": 6}
    kernels_ir = next((tmp_path / "ir").glob("*-kernels.mlir")).read_text()
    assert "memref.copy" not in kernels_ir and "linalg.conv" not in kernels_ir and "linalg.map" not in kernels_ir
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(x.numpy()), ref)


def test_conv3d_reads_its_padding_in_place(tmp_path):
    """A padded 3-D conv reads its unpadded input (taps in the padding are zeros): the padded
    copy torch-mlir makes is gone, and the result still matches eager."""
    torch.manual_seed(5)
    model = Residual3d().eval()
    x = torch.randn(1, 8, 4, 6, 6)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    result = mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    assert result.manifest["targets"]["cpu"]["kernels"] == {"mlrt_conv3d_f32": 1}
    kernels_ir = next((tmp_path / "ir").glob("*-kernels.mlir")).read_text()
    assert "memref.copy" not in kernels_ir and "linalg.conv" not in kernels_ir
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(x.numpy()), ref)


def test_convs_read_channel_slices_in_place(tmp_path):
    """Each split's conv is a kernel call reading its slice at an offset, padded ones included,
    and writing its slice of the concatenated output in place: no copy is left."""
    torch.manual_seed(3)
    model = MixedConv().eval()
    x = torch.randn(1, 32, 12, 12)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    result = mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    assert sum(result.manifest["targets"]["cpu"]["kernels"].values()) == 4
    kernels_ir = next((tmp_path / "ir").glob("*-kernels.mlir")).read_text()
    assert kernels_ir.count("memref.copy") == 0 and "linalg.conv" not in kernels_ir
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(x.numpy()), ref)


class Fire(nn.Module):
    """SqueezeNet's fire module, then a conv reading the concatenation. `keep`: also return the
    1x1 branch, which then stays read after the concatenation."""

    def __init__(self, keep=False):
        super().__init__()
        self.keep = keep
        self.squeeze = nn.Conv2d(32, 8, 1)
        self.e1 = nn.Conv2d(8, 16, 1)
        self.e3 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        s = self.squeeze(x).relu()
        a, b = self.e1(s).relu(), self.e3(s).relu()
        y = self.head(torch.cat([a, b], 1))
        return (y, a * 2) if self.keep else y


@pytest.mark.parametrize("batch, keep, copies", [(1, False, 0), (1, True, 1), (2, False, 2)])
def test_convs_write_concatenation_slices_in_place(batch, keep, copies, tmp_path):
    """Each branch's conv (its ReLU fused) writes its slice of the concatenation: the copies go,
    except where a slice is not contiguous (batch 2) or the branch is read again afterwards."""
    torch.manual_seed(5)
    model = Fire(keep).eval()
    x = torch.randn(batch, 32, 9, 9)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    kernels_ir = next((tmp_path / "ir").glob("*-kernels.mlir")).read_text()
    assert kernels_ir.count("memref.copy") == copies and "linalg.conv" not in kernels_ir
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(x.numpy()), ref)


class DenseBlock(nn.Module):
    """DenseNet-style: each layer's input is concatenated with its output."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(16, 8, 3, padding=1)
        self.c2 = nn.Conv2d(24, 8, 3, padding=1)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = x.relu()
        y = torch.cat([x, self.c1(x).relu()], 1)
        return self.head(torch.cat([y, self.c2(y).relu()], 1))


def test_dense_block_convs_write_their_slices_in_place(tmp_path):
    """The convs write their slices; the inputs carried along (read by the next conv) are still
    copied, beside the slices already written."""
    torch.manual_seed(6)
    model = DenseBlock().eval()
    x = torch.randn(1, 16, 10, 10)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    kernels_ir = next((tmp_path / "ir").glob("*-kernels.mlir")).read_text()
    assert kernels_ir.count("memref.copy") == 2
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(x.numpy()), ref)


@pytest.mark.parametrize("shape", [(1, 32, 40, 44), (1, 192, 7, 7), (2, 48, 14, 14), (1, 32, 28, 56)])
def test_winograd_is_the_same_on_any_thread_count(shape, tmp_path):
    """Every task split (whole panels, channel chunks, serial) gives the same result as eager."""
    torch.manual_seed(1)
    model = Residual(shape[1]).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    result = mlpack.build(model, (x,), tmp_path / "m.bundle")
    assert result.manifest["targets"]["cpu"]["kernels"] == {"mlrt_conv2d_winograd_f32": 1}
    outs = [mlrt.load(tmp_path / "m.bundle", num_threads=t).run_flat(x.numpy()) for t in (1, 2, 3, 5)]
    for out in outs:
        assert_matches_eager(out, ref)
        np.testing.assert_array_equal(out[0], outs[0][0])  # the split never changes a sum's order


@pytest.mark.parametrize("shape", [(1, 24, 14, 14), (2, 16, 7, 7), (1, 12, 28, 30)])
def test_depthwise_runs_in_place_the_same_on_any_thread_count(shape, tmp_path):
    """The expanded activation is padded in place (no padded copy, the depthwise conv overwrites
    its own input), and every channel split gives the same result as eager."""
    torch.manual_seed(2)
    model = _bn(zoo.InvertedResidual(shape[1], shape[1], 1, 6))
    x = torch.randn(shape)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    kernels_ir = next((tmp_path / "ir").glob("*-kernels.mlir")).read_text()
    assert "memref.copy" not in kernels_ir and "mlrt_depthwise_conv2d_f32" in kernels_ir
    assert "linalg.generic" not in kernels_ir  # BN, ReLU6 and the residual all fused into the kernels
    outs = [mlrt.load(tmp_path / "m.bundle", num_threads=t).run_flat(x.numpy()) for t in (1, 2, 3, 5)]
    for out in outs:
        assert_matches_eager(out, ref)
        np.testing.assert_array_equal(out[0], outs[0][0])


@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])
@pytest.mark.parametrize("check", ["depthwise_check", "conv_check", "gemm_check"])
def test_conv_kernels_under_sanitizers(check, march, tmp_path):
    """Kernels against reference loops, every buffer allocated to its exact size, under ASan +
    UBSan, tasks run in reverse order. x86-64-v3 is the AVX2 path, run again with the AVX-512F
    GEMM where this CPU has it (the kernels pick it at run time); x86-64 the portable one.
    kernels_c/gemm_check.c: the matmul and the packed-A GEMM for M 1-30, ragged N, K past a
    block, every epilogue kind.
    kernels_c/depthwise_check.c: the depthwise kernel on ~1200 shapes (in place, every short row
    width, strides 1-3, dilation, padding, 1x1 to 9x9 taps, the wide-row fallback).
    kernels_c/conv_check.c: the grouped, small-map (also grouped), 3-D and Winograd convs and pooling on ~3000 (1-4 groups, 1x1 to 5x3
    taps, stride 2, dilation, K past one K block, depth padding and dilation, batches, every
    epilogue kind, 1 and 3 threads; Winograd F(2x2)/F(4x4) on maps 1-37 wide, ragged edges)."""
    if march == "x86-64-v3" and "avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX2")
    from mlpack.targets.x86_64.link import KERNELS_DIR

    exe = tmp_path / check
    sources = [Path(__file__).parent / "kernels_c" / f"{check}.c", *(KERNELS_DIR / f for f in ("conv.c", "gemm.c", "host.c", "winograd.c", "pool.c"))]
    subprocess.run([os.environ.get("CC", "cc"), "-O1", "-g", "-std=gnu11", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", f"-march={march}", "-Wall", "-Wextra", "-Werror", f"-I{KERNELS_DIR}",
                    *map(str, sources), "-o", str(exe), "-lm"], check=True)
    isas = ["c"]
    if march == "x86-64-v3":
        isas = ["avx2", "avx512f"] if "avx512f" in Path("/proc/cpuinfo").read_text().split() else ["avx2"]
    for isa in isas:
        env = {**os.environ, "MLRT_KERNEL_ISA": isa}
        run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout + run.stderr
        if check == "gemm_check":
            assert run.stdout.split()[-1] == isa, run.stdout  # the kernels ran the ISA asked for


class NormGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(64)
        self.fc = nn.Linear(64, 48)

    def forward(self, x):
        return nn.functional.gelu(self.fc(self.ln(x))) * 0.5 + 1.0


def _stage(tmp_path, name) -> str:
    return next((tmp_path / "ir").glob(f"*-{name}.mlir")).read_text()


def test_linear_bias_and_clamp_fuse_into_the_matmul(tmp_path):
    model, x = LinearChain(40).eval(), torch.randn(40, 300)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(x.numpy()), ref)
    assert "linalg.generic" not in _stage(tmp_path, "kernels")


def test_elementwise_chains_fuse(tmp_path):
    """LayerNorm's steps, the GELU and the trailing scale/shift leave fewer, fused loops
    (elementwise_fusion.py), and the result still matches eager."""
    torch.manual_seed(4)
    model, x = NormGelu().eval(), torch.randn(1, 20, 64)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(x.numpy()), ref)
    before, after = _stage(tmp_path, "bufferized").count("linalg.generic"), _stage(tmp_path, "kernels").count("linalg.generic")
    assert after <= before // 2, (before, after)


class NormGeluBlocks(nn.Module):
    """Residual LayerNorm + GELU blocks: bufferization reuses buffers across them, so the fuser's
    cached user positions see many edits."""

    def __init__(self):
        super().__init__()
        self.ln = nn.ModuleList(nn.LayerNorm(64) for _ in range(3))

    def forward(self, x):
        for ln in self.ln:
            x = nn.functional.gelu(ln(x)) * 0.5 + x
        return x


def test_fuser_keeps_its_buffer_users_current(tmp_path):
    """The fuser caches each buffer's user positions and updates them as it fuses (instead of
    listing every buffer's users again): after every fusion, each cached list must equal a fresh one."""
    from torch_mlir import ir

    from mlpack.lower import elementwise_fusion
    from mlpack.lower.memory_plan import TopLevelOps

    mlpack.build(NormGeluBlocks().eval(), (torch.randn(1, 20, 64),), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    checked = []

    class Checking(elementwise_fusion._Fuser):
        def fuse(self, p, q):
            super().fuse(p, q)
            for root, cached in self._users.items():
                assert sorted(cached) == sorted(TopLevelOps.user_positions(self, root))
                checked.append(root)

    with ir.Context(), ir.Location.unknown():
        module = ir.Module.parse(_stage(tmp_path, "bufferized"))
        forward = next(op for op in module.body.operations
                       if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == "forward")
        assert Checking(forward).run() >= 12
    assert len(checked) >= 100


def test_softmax_max_drops_the_unused_argmax(tmp_path):
    """torch-mlir lowers softmax's max as aten.max.dim, values and indices: nothing reads the
    indices, so the loop computing them (and their buffers) must go."""
    torch.manual_seed(5)
    model, inputs = Attention().eval(), (torch.randn(3, 20, 16), torch.randn(3, 24, 16))
    with torch.no_grad():
        ref = flat_outputs(model(*inputs))
    mlpack.build(model, inputs, tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(*[x.numpy() for x in inputs]), ref)
    assert "xi64>" in _stage(tmp_path, "bufferized") and "xi64>" not in _stage(tmp_path, "kernels")


class OutputsAlsoFused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(8, 8)

    def forward(self, x, v):
        y, h = self.conv(x), self.fc(v)
        return y, torch.relu(y), h, torch.clamp(h, -0.1, 0.1)


def test_outputs_read_by_fusable_ops_and_inexact_clamp_bounds(tmp_path):
    """A kernel's output that is also a model output stays written when a clamp reads it (a
    fused epilogue would write only the clamp's buffer); clamp bounds like -0.1 that float32
    cannot hold exactly still compile (llvmlite rejects inexact decimal float literals)."""
    torch.manual_seed(6)
    model, inputs = OutputsAlsoFused().eval(), (torch.randn(1, 4, 8, 8), torch.randn(16, 8))
    with torch.no_grad():
        ref = flat_outputs(model(*inputs))
    mlpack.build(model, inputs, tmp_path / "m.bundle")
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(*[x.numpy() for x in inputs]), ref)


def test_relu_keeps_nan(tmp_path):
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU()).eval()
    x = torch.randn(1, 2, 4, 4)
    mlpack.build(model, (x,), tmp_path / "m.bundle")
    x[0, 0, 1, 1] = float("nan")
    out = mlrt.load(tmp_path / "m.bundle").run(x.numpy())
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))


def test_portable_x86_64_bundle(tmp_path):
    """--cpu x86-64: kernels compiled without AVX2 (the portable C paths), no ISA requirements."""
    model, inputs = zoo.make("small_cnn")
    with torch.no_grad():
        ref = flat_outputs(model(*inputs))
    result = mlpack.build(model, inputs, tmp_path / "m.bundle", cpu="x86-64")
    assert result.manifest["targets"]["cpu"]["cpu"] == "x86-64"
    assert result.manifest["targets"]["cpu"]["features"] == []
    assert result.manifest["targets"]["cpu"]["kernel_isas"] == ["c"]
    loaded = mlrt.load(tmp_path / "m.bundle")
    assert loaded.kernel_isa == "c"
    assert_matches_eager(loaded.run_flat(*[x.numpy() for x in inputs]), ref)


class TokensMlp(nn.Module):
    """Linear layers on 9 and 12 rows (the AVX-512 tile's one-pass row counts) and a conv on a 3x3 map."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(96, 200), nn.Linear(200, 40)
        self.conv = nn.Conv2d(40, 72, 3, padding=1)

    def forward(self, x, y):
        h = self.fc2(torch.relu(self.fc1(x)))
        return h, torch.relu(self.conv(y))


def test_kernel_isa_is_picked_at_load_and_both_match_eager(tmp_path, monkeypatch):
    """An x86-64-v3 bundle carries AVX2 and AVX-512F GEMM tiles: the code picks AVX-512F where the
    CPU has it, MLRT_KERNEL_ISA=avx2 keeps it off (read by each loaded copy of the code), and both
    match eager."""
    torch.manual_seed(0)
    model = TokensMlp().eval()
    inputs = (torch.randn(12, 96), torch.randn(1, 40, 3, 3))
    with torch.no_grad():
        ref = flat_outputs(model(*inputs))
    result = mlpack.build(model, inputs, tmp_path / "m.bundle")
    assert result.manifest["targets"]["cpu"]["kernel_isas"] == ["avx2", "avx512f"]
    has_avx512 = "avx512f" in Path("/proc/cpuinfo").read_text().split()
    default = mlrt.load(tmp_path / "m.bundle")
    assert default.kernel_isa == ("avx512f" if has_avx512 else "avx2")
    monkeypatch.setenv("MLRT_KERNEL_ISA", "avx2")
    forced = mlrt.load(tmp_path / "m.bundle")
    assert forced.kernel_isa == "avx2"
    args = [x.numpy() for x in inputs]
    for m in (default, forced):
        assert_matches_eager(m.run_flat(*args), ref)


@pytest.mark.parametrize("name", ["winograd4x4_unpadded_bn_relu6", "winograd_bias_relu_odd", "linear_gemv",
                                  "linear_gemv_wide_residual"])
def test_portable_kernels(name, tmp_path):
    """The plain C paths of the Winograd transforms (F(4x4) and F(2x2)) and of the packed one-row
    GEMV, as an x86-64 bundle runs them."""
    make, shapes = CASES[name]
    torch.manual_seed(0)
    model, inputs = make().eval(), [torch.randn(s) for s in shapes]
    with torch.no_grad():
        ref = flat_outputs(model(*inputs))
    mlpack.build(model, tuple(inputs), tmp_path / "m.bundle", cpu="x86-64")
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(*[x.numpy() for x in inputs]), ref)


def test_generated_loops_run_in_parallel_regions(tmp_path):
    """Elementwise / reduction loops outside the microkernels become OpenMP regions on the mlrt
    pool (targets/cpu_kernels/openmp_shim.c): same results with 1 and 3 threads, and as eager."""
    model = nn.Sequential(nn.LayerNorm(300), nn.GELU(), nn.Softmax(dim=-1)).eval()
    x = torch.randn(4, 50, 300)
    result = mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    assert "scf.parallel" in (tmp_path / "ir" / "04-loops.mlir").read_text()
    with torch.no_grad():
        ref = flat_outputs(model(x))
    one = mlrt.load(tmp_path / "m.bundle", num_threads=1).run_flat(x.numpy())
    three = mlrt.load(tmp_path / "m.bundle", num_threads=3).run_flat(x.numpy())
    assert_matches_eager(one, ref)
    np.testing.assert_array_equal(one[0], three[0])


def test_vectorized_exp_and_erf_are_accurate(tmp_path):
    """exp / erf are compiled from our own IR (vectorizable) instead of libm: ~1 ulp for exp over the
    whole float range (overflow, denormal results, NaN), ~3.4e-7 relative for erf; GELU and softmax
    built on them stay within float rounding of eager."""

    class M(nn.Module):
        def forward(self, x):
            return torch.exp(x), torch.erf(x), nn.functional.gelu(x), torch.softmax(x, -1)

    special = [0.0, -0.0, 1e-30, -1e-30, 1e-7, 88.3, 88.7, 88.8, 100.0, -87.4, -100.0, -103.0, -104.0, -200.0,
               0.99, 1.01, -0.99, -1.01, 3.5, -3.5, 10.0, -10.0, float("nan"), float("inf"), float("-inf")]
    rng = np.random.default_rng(0)
    x = np.concatenate([np.array(special, np.float32), rng.standard_normal(1024 - len(special)).astype(np.float32) * 5])
    x = x.reshape(8, 128)
    path = tmp_path / "m.bundle"
    mlpack.build(M().eval(), (torch.from_numpy(x),), path)
    from mlpack.bundle import section_bytes

    (tmp_path / "code.so").write_bytes(section_bytes(path, "cpu.so"))
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(tmp_path / "code.so")], capture_output=True,
                               text=True, check=True).stdout.split()
    assert "expf" not in undefined and "erff" not in undefined  # inlined, not libm calls
    out = mlrt.load(path).run_flat(x)
    ref = [t.numpy() for t in M()(torch.from_numpy(x))]
    finite_x = np.isfinite(x)
    for name, a, r, tol in zip(["exp", "erf", "gelu", "softmax"], out, ref, [3e-7, 5e-7, None, 1e-6]):
        if name == "gelu":  # eager gives NaN for GELU(+-inf); the 0.5*x*(1+erf) decomposition does not
            a, r = a[finite_x], r[finite_x]
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=2e-6)
            continue
        assert np.array_equal(np.isnan(a), np.isnan(r)), name
        inf = np.isinf(r)
        assert np.array_equal(a[inf], r[inf]), name
        ok = np.isfinite(r)
        rel = np.abs(a[ok] - r[ok]) / np.maximum(np.abs(r[ok]), np.finfo(np.float32).tiny)
        assert rel.max() <= tol, (name, rel.max())


def test_layernorm_and_var_mean_stay_in_float32(tmp_path):
    """var_mean (LayerNorm's statistics) is computed in float32 instead of torch-mlir's float64
    lowering; biased and unbiased variance both match eager."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(64)

        def forward(self, x):
            v, m = torch.var_mean(x, dim=1, correction=1)
            return self.ln(x), v, m

    torch.manual_seed(0)
    model = M().eval()
    x = torch.randn(16, 64) * 3 + 5
    path = tmp_path / "ln.bundle"
    result = mlpack.build(model, (x,), path)
    assert result.manifest["graph_passes"]["var_mean_in_float32"] == 2
    with torch.no_grad():
        ref = flat_outputs(model(x))
    assert_matches_eager(mlrt.load(path).run_flat(x.numpy()), ref)
