"""Side-by-side benchmark of mlrt against eager PyTorch (and ONNX Runtime when installed).

    python benchmarks/bench.py                      # the zoo models of issue 3
    python benchmarks/bench.py resnet50 --repeats 30
    python benchmarks/bench.py --no-cold            # skip the fresh-process measurements

Latency: one process, the runtimes interleaved in short blocks (so all see the same machine load),
batch 1, `--threads` threads for every runtime; min and median over the repeats, and ratios.
Outputs are checked against eager. Cold start (process start -> first result) and peak RSS are
measured per runtime in fresh processes. Machines here are shared and noisy: trust min first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "encoder", "mlp"]


def _build(name: str, out: Path, threads: int):
    import torch

    import mlpack
    import zoo

    model, inputs = zoo.make(name)
    bundle = out / f"{name}.bundle"
    t0 = time.perf_counter()
    result = mlpack.build(model, inputs, bundle)
    build_s = time.perf_counter() - t0
    torch.save(model, out / f"{name}.pt")  # for the eager cold-start process
    np.savez(out / f"{name}_inputs.npz", *[x.numpy() for x in inputs])
    return model, inputs, bundle, result, build_s


def _onnx_session(model, inputs, path: Path, threads: int):
    try:
        import onnxruntime as ort
        import torch
    except ImportError:
        return None
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17)
    except Exception as e:  # noqa: BLE001
        print(f"  (onnx export failed: {str(e).splitlines()[0]})")
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _quiesce(step: float = 0.005, limit: float = 0.3) -> None:
    """Sleep until no thread of this process is spinning: until a `step` of sleep costs the
    process under a quarter of a core, or for `limit` at most.

    Runtimes keep their worker threads spinning after a call: ONNX Runtime's for ~60 ms (a
    whole core: 63 ms of CPU in the 60 ms after a SqueezeNet call, Zen 3), PyTorch's OpenMP
    threads ~10 ms, mlrt's 0.2 ms. On 2 cores, a runtime timed inside another's spin has one core
    (SqueezeNet in mlrt at 2 threads: min/median 0.47/0.77 ms alone, 0.69/1.28 ms 5 ms after ORT
    calls). A deployment runs one runtime, so each block starts on a quiet process."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(step)
        if time.process_time() - c0 < 0.25 * (time.perf_counter() - t0):
            return


def _time_interleaved(fns: dict, repeats: int, block: int = 10, budget_s: float = 60.0) -> dict:
    """Alternate blocks of `block` timed calls per runtime. Before each block the process goes
    quiet (`_quiesce`: the previous runtime's threads stop spinning), then at least 5 ms of
    untimed calls bring this runtime's own threads and caches up, as in a service that runs it
    steadily. Blocks keep the runtimes interleaved, so all see the same machine load."""
    times = {k: [] for k in fns}
    start = time.perf_counter()
    while min(len(t) for t in times.values()) < repeats:
        for k, fn in fns.items():
            _quiesce()
            settle = time.perf_counter() + 0.005
            fn()  # switch-over calls, untimed
            while time.perf_counter() < settle:
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s and min(len(t) for t in times.values()) >= block:
            break
    return times


def latency_summary(times: dict) -> dict:
    """Min and median ms per runtime, and mlrt's ratios of minima to eager and ORT."""
    row = {}
    for k, t in times.items():
        row[f"{k}_min_ms"] = round(min(t), 3)
        row[f"{k}_med_ms"] = round(statistics.median(t), 3)
    row["mlrt/eager"] = round(row["mlrt_min_ms"] / row["eager_min_ms"], 3)
    if "ort" in times:
        row["mlrt/ort"] = round(row["mlrt_min_ms"] / row["ort_min_ms"], 3)
    return row


