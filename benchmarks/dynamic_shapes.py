"""Dynamic dims: one bundle for every size, against a static bundle of each size and eager PyTorch.

    python benchmarks/dynamic_shapes.py                 # zoo ResNet-50 (batch 1..32) and encoder (batch x seq)
    python benchmarks/dynamic_shapes.py encoder --repeats 20

For each size: the dynamic bundle (bucket sizes run their own program, sizes between buckets the
next bucket up, zero-padded), a static bundle built for exactly that size, and eager PyTorch,
interleaved in one process with the same threads; min and median ms, and dynamic/static and
dynamic/eager of the minima. Then bundle sizes and build times. Outputs are checked against eager.
Machines here are shared and noisy: compare within one run, trust min first.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# model -> (dynamic dims, buckets, the sizes to time: one tuple of symbol sizes each)
PLANS = {
    "resnet50": (["x:0=batch:1..32"], None, [(1,), (3,), (8,), (13,), (32,)]),
    "encoder": (["tokens:0=batch:1..8", "tokens:1=seq:32..128"], ["seq=32,64,128"],
                [(1, 32), (1, 128), (3, 64), (5, 128), (8, 128)]),
}


def _inputs_at(name, sizes, rng):
    if name == "resnet50":
        return [rng.standard_normal((sizes[0], 3, 224, 224)).astype(np.float32)]
    return [rng.integers(0, 1000, sizes).astype(np.int64)]


def _time(fns, repeats, block=3):
    """Interleaved blocks, so every runtime sees the same machine load. Each block starts with an
    untimed call: the previous runtime's threads may still be spinning (torch's OpenMP waits
    ~200 ms before sleeping), which would bill one runtime for the other."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: (min(t), statistics.median(t)) for k, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=list(PLANS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    import mlpack
    import mlrt
    import zoo

    torch.set_num_threads(args.threads)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"{platform.machine()} {cpu}, {args.threads} threads, torch {torch.__version__}, mlrt {mlrt.version()}")
    work = Path(tempfile.mkdtemp(prefix="mlrt-dyn-"))
    for name in args.models:
        dynamic, buckets, sizes_list = PLANS[name]
        model, (example,) = zoo.make(name)
        t0 = time.perf_counter()
        res = mlpack.build(model, [example], work / f"{name}.dyn.bundle", dynamic=dynamic, buckets=buckets)
        dyn_build = time.perf_counter() - t0
        dims = ", ".join(f"{d['name']} {d['min']}..{d['max']} buckets {d['buckets']}" +
                         ("" if d["padding"] is not None else " (not padded)") for d in res.manifest["dynamic_dims"])
        print(f"\n{name}: {dims}; {len(res.manifest['programs'])} programs, built in {dyn_build:.0f} s, "
              f"{res.bundle_bytes / 2**20:.1f} MiB")
        dyn = mlrt.load(work / f"{name}.dyn.bundle", num_threads=args.threads)
        rng = np.random.default_rng(0)
        print(f"  {'sizes':<10} {'dynamic ms':>17} {'static ms':>17} {'eager ms':>17} {'dyn/static':>10} "
              f"{'dyn/eager':>9} {'static MiB':>10}")
        for sizes in sizes_list:
            xs = _inputs_at(name, sizes, rng)
            t0 = time.perf_counter()
            st = mlpack.build(model, [torch.from_numpy(x) for x in xs], work / f"{name}.static.bundle")
            static_build = time.perf_counter() - t0
            static = mlrt.load(work / f"{name}.static.bundle", num_threads=args.threads)
            with torch.no_grad():
                ref = model(*[torch.from_numpy(x) for x in xs]).numpy()
            for m in (dyn, static):
                y = m.run(*xs)
                err = float(np.abs(y - ref).max() / max(1.0, float(np.abs(ref).max())))
                assert y.shape == ref.shape and err < 1e-3, (sizes, y.shape, err)
            tx = [torch.from_numpy(x) for x in xs]

            def eager():
                with torch.inference_mode():
                    model(*tx)

            t = _time({"dyn": lambda: dyn.run(*xs), "static": lambda: static.run(*xs), "eager": eager},
                      args.repeats)
            fmt = lambda k: f"{t[k][0]:8.2f} / {t[k][1]:6.2f}"  # noqa: E731
            label = "x".join(str(s) for s in sizes)
            print(f"  {label:<10} {fmt('dyn'):>17} {fmt('static'):>17} {fmt('eager'):>17} "
                  f"{t['dyn'][0] / t['static'][0]:10.3f} {t['dyn'][0] / t['eager'][0]:9.3f} "
                  f"{st.bundle_bytes / 2**20:10.1f}   (static build {static_build:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
