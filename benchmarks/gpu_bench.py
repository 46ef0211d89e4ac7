"""GPU benchmark: mlrt's CUDA target against eager PyTorch (and torch.compile) on the same GPU, in one run.

Two steps, because the compiler (torch-mlir) and the GPU need not be on the same machine:

  python benchmarks/gpu_bench.py prepare DIR [--models ...]   # builds CUDA bundles + eager CPU references
  python benchmarks/gpu_bench.py run DIR [--compile]           # on the GPU machine: check, time, memory

`run` needs mlrt and, for the peers, PyTorch with CUDA. Inputs are regenerated from a seed on both
sides (numpy's PCG64 is stable), so DIR holds bundles and reference outputs only. For every bundle
it checks mlrt's outputs against the eager CPU reference (tolerance by precision: zoo.PRECISION_TOLERANCE),
then interleaves timed runs of mlrt and eager PyTorch on the GPU — both from numpy inputs to numpy
outputs, so both pay the same host copies — and prints min / median latency, the ratio, and peak
device memory (mlrt: weights + execution context it allocated; PyTorch: max_memory_allocated).

fp16/bf16 bundles store their GEMM and conv weights in that type (docs/bundle-format.md,
"Half-precision weights"): for those, `run` also times eager PyTorch with the model converted to
that dtype (`eager_half`: weights halved there too) and reports mlrt's device bytes at load (the
weights alone), and at the end compares each half bundle's weights and device memory with the
fp32 bundle of the same model and batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from zoo import PRECISION_TOLERANCE  # noqa: E402  (the tests' tolerances: tests/test_cuda.py)

DEFAULT_SET = [(m, b, p) for m in ("resnet50", "mobilenet_v2", "encoder") for b in (1, 32) for p in ("fp32", "tf32", "bf16")]
DEFAULT_SET += [("mlp", 1, "fp32"), ("small_cnn", 1, "fp16")]
# fp16 weights too (bf16 above already stores bf16 weights): device memory and latency vs fp32 and eager
DEFAULT_SET += [(m, b, "fp16") for m in ("resnet50", "encoder") for b in (1, 32)]


def make_inputs(specs: list[dict], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        if s["dtype"].startswith("float"):
            out.append(rng.standard_normal(s["shape"]).astype(s["dtype"]))
        else:  # token ids
            out.append(rng.integers(0, 1000, size=s["shape"]).astype(s["dtype"]))
    return out


def model_with_batch(name: str, batch: int):
    import zoo

    model, inputs = zoo.make(name)
    inputs = tuple(x.repeat(batch, *([1] * (x.dim() - 1))) if batch != 1 else x for x in inputs)
    return model, inputs


def prepare(directory: Path, cases: list[tuple[str, int, str]]) -> None:
    import torch

    import mlpack

    directory.mkdir(parents=True, exist_ok=True)
    for name, batch, precision in cases:
        tag = f"{name}-b{batch}-{precision}"
        model, examples = model_with_batch(name, batch)
        t0 = time.perf_counter()
        result = mlpack.build(model, examples, directory / f"{tag}.bundle", target="cuda", precision=precision)
        inputs = make_inputs(result.manifest["inputs"])
        with torch.no_grad():
            ref = model(*[torch.from_numpy(x) for x in inputs])
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        np.savez(directory / f"{tag}.ref.npz", *[r.numpy() for r in refs])
        weights = result.manifest["weights"]
        stored = {}
        for w in weights:
            stored[w["dtype"]] = stored.get(w["dtype"], 0) + w["nbytes"]
        print(f"{tag}: {result.bundle_bytes / 2**20:.1f} MiB, {len(result.manifest['targets']['cuda']['launches'])} "
              f"launches, weights " + ", ".join(f"{d} {n / 2**20:.1f} MiB" for d, n in sorted(stored.items())) +
              f", built in {time.perf_counter() - t0:.1f} s", flush=True)


def _check(outputs, refs, precision: str) -> float:
    worst = 0.0
    for a, r in zip(outputs, refs):
        scale = max(1.0, float(np.abs(r).max()))
        err = float((np.abs(a - r) / (np.abs(r) + scale)).max())
        worst = max(worst, err)
    return worst


def _time(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved: every runtime sees the same GPU state and clocks
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def run(directory: Path, repeats: int, warmup: int, use_compile: bool, out_json: Path | None, only=()) -> int:
    import torch

    import mlrt

    assert torch.cuda.is_available(), "the run step needs a CUDA GPU for the PyTorch peers"
    dev = torch.device("cuda:0")
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, mlrt {mlrt.__version__}", flush=True)
    rows, failures = [], 0
    for bundle in sorted(directory.glob("*.bundle")):
        tag = bundle.stem
        if only and not any(o in tag for o in only):
            continue
        name, b, precision = tag.rsplit("-", 2)
        batch = int(b[1:])
        t0 = time.perf_counter()
        model = mlrt.load(str(bundle), device="cuda:0")
        load_ms = (time.perf_counter() - t0) * 1e3
        weights_bytes = model.device_bytes  # at load: the weights section alone (halved by fp16/bf16 weights)
        specs = [{"dtype": s.dtype.name, "shape": list(s.shape)} for s in model.inputs]
        inputs = make_inputs(specs)
        ref = np.load(directory / f"{tag}.ref.npz")
        refs = [ref[k] for k in ref.files]
        outputs = model.run_flat(*inputs)
        device_bytes = model.device_bytes  # weights + one execution context (before the threads add more)
        err = _check(outputs, refs, precision)
        # Execution contexts under concurrency: 4 threads sharing the model must agree bit for bit.
        with ThreadPoolExecutor(4) as pool:
            same = all(all(np.array_equal(a, b) for a, b in zip(outs, outputs))
                       for outs in pool.map(lambda _: model.run_flat(*inputs), range(16)))
        ok = err <= PRECISION_TOLERANCE[precision] and same
        failures += not ok
        # Peers: the zoo model on the GPU, numpy in -> numpy out like mlrt.
        torch_model, _ = model_with_batch(name, batch)
        torch_model = torch_model.to(dev).eval()
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"

        def eager(m=torch_model):
            with torch.inference_mode():
                y = m(*[torch.from_numpy(x).to(dev) for x in inputs])
                return y.cpu().numpy()

        fns = {"mlrt": lambda: model.run_flat(*inputs), "eager": eager}
        torch.cuda.reset_peak_memory_stats()
        eager()
        torch.cuda.synchronize()
        eager_peak = torch.cuda.max_memory_allocated()
        eager_err = _check([eager()], refs, precision)
        half_peak = half_err = None
        if precision in ("fp16", "bf16"):  # the peer at the bundle's precision: the model in that dtype
            dtype = torch.float16 if precision == "fp16" else torch.bfloat16
            half_model, _ = model_with_batch(name, batch)
            half_model = half_model.to(dev, dtype).eval()

            def eager_half(m=half_model, dtype=dtype):
                with torch.inference_mode():
                    y = m(*[torch.from_numpy(x).to(dev).to(dtype) if x.dtype.kind == "f" else torch.from_numpy(x).to(dev)
                            for x in inputs])
                    return y.float().cpu().numpy()

            try:
                torch.cuda.reset_peak_memory_stats()
                eager_half()
                torch.cuda.synchronize()
                # the fp32 peer is still resident: its peak above what is allocated now, plus its own weights
                half_peak = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated() + \
                    sum(p.numel() * p.element_size() for p in half_model.parameters())
                half_err = _check([eager_half()], refs, precision)
                fns["eager_half"] = eager_half
            except Exception as e:  # noqa: BLE001 - report and go on: the peer is optional
                print(f"  eager in {precision} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        if use_compile and precision == "fp32" and batch == 1:
            try:
                compiled = torch.compile(torch_model, mode="reduce-overhead")

                def comp(m=compiled):
                    with torch.inference_mode():
                        y = m(*[torch.from_numpy(x).to(dev) for x in inputs])
                        return y.cpu().numpy()

                t0 = time.perf_counter()
                for _ in range(3):
                    comp()
                print(f"  torch.compile warm-up {time.perf_counter() - t0:.1f} s", flush=True)
                fns["compile"] = comp
            except Exception as e:  # noqa: BLE001 - report and go on: the peer is optional
                print(f"  torch.compile failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        times = _time(fns, repeats, warmup)
        row = {"model": name, "batch": batch, "precision": precision, "max_err": err, "ok": ok,
               "eager_max_err": eager_err, "mlrt_device_mib": device_bytes / 2**20,
               "mlrt_weights_mib": weights_bytes / 2**20,
               "eager_peak_mib": eager_peak / 2**20, "mlrt_load_ms": load_ms}
        if half_peak is not None:
            row.update(eager_half_peak_mib=half_peak / 2**20, eager_half_max_err=half_err)
        for k, t in times.items():
            row[f"{k}_min_ms"] = min(t)
            row[f"{k}_median_ms"] = statistics.median(t)
        rows.append(row)
        line = (f"{tag:<24} err {err:.1e}{'' if same else ' THREADS-DIFFER'} {'ok ' if ok else 'BAD'} | mlrt {row['mlrt_min_ms']:7.3f} / "
                f"{row['mlrt_median_ms']:7.3f} ms | eager {row['eager_min_ms']:7.3f} / {row['eager_median_ms']:7.3f} ms"
                f" | mlrt/eager {row['mlrt_min_ms'] / row['eager_min_ms']:.2f} (min) "
                f"{row['mlrt_median_ms'] / row['eager_median_ms']:.2f} (median)")
        if "compile_min_ms" in row:
            line += f" | compile {row['compile_min_ms']:7.3f} ms, mlrt/compile {row['mlrt_min_ms'] / row['compile_min_ms']:.2f}"
        if "eager_half_min_ms" in row:
            line += (f" | eager-{precision} {row['eager_half_min_ms']:7.3f} ms, mlrt/eager-{precision} "
                     f"{row['mlrt_min_ms'] / row['eager_half_min_ms']:.2f} (min)")
        line += (f" | device MiB mlrt {row['mlrt_device_mib']:.1f} (weights {row['mlrt_weights_mib']:.1f}) eager "
                 f"{row['eager_peak_mib']:.1f}")
        if half_peak is not None:
            line += f" eager-{precision} {row['eager_half_peak_mib']:.1f}"
        line += f" | mlrt load {load_ms:.0f} ms"
        print(line, flush=True)
        model = torch_model = fns = half_model = None  # release this model's GPU memory before the next
        torch.cuda.empty_cache()
    _half_summary(rows)
    if out_json:
        out_json.write_text(json.dumps(rows, indent=1))
    print(f"{len(rows)} bundles, {failures} outside tolerance")
    return 1 if failures else 0


def _half_summary(rows: list[dict]) -> None:
    """fp16/bf16-weight bundles against the fp32 bundle of the same model and batch: weights and
    device memory (both should be about 0.5x), latency."""
    fp32 = {(r["model"], r["batch"]): r for r in rows if r["precision"] == "fp32"}
    for r in rows:
        base = fp32.get((r["model"], r["batch"]))
        if r["precision"] not in ("fp16", "bf16") or base is None:
            continue
        print(f"half weights {r['model']}-b{r['batch']}-{r['precision']} vs fp32: weights "
              f"{r['mlrt_weights_mib']:.1f} / {base['mlrt_weights_mib']:.1f} MiB = "
              f"{r['mlrt_weights_mib'] / base['mlrt_weights_mib']:.2f}x, device "
              f"{r['mlrt_device_mib'] / base['mlrt_device_mib']:.2f}x, latency (min) "
              f"{r['mlrt_min_ms'] / base['mlrt_min_ms']:.2f}x", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--case", action="append", default=[], metavar="MODEL:BATCH:PRECISION",
                   help=f"repeatable; default: {' '.join(':'.join(map(str, c)) for c in DEFAULT_SET)}")
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("--repeats", type=int, default=30)
    r.add_argument("--warmup", type=int, default=5)
    r.add_argument("--compile", action="store_true",
                   help="also time torch.compile(mode='reduce-overhead') (fp32, batch 1: compiling takes ~a minute each)")
    r.add_argument("--only", default="", help="comma-separated substrings: run only bundles whose name has one")
    r.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if args.cmd == "prepare":
        cases = [(c.split(":")[0], int(c.split(":")[1]), c.split(":")[2]) for c in args.case] or DEFAULT_SET
        prepare(args.dir, cases)
        return 0
    return run(args.dir, args.repeats, args.warmup, args.compile, args.json, [o for o in args.only.split(",") if o])


if __name__ == "__main__":
    sys.exit(main())
