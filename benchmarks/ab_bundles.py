"""A/B of two bundles of the same model (before / after a compiler change), in one process.

    python benchmarks/ab_bundles.py old.bundle new.bundle [--repeats 40]
    python benchmarks/ab_bundles.py m.bundle m.bundle --old-isa avx2   # the kernels' AVX2 vs AVX-512 tiles

Both are loaded side by side and run on the same random inputs (shapes from the manifest) in
alternating blocks of `--block` timed calls, each after 5 ms of untimed calls, so both see the
same machine load and each runs with its own weights in cache (alternated call by call, two
RegNet-X bundles, 22 MB of weights each, evicted each other's from L3 and read 1.4x slow). Prints
the largest difference between their outputs, min and median ms of each, and new/old of the
minima. On a noisy machine run it again with the two bundles swapped: the second one loaded read
up to 4% faster here whichever it was.
`--old-isa` / `--new-isa` load that side with MLRT_KERNEL_ISA set (each load has its own copy of
the code, which picks its kernel instruction set at load), to compare kernel ISAs on one bundle.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import mlrt


def _load(path: str, isa: str | None) -> mlrt.Model:
    saved = os.environ.get("MLRT_KERNEL_ISA")
    if isa:
        os.environ["MLRT_KERNEL_ISA"] = isa
    try:
        return mlrt.load(path)
    finally:
        if saved is None:
            os.environ.pop("MLRT_KERNEL_ISA", None)
        else:
            os.environ["MLRT_KERNEL_ISA"] = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--repeats", type=int, default=40, help="blocks per bundle")
    ap.add_argument("--block", type=int, default=20, help="timed calls per block")
    ap.add_argument("--old-isa", help="MLRT_KERNEL_ISA while loading old (e.g. avx2)")
    ap.add_argument("--new-isa", help="MLRT_KERNEL_ISA while loading new")
    args = ap.parse_args()
    a, b = _load(args.old, args.old_isa), _load(args.new, args.new_isa)
    print(f"kernels: old {a.kernel_isa or '?'}, new {b.kernel_isa or '?'}")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(p["shape"]).astype(p["dtype"]) for p in a.manifest["inputs"]]
    ya, yb = a.run_flat(*xs), b.run_flat(*xs)
    print("max |new - old|:", max(float(np.abs(p.astype(np.float64) - q).max()) for p, q in zip(ya, yb)))
    times = {"old": [], "new": []}
    for _ in range(args.repeats):
        for name, m in (("old", a), ("new", b)):
            settle = time.perf_counter() + 0.005
            while time.perf_counter() < settle:
                m.run_flat(*xs)
            for _ in range(args.block):
                t0 = time.perf_counter()
                m.run_flat(*xs)
                times[name].append((time.perf_counter() - t0) * 1e3)
    for name, t in times.items():
        print(f"{name}: min {min(t):.3f} ms, median {np.median(t):.3f} ms")
    print(f"new/old (min): {min(times['new']) / min(times['old']):.3f}")


if __name__ == "__main__":
    main()