_COLD_MLRT = textwrap.dedent("""
    import sys
    _hwm = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
    import numpy as np, mlrt
    z = np.load(sys.argv[2]); xs = [z[k] for k in z.files]
    m = mlrt.load(sys.argv[1]); m.run_flat(*xs)
    print(_hwm())
""")
_COLD_TORCH = textwrap.dedent("""
    import sys
    _hwm = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
    import numpy as np, torch
    torch.set_num_threads(int(sys.argv[3]))
    sys.path.insert(0, sys.argv[4])
    z = np.load(sys.argv[2]); xs = [torch.from_numpy(z[k]) for k in z.files]
    m = torch.load(sys.argv[1], weights_only=False)
    with torch.inference_mode(): m(*xs)
    print(_hwm())
""")
_COLD_ORT = textwrap.dedent("""
    import sys
    _hwm = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
    import numpy as np, onnxruntime as ort
    z = np.load(sys.argv[2]); xs = [z[k] for k in z.files]
    o = ort.SessionOptions(); o.intra_op_num_threads = int(sys.argv[3])
    s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
    s.run(None, {i.name: x for i, x in zip(s.get_inputs(), xs)})
    print(_hwm())
""")


def _cold(script: str, args: list[str], runs: int = 3) -> tuple[float, float]:
    """(best wall ms from process start to first result, peak RSS MiB). Peak RSS is the process's own
    VmHWM: ru_maxrss would include the forking parent's footprint, which survives exec."""
    best, rss = float("inf"), 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
        wall = (time.perf_counter() - t0) * 1e3
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        best = min(best, wall)
        rss = int(proc.stdout.split()[-1]) / 1024
    return best, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--no-cold", action="store_true", help="skip cold start / peak RSS processes")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()

    import torch

    import mlrt

    torch.set_num_threads(args.threads)
    os.environ["MLRT_NUM_THREADS"] = str(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d')} | {platform.processor() or platform.machine()} | {os.cpu_count()} cpus | "
          f"torch {torch.__version__} | threads {args.threads}")
    rows = []
    for name in args.models:
        model, inputs, bundle, result, build_s = _build(name, args.out, args.threads)
        m = mlrt.load(bundle)
        xs = [x.numpy() for x in inputs]
        with torch.inference_mode():
            ref = model(*inputs).numpy()
        got = m.run(*xs)
        err = float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))
        fns = {"eager": lambda: model(*inputs), "mlrt": lambda: m.run(*xs)}
        sess = _onnx_session(model, inputs, args.out / f"{name}.onnx", args.threads)
        if sess is not None:
            feed = {i.name: x for i, x in zip(sess.get_inputs(), xs)}
            fns["ort"] = lambda: sess.run(None, feed)
        with torch.inference_mode():
            times = _time_interleaved(fns, args.repeats)
        row = {"model": name, "build_s": round(build_s, 1), "bundle_mib": round(result.bundle_bytes / 2**20, 1),
               "rel_err": err, "n": len(times["mlrt"])}
        row.update(latency_summary(times))
        if not args.no_cold:
            npz = str(args.out / f"{name}_inputs.npz")
            row["mlrt_cold_ms"], row["mlrt_rss_mib"] = _cold(_COLD_MLRT, [str(bundle), npz])
            row["eager_cold_ms"], row["eager_rss_mib"] = _cold(
                _COLD_TORCH, [str(args.out / f"{name}.pt"), npz, str(args.threads), str(ROOT / "tests")])
            if sess is not None:
                row["ort_cold_ms"], row["ort_rss_mib"] = _cold(
                    _COLD_ORT, [str(args.out / f"{name}.onnx"), npz, str(args.threads)])
        rows.append(row)
        line = (f"{name:<13} eager {row['eager_min_ms']:9.2f} / {row['eager_med_ms']:9.2f} ms | "
                f"mlrt {row['mlrt_min_ms']:9.2f} / {row['mlrt_med_ms']:9.2f} ms")
        if "ort" in times:
            line += f" | ort {row['ort_min_ms']:8.2f} / {row['ort_med_ms']:8.2f} ms"
        line += f" | mlrt/eager {row['mlrt/eager']:.2f}"
        if "mlrt/ort" in row:
            line += f" mlrt/ort {row['mlrt/ort']:.2f}"
        line += f" | err {err:.1e} | n={row['n']}"
        print(line, flush=True)
        if not args.no_cold:
            cold = f"{'':<13} cold start / peak RSS: mlrt {row['mlrt_cold_ms']:.0f} ms {row['mlrt_rss_mib']:.0f} MiB | " \
                   f"eager {row['eager_cold_ms']:.0f} ms {row['eager_rss_mib']:.0f} MiB"
            if "ort_cold_ms" in row:
                cold += f" | ort {row['ort_cold_ms']:.0f} ms {row['ort_rss_mib']:.0f} MiB"
            print(cold, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
