"""outline_loops.py and llvm_compile.py: loop nests move out of @forward into functions of their
own, and the IR is compiled in partitions by worker processes. The bundles must still match eager
PyTorch, be the same bytes on every build, and LLVM failing must be an error, not a crash."""

import pytest
import torch
from torch import nn

import mlpack
import mlrt
from conftest import assert_matches_eager, flat_outputs


class _Block(nn.Module):
    """LayerNorm, softmax attention and a GELU MLP: many loop nests besides the GEMMs."""

    def __init__(self, d=32):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) * 0.125, dim=-1)
        x = x + att @ v
        return x + self.mlp(self.norm(x))


def _build(tmp_path, name):
    torch.manual_seed(0)
    model, x = nn.Sequential(_Block(), _Block()).eval(), torch.randn(2, 16, 32)
    out = tmp_path / f"{name}.bundle"
    mlpack.build(model, (x,), out, dump_ir=tmp_path / name)
    with torch.no_grad():
        ref = flat_outputs(model(x))
    return out, x, ref


def test_loop_nests_are_outlined_and_the_model_still_matches(tmp_path):
    bundle, x, ref = _build(tmp_path, "one")
    llvm_ir = (tmp_path / "one" / "05-llvm.mlir").read_text()
    assert llvm_ir.count("define internal void @forward_loop_") >= 10
    forward = llvm_ir[llvm_ir.index("define void @forward("):]
    forward = forward[:forward.index("\n}\n")]
    assert "call void @forward_loop_" in forward
    assert_matches_eager([mlrt.load(bundle).run(x.numpy())], ref)


def test_partitioned_compile_matches_and_is_reproducible(tmp_path, monkeypatch):
    from mlpack.lower import llvm_compile

    monkeypatch.setattr(llvm_compile, "PARTITION_LINES", 200)  # force several partitions
    first, x, ref = _build(tmp_path, "a")
    parts = llvm_compile.split_module(
        mlpack.lower.llvm_codegen.legacy_fp_literals((tmp_path / "a" / "05-llvm.mlir").read_text()))
    assert len(parts) > 2
    assert all("declare hidden void @forward_loop_" in p for p in parts)
    assert_matches_eager([mlrt.load(first).run(x.numpy())], ref)
    second, _, _ = _build(tmp_path, "b")
    assert first.read_bytes() == second.read_bytes()


def test_llvm_failure_is_a_build_error_not_a_crash():
    from mlpack.lower import llvm_compile

    with pytest.raises(llvm_compile.CompileError, match="LLVM failed"):
        llvm_compile.compile_objects("define void @forward() {\n  ret i32 0\n}\n", "x86_64-unknown-linux-gnu", "x86-64-v3")


def test_identical_loop_nests_compile_once(tmp_path):
    """Nests the two blocks run on the same arena offsets come out identical: each is lowered and
    compiled once (outline_loops.merge_identical_nests, before lowering to LLVM) and both blocks
    call it (the bundle must still match eager). Nests read their buffers at constant arena
    offsets, so only nests whose buffers coincide merge (most of a deep transformer's, whose plan
    repeats block after block)."""
    import re

    from mlpack.lower import llvm_compile

    bundle, x, ref = _build(tmp_path, "m")
    llvm_ir = (tmp_path / "m" / "05-llvm.mlir").read_text()
    defined = re.findall(r"^define internal void @(forward_loop_\d+)\(", llvm_ir, re.M)
    calls = re.findall(r"call void @(forward_loop_\d+)\(", llvm_ir)
    assert len(set(defined)) == len(defined)
    assert set(calls) == set(defined)  # every call goes to a nest that is still defined, each is called
    assert len(calls) > len(defined)  # some run for both blocks
    assert llvm_compile.merge_identical(llvm_ir) == llvm_ir  # none left for the LLVM IR text pass
    assert_matches_eager([mlrt.load(bundle).run(x.numpy())], ref)


def test_a_worker_compiles_module_after_module_and_reports_a_failure():
    """One worker process takes several partitions in turn (framed on its pipes); a module LLVM
    rejects ends it with an error naming LLVM's message, not a hang or a short object."""
    from mlpack.lower import llvm_compile

    good = "define void @f{}(ptr %p) {{\n  store float 1.0, ptr %p\n  ret void\n}}\n"
    with llvm_compile._Worker("x86_64-unknown-linux-gnu", "x86-64-v3", "") as worker:
        objs = [worker.compile(good.format(i)) for i in range(3)]
        assert all(o.startswith(b"\x7fELF") for o in objs)
        assert b"f2" in objs[2] and b"f2" not in objs[0]
        with pytest.raises(llvm_compile.CompileError, match=r"(?s)LLVM failed.*doesn't match function result type"):
            worker.compile("define void @g() {\n  ret i32 0\n}\n")
