"""The mlrt backend in a real Triton Inference Server (2.51, from the nvidia-pytriton wheel), on
127.0.0.1 with free ports and explicit model control. Skips only where the wheel or the client is
not installed (scripts/setup.sh installs both).

Models, from the zoo MLP: `mlp` (static, 2 instances), `mlp_dyn` (bundle with a dynamic batch dim
1..8: dynamic batching), `mlp_nobatch` (the same bundle with --max-batch 0: one request per run,
the batch dim as -1, so range errors come from the backend itself).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mlpack
import mlrt
import triton_server
import zoo
from mlpack.cli import main as cli

pytestmark = pytest.mark.skipif(triton_server.why_unavailable() is not None,
                                reason=triton_server.why_unavailable() or "")

MODELS = ("mlp", "mlp_dyn", "mlp_nobatch")


@pytest.fixture(scope="module")
def bundles(build_zoo, tmp_path_factory):
    static = build_zoo("mlp").bundle
    model, _ = zoo.make("mlp")
    dyn = tmp_path_factory.mktemp("triton_bundles") / "mlp_dyn.bundle"
    mlpack.build(model, (torch.zeros(8, 256),), dyn, dynamic={"x": {0: (1, 8)}})
    return {"mlp": static, "mlp_dyn": dyn, "mlp_nobatch": dyn}


@pytest.fixture(scope="module")
def repo(bundles, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton_repo")
    runner = CliRunner()
    for name, extra in (("mlp", ["--instances", "2"]), ("mlp_dyn", ["--instances", "2"]),
                        ("mlp_nobatch", ["--max-batch", "0"])):
        r = runner.invoke(cli, ["triton-repo", str(bundles[name]), "-o", str(repo), "--name", name, *extra])
        assert r.exit_code == 0, r.output
    return repo


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    import tritonclient.http as th

    log = tmp_path_factory.mktemp("triton_log") / "tritonserver.log"
    srv = triton_server.TritonServer(repo, log).start()
    try:
        client = th.InferenceServerClient(srv.http_url)
        for name in MODELS:
            client.load_model(name)
        client.close()
        yield srv
    finally:
        code = srv.stop(timeout=30)
        print(f"tritonserver exited with {code} after SIGTERM")
    assert code == 0, srv.log_tail()
    # No backend error was logged for anything but the requests this file sends wrong on purpose.
    log_text = log.read_text(errors="replace")
    assert "cannot send a response" not in log_text and "execute failed" not in log_text


@pytest.fixture
def http(server):
    import tritonclient.http as th

    client = th.InferenceServerClient(server.http_url)
    yield client
    client.close()  # an open keep-alive connection would hold the server's SIGTERM exit for its timeout


@pytest.fixture
def grpc(server):
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def _infer(client, module, model: str, x: np.ndarray, datatype: str = "FP32") -> np.ndarray:
    inp = module.InferInput("x", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("output_0")


def test_repository_layout(repo):
    for name in MODELS:
        assert (repo / name / "config.pbtxt").exists()
        assert (repo / name / "1" / "model.bundle").exists()
        assert (repo / name / "libtriton_mlrt.so").exists()
    assert "max_batch_size: 8" in (repo / "mlp_dyn" / "config.pbtxt").read_text()
    assert "max_batch_size" not in (repo / "mlp" / "config.pbtxt").read_text().split("\n", 2)[2]


def test_metadata_and_autocompleted_config(http, bundles):
    for name in MODELS:
        assert http.is_model_ready(name)
    meta = http.get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 256]}]
    assert meta["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [1, 10]}]
    assert http.get_model_metadata("mlp_dyn")["inputs"][0]["shape"] == [-1, 256]

    static = http.get_model_config("mlp")
    assert static["backend"] == "mlrt" and static["max_batch_size"] == 0
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in static["input"]] == [("x", "TYPE_FP32", [1, 256])]
    assert [(o["name"], [int(d) for d in o["dims"]]) for o in static["output"]] == [("output_0", [1, 10])]
    assert static["instance_group"][0]["kind"] == "KIND_CPU" and static["instance_group"][0]["count"] == 2

    dyn = http.get_model_config("mlp_dyn")
    assert dyn["max_batch_size"] == 8 and "dynamic_batching" in dyn
    assert [int(d) for d in dyn["input"][0]["dims"]] == [256]
    assert [int(d) for d in dyn["output"][0]["dims"]] == [10]

    nobatch = http.get_model_config("mlp_nobatch")
    assert nobatch["max_batch_size"] == 0
    assert [int(d) for d in nobatch["input"][0]["dims"]] == [-1, 256]


def test_infer_http_and_grpc_equal_in_process_mlrt(http, grpc, bundles):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    rng = np.random.default_rng(0)
    cases = [("mlp", 1), ("mlp_dyn", 1), ("mlp_dyn", 3), ("mlp_dyn", 8), ("mlp_nobatch", 5)]
    for name, rows in cases:
        x = rng.standard_normal((rows, 256)).astype(np.float32)
        expected = mlrt.load(str(bundles[name])).run(x)
        for client, module in ((http, th), (grpc, tg)):
            got = _infer(client, module, name, x)
            assert got.dtype == np.float32 and got.shape == (rows, 10)
            # Each request here runs alone (sequential), at the same shape as the in-process run: bit-exact.
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} rows={rows} via {module.__name__}")


def test_bad_requests_get_errors_and_the_server_keeps_serving(http, grpc):
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    bad = [
        ("mlp", np.zeros((1, 255), np.float32), "FP32", "shape"),           # Triton checks the declared dims
        ("mlp", np.zeros((1, 256), np.float64), "FP64", "FP64"),             # dtype
        ("mlp_dyn", np.zeros((9, 256), np.float32), "FP32", "batch-size"),  # above max_batch_size
        ("mlp_dyn", np.zeros((2, 7), np.int32), "INT32", "INT32"),
        # dims [-1, 256]: Triton lets it through, the backend refuses it with mlrt's message
        ("mlp_nobatch", np.zeros((9, 256), np.float32), "FP32", "9 is outside 1..8"),
        ("mlp_nobatch", np.zeros((0, 256), np.float32), "FP32", "0 is outside 1..8"),
    ]
    for name, x, dtype, words in bad:
        for client, module in ((http, th), (grpc, tg)):
            with pytest.raises(InferenceServerException) as e:
                _infer(client, module, name, x, dtype)
            assert words in str(e.value), str(e.value)
    # A request naming an input the model does not have.
    inp = th.InferInput("y", [1, 256], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 256), np.float32))
    with pytest.raises(InferenceServerException):
        http.infer("mlp", [inp])
    assert http.is_server_live() and http.is_server_ready()
    for name in MODELS:
        assert http.is_model_ready(name)
        assert _infer(http, th, name, np.ones((1, 256), np.float32)).shape == (1, 10)


def test_concurrent_single_rows_are_batched(server, bundles):
    import tritonclient.http as th

    model = mlrt.load(str(bundles["mlp_dyn"]))
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((8, 25, 256)).astype(np.float32)
    key_count = 'nv_inference_count{model="mlp_dyn",version="1"}'
    key_exec = 'nv_inference_exec_count{model="mlp_dyn",version="1"}'
    before = server.metrics()
    failures = []

    def worker(t):
        client = th.InferenceServerClient(server.http_url)
        for i in range(rows.shape[1]):
            x = rows[t, i : i + 1]
            got = _infer(client, th, "mlp_dyn", x)
            # Batched with other rows: same math, possibly another kernel path than a 1-row run.
            if not np.allclose(got, model.run(x), rtol=1e-5, atol=1e-5):
                failures.append((t, i))
        client.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = server.metrics()
    count = after[key_count] - before.get(key_count, 0)
    execs = after[key_exec] - before.get(key_exec, 0)
    print(f"mlp_dyn: {count:.0f} inferences in {execs:.0f} executions")
    assert not failures, f"rows answered with another row's output: {failures[:5]}"
    assert count == 200
    assert execs < count, "no request was batched with another"


def test_statistics_count_real_work(http):
    stats = http.get_inference_statistics("mlp_nobatch")["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 1
    assert int(stats["inference_stats"]["fail"]["count"]) >= 1  # the refused requests above
    assert int(stats["inference_stats"]["compute_infer"]["ns"]) > 0
    assert int(stats["execution_count"]) >= 1


def test_unload_and_reload(server, http):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    x = np.ones((1, 256), np.float32)
    expected = _infer(http, th, "mlp", x)
    rss = []
    for _ in range(4):
        http.unload_model("mlp")
        assert not http.is_model_ready("mlp")
        with pytest.raises(InferenceServerException):
            _infer(http, th, "mlp", x)
        http.load_model("mlp")
        assert http.is_model_ready("mlp")
        np.testing.assert_array_equal(_infer(http, th, "mlp", x), expected)
        rss.append(server.rss_bytes())
    print("server RSS after each reload (MiB):", [round(r / 2**20, 1) for r in rss])
    # One bundle is 0.5 MiB; a leak of the model per cycle would show as steady growth.
    assert rss[-1] - rss[0] < 32 * 2**20


def test_config_that_disagrees_with_the_bundle_is_refused(server, http, bundles, repo):
    from tritonclient.utils import InferenceServerException

    folder = repo / "mlp_wrong"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.bundle").write_bytes(bundles["mlp"].read_bytes())
    (folder / "libtriton_mlrt.so").write_bytes((repo / "mlp" / "libtriton_mlrt.so").read_bytes())
    (folder / "config.pbtxt").write_text(
        'backend: "mlrt"\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 1, 128 ] } ]\n'
        'output [ { name: "output_0" data_type: TYPE_FP32 dims: [ 1, 10 ] } ]\n')
    with pytest.raises(InferenceServerException) as e:
        http.load_model("mlp_wrong")
    assert "the bundle's are [1,256]" in str(e.value), str(e.value)
    (folder / "config.pbtxt").write_text('backend: "mlrt"\nmax_batch_size: 4\n')
    with pytest.raises(InferenceServerException) as e:
        http.load_model("mlp_wrong")
    assert "cannot batch" in str(e.value), str(e.value)
    # Live and serving; not "ready" while a model failed to load (Triton's strict readiness) until
    # that model is unloaded.
    assert http.is_server_live() and http.is_model_ready("mlp")
    import tritonclient.http as th

    assert _infer(http, th, "mlp", np.ones((1, 256), np.float32)).shape == (1, 10)
    # Fixed in place, the same model loads (auto-completed) and the server is ready again.
    (folder / "config.pbtxt").write_text('backend: "mlrt"\n')
    http.load_model("mlp_wrong")
    assert _infer(http, th, "mlp_wrong", np.ones((1, 256), np.float32)).shape == (1, 10)
    assert http.is_server_ready()


def test_bounded_load(server, bundles):
    """2000 requests at concurrency 8 per model (capped at 60 s each): zero errors. Prints
    throughput and p50/p99 next to in-process mlrt on the same rows; nothing timed is asserted."""
    x = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
    results = []
    for label, name in (("triton http, dynamic batching", "mlp_dyn"), ("triton http, one request per run", "mlp_nobatch")):
        make_state, call = triton_server.http_infer_call(server.http_url, name, x)
        r = triton_server.run_load(call, make_state, requests=2000, concurrency=8, cap_s=60)
        results.append(r.line(label))
        assert r.errors == 0, r.first_error
        assert len(r.latencies_ms) == 2000 or r.seconds >= 59, "stopped early without the cap"
    model = mlrt.load(str(bundles["mlp_dyn"]), num_threads=1)
    r = triton_server.run_load(lambda state, i: model.run(x), lambda: None, requests=2000, concurrency=8, cap_s=60)
    results.append(r.line("in-process mlrt (8 threads)"))
    print("\n" + "\n".join(results))
