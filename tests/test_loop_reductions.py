"""loop_reductions.py: reductions carried in registers. Hand-written loop IR for what may and may
not be rewritten, and models whose reductions must still match eager PyTorch."""

import pytest
import torch
from torch import nn

import mlpack
import mlrt
from conftest import assert_matches_eager, flat_outputs

_LOOP = """
func.func @forward(%arena: memref<4096xi8>, %x: memref<8x16xf32>) {{
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c8 = arith.constant 8 : index
  %c16 = arith.constant 16 : index
  %c_acc = arith.constant {acc_at} : index
  %c_in = arith.constant {in_at} : index
  %acc = memref.view %arena[%c_acc][] : memref<4096xi8> to memref<8xf32>
  %in = memref.view %arena[%c_in][] : memref<4096xi8> to memref<8x16xf32>
  scf.for %i = %c0 to %c8 step %c1 {{
    scf.for %j = %c0 to %c16 step %c1 {{
      %a = memref.load %in[%i, %j] : memref<8x16xf32>
      %b = memref.load %acc[{load_index}] : memref<8xf32>
      %s = arith.{combine} %a, %b : f32
      memref.store %s, %acc[{acc_index}] : memref<8xf32>
      {extra}
    }}
  }}
  return
}}
"""


def _rewrite(**kw):
    from torch_mlir import ir

    from mlpack.lower.loop_reductions import scalar_reductions

    args = {"acc_at": 0, "in_at": 512, "acc_index": "%i", "combine": "addf", "extra": ""} | kw
    args.setdefault("load_index", args["acc_index"])
    with ir.Context(), ir.Location.unknown():
        module = ir.Module.parse(_LOOP.format(**args))
        func = module.body.operations[0]
        n = scalar_reductions(func)
        module.operation.verify()
        return n, str(module)


def test_accumulator_moves_into_a_register():
    n, text = _rewrite()
    assert n == 1
    assert "iter_args" in text and "fastmath<reassoc>" in text
    inner = text[text.index("iter_args"):]
    inner = inner[:inner.index("scf.yield")]
    assert "memref.store" not in inner and inner.count("memref.load") == 1  # only the input's


def test_max_reduction_moves_but_is_not_reassociated():
    n, text = _rewrite(combine="maximumf")
    assert n == 1 and "iter_args" in text and "reassoc" not in text


@pytest.mark.parametrize("case", [
    {"in_at": 0},  # the input overlaps the accumulator's bytes
    {"in_at": 28},  # ... partly
    {"acc_index": "%j"},  # the location changes with the loop (not a reduction)
    {"acc_index": "%c0", "load_index": "%i"},  # reads one location, writes another
    {"extra": "memref.store %a, %acc[%c0] : memref<8xf32>"},  # a second store
])
def test_loops_that_might_not_be_reductions_stay(case):
    n, text = _rewrite(**case)
    assert n == 0 and "iter_args" not in text


class Reductions(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(48)

    def forward(self, x):
        return (self.ln(x), torch.softmax(x, -1), x.sum(-1), x.mean(1), x.amax(-1), x.amin(1),
                torch.var(x, -1), x.abs().add(0.5).prod(-1))


def test_models_with_reductions_match_eager(tmp_path):
    torch.manual_seed(0)
    model, x = Reductions().eval(), torch.randn(3, 40, 48) * 2 + 1
    x[0, 0, 0] = float("nan")  # NaN flows through max/min and sums as in eager
    with torch.no_grad():
        ref = flat_outputs(model(x))
    mlpack.build(model, (x,), tmp_path / "m.bundle", dump_ir=tmp_path / "ir")
    assert_matches_eager(mlrt.load(tmp_path / "m.bundle").run_flat(x.numpy()), ref)
    loops = next((tmp_path / "ir").glob("*-loops.mlir")).read_text()
    assert loops.count("iter_args") >= 7
