"""collapse_dims.py: adjacent loop dimensions of leftover linalg.generic ops merged where every
operand lays them out contiguously. Hand-written IR for what may and may not be collapsed, and
models on small maps (the case it exists for) that must still match eager PyTorch."""

import torch
from torch import nn

import mlpack
import mlrt
from conftest import assert_matches_eager, flat_outputs

_GENERIC = """
#id = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>
func.func @forward(%x: memref<1x24x7x7xf32>, %g: {g_type}, %y: memref<1x24x7x7xf32>) {{
  linalg.generic {{indexing_maps = [#id, {g_map}, #id],
                  iterator_types = ["parallel", "parallel", "parallel", "parallel"]}}
      ins(%x, %g : memref<1x24x7x7xf32>, {g_type}) outs(%y : memref<1x24x7x7xf32>) {{
  ^bb0(%a: f32, %b: f32, %o: f32):
    %m = arith.mulf %a, %b : f32
    {extra}
    linalg.yield %m : f32
  }}
  return
}}
"""


def _collapse(g_type="memref<1x24x7x7xf32>", g_map="#id", extra=""):
    from torch_mlir import ir

    from mlpack.lower.collapse_dims import collapse_loop_dims

    with ir.Context(), ir.Location.unknown():
        module = ir.Module.parse(_GENERIC.format(g_type=g_type, g_map=g_map, extra=extra))
        n = collapse_loop_dims(module.body.operations[0])
        module.operation.verify()
        return n, str(module)


def test_elementwise_op_becomes_one_loop():
    n, text = _collapse()
    assert n == 1
    assert text.count("into memref<1176xf32>") == 3
    assert 'iterator_types = ["parallel"]' in text or "iterator_types = [#linalg.iterator_type<parallel>]" in text


def test_broadcast_gate_keeps_channels_apart_from_the_map():
    n, text = _collapse("memref<1x24x1x1xf32>", "affine_map<(d0, d1, d2, d3) -> (d0, d1, 0, 0)>")
    assert n == 1
    assert text.count("into memref<24x49xf32>") == 2 and "into memref<24xf32>" in text


def test_batchnorm_statistics_operand():
    n, text = _collapse("memref<24x1x1xf32>", "affine_map<(d0, d1, d2, d3) -> (d1, 0, 0)>")
    assert n == 1
    # the statistics follow d1 alone: d0 | d1 | d2 d3, their size-1 dims join d1's run
    assert "into memref<1x24x49xf32>" in text and "into memref<24xf32>" in text


def test_projected_bias_operand():
    n, text = _collapse("memref<24xf32>", "affine_map<(d0, d1, d2, d3) -> (d1)>")
    assert n == 1
    # the bias has d1 alone, so d0 and d1 stay apart; it has neither d2 nor d3, so they merge
    assert "memref<1x24x49xf32>" in text and "(d1)" in text


def test_transposed_operand_is_left_alone():
    n, text = _collapse("memref<1x24x7x7xf32>", "affine_map<(d0, d1, d2, d3) -> (d0, d1, d3, d2)>")
    assert n == 0 and "collapse_shape" not in text


def test_body_reading_the_loop_index_is_left_alone():
    n, text = _collapse(extra="%i = linalg.index 3 : index")
    assert n == 0 and "collapse_shape" not in text


class SmallMapOps(nn.Module):
    """SiLU, a squeeze-excite gate, a bias and a mean on 7x7 / 5x3 maps, one permuted operand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 24, 3, padding=1)
        self.fc = nn.Linear(24, 24)
        self.bias = nn.Parameter(torch.randn(24, 1, 1))

    def forward(self, x, z):
        y = nn.functional.silu(self.conv(x))
        gate = torch.sigmoid(self.fc(y.mean((2, 3))))[:, :, None, None]
        y = y * gate + self.bias
        return y, torch.tanh(z.permute(0, 1, 3, 2)) * z.transpose(2, 3).exp()


def test_small_map_model_matches_eager(tmp_path):
    model = SmallMapOps().eval()
    inputs = (torch.randn(2, 8, 7, 7), torch.randn(1, 4, 5, 3))
    mlpack.build(model, inputs, tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    loops = max((tmp_path / "ir").glob("*-loops.mlir")).read_text()
    assert "into memref<2352xf32>" in loops  # SiLU over 2x24x7x7 as one loop
    outs = mlrt.load(tmp_path / "m.bundle").run(*(t.numpy() for t in inputs))
    with torch.no_grad():
        assert_matches_eager(list(outs), flat_outputs(model(*inputs)))
