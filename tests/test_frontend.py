"""`mlpack build` on every model file format, and the errors users see when a model cannot be built."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import mlrt
import zoo
from conftest import TESTS, assert_matches_eager
from mlpack.cli import main as cli


def _build(args):
    result = CliRunner().invoke(cli, ["build", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    model, inputs = zoo.make("small_cnn")
    with torch.no_grad():
        ref = model(*inputs).numpy()
    return model, inputs, ref, tmp_path_factory.mktemp("frontend")


def _check(bundle, inputs, ref):
    assert_matches_eager([mlrt.load(bundle).run(*[x.numpy() for x in inputs])], [ref])


def test_build_exported_program_file(cnn):
    model, inputs, ref, d = cnn
    torch.export.save(torch.export.export(model, inputs), d / "m.pt2")
    code, out = _build([str(d / "m.pt2"), "-o", str(d / "pt2.bundle")])
    assert code == 0, out
    for stage in ("export", "import", "optimize", "plan", "codegen", "link", "write"):
        assert stage in out
    assert "arena" in out and "lower bound" in out
    _check(d / "pt2.bundle", inputs, ref)


def test_build_torchscript_needs_and_uses_input_shape(cnn):
    model, inputs, ref, d = cnn
    torch.jit.save(torch.jit.trace(model, inputs), d / "ts.pt")
    code, out = _build([str(d / "ts.pt"), "-o", str(d / "ts.bundle")])
    assert code == 1 and "does not record input shapes" in out and "--input-shape" in out
    code, out = _build([str(d / "ts.pt"), "-o", str(d / "ts.bundle"), "--input-shape", "1x3x32x32:float32", "-q"])
    assert code == 0, out
    assert out == ""  # --quiet
    _check(d / "ts.bundle", inputs, ref)


def test_build_pickled_module_with_example_inputs(cnn):
    model, inputs, ref, d = cnn
    torch.save(model, d / "pickled.pt")
    np.savez(d / "ex.npz", inputs[0].numpy())
    code, out = _build([str(d / "pickled.pt"), "-o", str(d / "pk.bundle"), "--example-inputs", str(d / "ex.npz")])
    assert code == 0, out
    _check(d / "pk.bundle", inputs, ref)


def test_pickled_module_with_unimportable_class(tmp_path):
    script = ("import torch, torch.nn as nn\n"
              "class Hidden(nn.Module):\n"
              "    def forward(self, x): return x + 1\n"
              f"torch.save(Hidden(), r'{tmp_path / 'h.pt'}')\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    code, out = _build([str(tmp_path / "h.pt"), "--input-shape", "4"])
    assert code == 1 and "class importable" in out


def test_help_warns_about_pickles():
    result = CliRunner().invoke(cli, ["build", "--help"])
    assert "runs code" in result.output


@pytest.mark.parametrize("spec, message", [
    ("1x3xA", "expected dims joined by 'x'"),
    ("1x3:float128", "unknown dtype 'float128'"),
])
def test_bad_input_shape(cnn, spec, message):
    _, _, _, d = cnn
    torch.save(nn.ReLU(), d / "relu.pt")
    code, out = _build([str(d / "relu.pt"), "--input-shape", spec])
    assert code == 1 and message in out


class _Median(nn.Module):
    def forward(self, x):
        return torch.median(x, dim=1).values


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.head = nn.Sequential(nn.ReLU(), _Median())

    def forward(self, x):
        return self.head(self.stem(x))


def test_unsupported_op_names_op_module_and_line(tmp_path):
    import mlpack

    with pytest.raises(mlpack.UnsupportedOpError) as e:
        mlpack.build(_Net().eval(), (torch.randn(2, 4),), tmp_path / "m.bundle")
    msg = str(e.value)
    assert "aten.median" in msg
    assert "module 'head.1' (_Median)" in msg
    assert "test_frontend.py" in msg and "torch.median" in msg  # the user's source line
    assert not (tmp_path / "m.bundle").exists()  # nothing half-written


def test_data_dependent_control_flow_gets_a_hint(tmp_path):
    import mlpack

    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x

    with pytest.raises(mlpack.BuildError, match="torch.where"):
        mlpack.build(Branchy(), (torch.randn(3),), tmp_path / "b.bundle")


def test_build_without_compiler_dependencies_says_how_to_install(tmp_path):
    code = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] in ('torch', 'torch_mlir', 'llvmlite'): raise ImportError('blocked: ' + n)\n"
        "sys.meta_path.insert(0, B())\n"
        "from mlpack.cli import main\n"
        f"main(['build', r'{tmp_path / 'm.pt2'}'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=TESTS)
    assert proc.returncode == 1
    assert "pip install" in proc.stderr and "[compiler]" in proc.stderr


def test_inspect_and_run_commands(cnn, tmp_path):
    model, inputs, ref, d = cnn
    bundle = d / "cli.bundle"
    torch.export.save(torch.export.export(model, inputs), d / "cli.pt2")
    code, out = _build([str(d / "cli.pt2"), "-o", str(bundle), "-q"])
    assert code == 0, out
    result = CliRunner().invoke(cli, ["inspect", str(bundle)])
    assert result.exit_code == 0
    assert "x: float32[1, 3, 32, 32]" in result.output and "memory plan: arena" in result.output
    np.save(tmp_path / "x.npy", inputs[0].numpy())
    result = CliRunner().invoke(cli, ["run", str(bundle), "--input", str(tmp_path / "x.npy"), "-o",
                                      str(tmp_path / "y.npz")])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "y.npz") as z:
        assert_matches_eager([z["output_0"]], [ref])
    result = CliRunner().invoke(cli, ["run", str(bundle), "--random"])
    assert result.exit_code == 0 and "output_0: float32[1, 10]" in result.output


def test_dump_ir_writes_every_stage(cnn, tmp_path):
    model, inputs, ref, d = cnn
    torch.export.save(torch.export.export(model, inputs), tmp_path / "m.pt2")
    code, out = _build([str(tmp_path / "m.pt2"), "-o", str(tmp_path / "m.bundle"), "-q", "--dump-ir",
                        str(tmp_path / "ir")])
    assert code == 0, out
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == ["00-linalg.mlir", "01-bufferized.mlir", "02-kernels.mlir", "03-planned.mlir", "04-loops.mlir",
                     "05-llvm.mlir"]
    assert "linalg.conv_2d_nchw_fchw" in (tmp_path / "ir" / "00-linalg.mlir").read_text()
    assert "call @mlrt_conv2d_packed_f32" in (tmp_path / "ir" / "02-kernels.mlir").read_text()


def test_mlpack_command_without_click_says_what_to_install():
    code = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] == 'click': raise ImportError('blocked', name='click')\n"
        "sys.meta_path.insert(0, B())\n"
        "from mlpack.entry import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "inspect", "x.bundle"], capture_output=True, text=True)
    assert proc.returncode == 1 and "needs click: pip install click" in proc.stderr


class _Mixed(nn.Module):
    """CompositeImplicit ops (linear on 3-D, layer_norm, matmul), BatchNorm, an in-place ReLU and
    a tensor constant the forward creates."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.bn(self.norm(self.fc(x))))
        scale = torch.tensor([1.0, 2.0, 3.0, 4.0])
        return (y @ y.transpose(-1, -2)) * scale


