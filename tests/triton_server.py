"""Starting Triton Inference Server (from the nvidia-pytriton wheel) on loopback, and a bounded
load loop. Shared by tests/test_triton.py and benchmarks/triton_load.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# scripts/setup.sh installs the wheel here: pip install --no-deps --target build/triton nvidia-pytriton==0.7.0
TRITON_DIR = Path(os.environ.get("MLRT_TRITON_DIR", ROOT / "build" / "triton"))
TRITONSERVER = TRITON_DIR / "pytriton" / "tritonserver" / "bin" / "tritonserver"
HOST = "127.0.0.1"


def why_unavailable() -> str | None:
    """None when the server binary and the client are usable, else the reason."""
    if not TRITONSERVER.exists():
        return (f"{TRITONSERVER} not found: install it with `pip install --no-deps --target {TRITON_DIR} "
                "nvidia-pytriton==0.7.0` (scripts/setup.sh does)")
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError as e:
        return f"tritonclient is not installed ({e}): pip install 'tritonclient[http,grpc]'"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class TritonServer:
    """A tritonserver process on 127.0.0.1 with free ports; stop() sends SIGTERM."""

    repo: Path
    log_path: Path
    explicit: bool = True
    proc: subprocess.Popen | None = None
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    _log: object = field(default=None, repr=False)

    def start(self, timeout: float = 60.0) -> "TritonServer":
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)
        cmd = [str(TRITONSERVER), f"--model-repository={self.repo}",
               f"--http-address={HOST}", f"--http-port={self.http_port}",
               f"--grpc-address={HOST}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={HOST}", f"--metrics-port={self.metrics_port}",
               "--allow-cpu-metrics=false", "--allow-gpu-metrics=false", "--exit-timeout-secs=10"]
        if self.explicit:
            cmd.append("--model-control-mode=explicit")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout} s:\n{self.log_tail()}")

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by their full name with labels, e.g. 'nv_inference_count{model="m",version="1"}'."""
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL (and an error) only if it does not exit within `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"tritonserver did not exit within {timeout} s of SIGTERM:\n{self.log_tail()}")
        finally:
            if self._log:
                self._log.close()


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    first_error: str = ""

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        return float(np.percentile(self.latencies_ms, p)) if self.latencies_ms else float("nan")

    def line(self, label: str) -> str:
        return (f"{label:<34} {len(self.latencies_ms):5d} req  {self.errors} errors  {self.throughput:8.0f} req/s  "
                f"p50 {self.percentile(50):7.3f} ms  p99 {self.percentile(99):7.3f} ms")


def run_load(call, make_state, requests: int = 2000, concurrency: int = 8, cap_s: float = 60.0) -> LoadResult:
    """`requests` calls spread over `concurrency` threads, stopping early at `cap_s`. make_state()
    runs once per thread (a client of its own); call(state, i) does request i."""
    lock = threading.Lock()
    next_i = [0]
    latencies: list[float] = []
    errors = [0, ""]
    deadline = time.monotonic() + cap_s

    def worker():
        state = make_state()
        try:
            loop(state)
        finally:
            client = state[0] if isinstance(state, tuple) else state
            if hasattr(client, "close"):
                client.close()  # open keep-alive connections would delay the server's exit

    def loop(state):
        while time.monotonic() < deadline:
            with lock:
                i = next_i[0]
                if i >= requests:
                    return
                next_i[0] += 1
            t0 = time.perf_counter()
            try:
                call(state, i)
            except Exception as e:  # counted and reported: the load test asserts zero
                with lock:
                    errors[0] += 1
                    errors[1] = errors[1] or repr(e)
                continue
            dt = (time.perf_counter() - t0) * 1e3
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(requests, errors[0], time.perf_counter() - t0, latencies, errors[1])


def http_infer_call(url: str, model: str, x: np.ndarray, datatype: str = "FP32", output: str = "output_0"):
    """(make_state, call) for run_load: one HTTP client per thread, binary tensors."""
    import tritonclient.http as th

    def make_state():
        client = th.InferenceServerClient(url)
        inp = th.InferInput("x", list(x.shape), datatype)
        inp.set_data_from_numpy(x, binary_data=True)
        out = th.InferRequestedOutput(output, binary_data=True)
        return client, inp, out

    def call(state, i):
        client, inp, out = state
        client.infer(model, [inp], outputs=[out]).as_numpy(output)

    return make_state, call


def grpc_infer_call(url: str, model: str, x: np.ndarray, datatype: str = "FP32", output: str = "output_0"):
    """(make_state, call) for run_load: one gRPC client per thread."""
    import tritonclient.grpc as tg

    def make_state():
        client = tg.InferenceServerClient(url)
        inp = tg.InferInput("x", list(x.shape), datatype)
        inp.set_data_from_numpy(x)
        out = tg.InferRequestedOutput(output)
        return client, inp, out

    def call(state, i):
        client, inp, out = state
        client.infer(model, [inp], outputs=[out]).as_numpy(output)

    return make_state, call
