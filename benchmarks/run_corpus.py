"""Build, check and (optionally) time every model of the real-model corpus (tests/corpus.py).

    python benchmarks/run_corpus.py                     # build + check all: model, build s, bundle MB, error
    python benchmarks/run_corpus.py hf_bert tv_swin     # some of them
    python benchmarks/run_corpus.py --ci                # the part CI runs
    python benchmarks/run_corpus.py --bench             # + eager vs mlrt vs ONNX Runtime, same process

Check: each bundle runs through mlrt in a fresh process where torch cannot be imported
(tests/no_torch_run.py) and must match eager PyTorch relative to the output's largest value:
`err` = max|mlrt - eager| / max|eager| <= 1e-4, for every output.

Bench: one process, eager / mlrt / ORT interleaved in blocks (benchmarks/bench.py), batch 1,
`--threads` threads each; min and median; per-model ratios of minima, their geometric means, the
worst ratio, and which models ORT could not export.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import warnings

import numpy as np

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

RTOL = 1e-4


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _isa() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"


def flat(out) -> list[np.ndarray]:
    import torch

    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [t.detach().numpy() for t in leaves if isinstance(t, torch.Tensor)]


def max_error(actual: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, bool]:
    """(max |a - r| / max|r| over outputs, whether that is within RTOL for every output)."""
    worst, ok = 0.0, len(actual) == len(reference)
    for a, r in zip(actual, reference):
        if a.shape != r.shape or a.dtype != r.dtype:
            return float("inf"), False
        if not r.size:
            continue
        a64, r64 = a.astype(np.float64), r.astype(np.float64)
        scale = float(np.abs(r64).max()) or 1.0
        err = float(np.abs(a64 - r64).max()) / scale
        worst = max(worst, err)
        ok = ok and err <= RTOL
    return worst, ok


def run_without_torch(bundle: Path, inputs: list[np.ndarray], work: Path) -> list[np.ndarray]:
    npz, out = work / "inputs.npz", work / "outputs.npz"
    np.savez(npz, *inputs)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "no_torch_run.py"), str(bundle), str(npz), str(out)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"mlrt run failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    with np.load(out) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def check(name: str, work: Path) -> dict:
    """Build `name`, run it without torch, compare with eager. Never raises."""
    import torch

    import corpus
    import mlpack

    row = {"model": name, "source": corpus.ENTRIES[name].source}
    try:
        model, inputs = corpus.make(name)
        with torch.no_grad():
            reference = flat(model(*inputs))
        bundle = work / f"{name}.bundle"
        t0 = time.perf_counter()
        result = mlpack.build(model, inputs, bundle)
        row["build_s"] = round(time.perf_counter() - t0, 1)
        row["bundle_mb"] = round(result.bundle_bytes / 1e6, 1)
        row["kernels"] = sum(result.manifest["targets"]["cpu"]["kernels"].values())
    except Exception as e:  # noqa: BLE001 - the table reports every failure
        row["status"] = f"build failed: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}"
        return row
    try:
        actual = run_without_torch(bundle, [x.numpy() for x in inputs], work)
    except Exception as e:  # noqa: BLE001
        row["status"] = str(e)[:160]
        return row
    row["err"], ok = max_error(actual, reference)
    row["status"] = "ok" if ok else "MISMATCH"
    row["bundle"] = str(bundle)
    return row


def bench(name: str, bundle: Path, threads: int, repeats: int, work: Path) -> dict:
    import torch

    import corpus
    import mlrt
    from bench import _onnx_session, _time_interleaved, latency_summary

    model, inputs = corpus.make(name)
    m = mlrt.load(bundle)
    xs = [x.numpy() for x in inputs]
    fns = {"eager": lambda: model(*inputs), "mlrt": lambda: m.run(*xs)}
    row = {}
    sess = _onnx_session(model, inputs, work / f"{name}.onnx", threads)
    if sess is not None:
        feed = {i.name: x for i, x in zip(sess.get_inputs(), xs)}
        try:
            sess.run(None, feed)
            fns["ort"] = lambda: sess.run(None, feed)
        except Exception as e:  # noqa: BLE001
            row["ort_error"] = str(e).splitlines()[0][:100]
    else:
        row["ort_error"] = "export failed"
    with torch.inference_mode():
        times = _time_interleaved(fns, repeats, budget_s=30.0)
    row.update(latency_summary(times))
    return row


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main() -> int:
    import corpus

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--ci", action="store_true", help="only the part CI runs")
    ap.add_argument("--bench", action="store_true", help="also time eager, mlrt and ORT")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=100,
                    help="timed calls per runtime (20 left mlrt's min up to 1.4x high on small models)")
    ap.add_argument("--out", type=Path, help="keep bundles here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    names = args.models or (corpus.CI if args.ci else corpus.NAMES)

    import torch

    torch.set_num_threads(args.threads)
    os.environ["MLRT_NUM_THREADS"] = str(args.threads)
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="mlpack-corpus-")
        args.out = Path(tmp.name)
    args.out.mkdir(parents=True, exist_ok=True)
    import mlpack  # noqa: F401 - fail early without the compiler

    print(f"# {time.strftime('%Y-%m-%d')} | {_cpu_model()} ({_isa()}) | {os.cpu_count()} cpus | torch {torch.__version__}"
          f" | threads {args.threads}", flush=True)
    header = f"{'model':<22} {'source':<12} {'build s':>7} {'MB':>6} {'kern':>4} {'err':>8}  status"
    if args.bench:
        header += "  | eager min/med ms | mlrt min/med ms | ORT min/med ms | mlrt/eager mlrt/ORT"
    print(header, flush=True)
    rows = []
    for name in names:
        row = check(name, args.out)
        if args.bench and row["status"] == "ok":
            try:
                row.update(bench(name, Path(row["bundle"]), args.threads, args.repeats, args.out))
            except Exception:  # noqa: BLE001
                row["bench_error"] = traceback.format_exc().strip().splitlines()[-1][:120]
        rows.append(row)
        line = (f"{name:<22} {row['source']:<12} {row.get('build_s', float('nan')):7.1f} "
                f"{row.get('bundle_mb', float('nan')):6.1f} {row.get('kernels', 0):4d} {row.get('err', float('nan')):8.1e}"
                f"  {row['status']}")
        if "mlrt_min_ms" in row:
            line += (f"  | {row['eager_min_ms']:.2f}/{row['eager_med_ms']:.2f} | {row['mlrt_min_ms']:.2f}/"
                     f"{row['mlrt_med_ms']:.2f} | ")
            line += f"{row['ort_min_ms']:.2f}/{row['ort_med_ms']:.2f}" if "ort_min_ms" in row else "-"
            line += f" | {row['mlrt/eager']:.2f} " + (f"{row['mlrt/ort']:.2f}" if "mlrt/ort" in row else "-")
        print(line, flush=True)
    ok = [r for r in rows if r["status"] == "ok"]
    print(f"\n{len(ok)}/{len(rows)} build and match eager", flush=True)
    timed = [r for r in rows if "mlrt/eager" in r]
    if timed:
        ve = [r["mlrt/eager"] for r in timed]
        vo = [r["mlrt/ort"] for r in timed if "mlrt/ort" in r]
        worst = max(timed, key=lambda r: r["mlrt/eager"])
        print(f"geomean mlrt/eager {_geomean(ve):.3f} over {len(ve)} (worst {worst['model']} {worst['mlrt/eager']:.2f}); "
              f"slower than eager: {sum(v >= 1 for v in ve)}")
        if vo:
            worst_o = max((r for r in timed if "mlrt/ort" in r), key=lambda r: r["mlrt/ort"])
            print(f"geomean mlrt/ORT   {_geomean(vo):.3f} over {len(vo)} (worst {worst_o['model']} "
                  f"{worst_o['mlrt/ort']:.2f}); above 1.25x ORT: {sum(v > 1.25 for v in vo)}")
        no_ort = [f"{r['model']} ({r['ort_error']})" for r in timed if "ort_error" in r]
        print(f"ORT could not run: {', '.join(no_ort) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