def test_one_trace_export_gives_the_two_trace_graph():
    """export_and_lift exports and decomposes in one trace: the graph must be run_decompositions'
    on the exported program, node for node (up to node names and the order of weight placeholders)."""
    from mlpack.frontend import export as frontend

    model, inputs = _Mixed().eval(), (torch.randn(2, 4, 8),)
    one = frontend._export_decomposed(model, inputs)
    assert one is not None, "the one-trace export failed on this torch"
    two = frontend.export_module(model, inputs).run_decompositions(frontend._decomposition_table())

    def ops(ep):
        gm = ep.graph_module
        frontend._canonical(gm)
        spec = {s.arg.name: f"{s.kind.name}:{s.target or s.arg.name}" for s in ep.graph_signature.input_specs}
        names, nodes = {}, []
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                names[n] = spec[n.name]
                continue
            names[n] = f"v{len(nodes)}"
            nodes.append((n.op, str(n.target), str(torch.fx.node.map_arg((n.args, n.kwargs), lambda a: names[a]))))
        return nodes, sorted(spec.values())

    assert ops(one) == ops(two)
    lifted = frontend.export_and_lift(model, inputs)
    assert lifted.graph_passes["batchnorm_folded"] + lifted.graph_passes.get("batchnorm_scale_shift", 0) == 1
    # Source lines are traced only when an error message asks for them (test_unsupported_op_...).
    calls = [n for n in lifted.exported.graph.nodes if n.op == "call_function"]
    assert not any(n.meta.get("stack_trace") for n in calls)
    assert any("test_frontend.py" in (n.meta.get("stack_trace") or "") for n in lifted.source_program().graph.nodes)


class _ConvBnHalf(nn.Module):
    """Conv + BatchNorm (folded: new weight placeholders, changed convs) in bfloat16 (the body is
    made float32: dtypes change through the whole graph), a view and a reduction."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return y.flatten(1).softmax(-1), y.mean((2, 3))


@pytest.mark.parametrize("model, dtype", [(_Mixed(), torch.float32), (_ConvBnHalf(), torch.float32),
                                          (_ConvBnHalf(), torch.bfloat16)], ids=["mixed", "conv_bn", "conv_bn_bf16"])
def test_incremental_metadata_equals_full_propagation(model, dtype, monkeypatch):
    """lift recomputes meta["val"] only for the nodes the graph passes added or changed (and what
    depends on them): every node must end up with what a full FakeTensorProp gives it."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    from mlpack.frontend import export as frontend

    incremental, refresh = [], frontend._refresh_changed
    monkeypatch.setattr(frontend, "_refresh_changed", lambda *a: incremental.append(refresh(*a)) or incremental[-1])
    model = model.eval().to(dtype)
    shape = (2, 4, 8) if isinstance(model, _Mixed) else (1, 3, 6, 6)
    lifted = frontend.export_and_lift(model, (torch.randn(shape).to(dtype),))
    assert incremental == [True], "the full propagation ran instead: nothing here was tested"
    gm = lifted.program

    def meta(v):
        if isinstance(v, torch.Tensor):
            return tuple(v.shape), v.dtype, v.stride()
        return tuple(meta(x) for x in v) if isinstance(v, (tuple, list)) else repr(v)

    kept = {n.name: meta(n.meta["val"]) for n in gm.graph.nodes}
    example = [torch.from_numpy(lifted.weights[i][1]) if kind == "weight"
               else torch.zeros(lifted.inputs[i].shape, dtype=frontend._TORCH_DTYPES[lifted.inputs[i].dtype])
               for kind, i in lifted.call_args]
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        FakeTensorProp(gm, mode).propagate(*[mode.from_tensor(t) for t in example])
    assert kept == {n.name: meta(n.meta["val"]) for n in gm.graph.nodes}
    if dtype == torch.bfloat16:
        assert lifted.graph_passes["half_to_float32"], "the bf16 model was not made float32: the test lost its point"


def test_a_check_that_always_fails_names_the_source_line(tmp_path, monkeypatch):
    """The one-trace export records no source lines, so the imported ops have no file locations;
    the error for a lowering torch-mlir marks wrong (bufferize.strip_asserts) imports the program
    again, traced with them, to name the line."""
    import mlpack
    from mlpack.lower import bufferize as bz
    from mlpack.lower import program

    def failing(module, func_op):  # @forward's last op stands for one torch-mlir lowered to `assert false`
        ops = list(func_op.regions[0].blocks[0].operations)
        op = ops[-2]  # before the return
        raise bz.FailingCheckError(f"an op lowered to a check that always fails: 'x' (at {op.location})")

    monkeypatch.setattr(program, "bufferize", failing)
    with pytest.raises(bz.FailingCheckError, match="test_frontend.py"):
        mlpack.build(_Mixed().eval(), (torch.randn(2, 4, 8),), tmp_path / "m.bundle")
