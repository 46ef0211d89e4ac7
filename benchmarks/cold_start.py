"""C++ cold start: process start to first result, with samples/cpp's mlrt_run.

    python benchmarks/cold_start.py MLRT_RUN model.bundle input.npy [--runs 10]

Runs `mlrt_run model.bundle -i input.npy --verify MODE` in fresh processes, the verify modes
interleaved, and prints per mode the min and median of the process's wall time (spawn to exit,
as this script sees it), of the load (map, verify, code load) and of the first run, as mlrt_run
reports them. The bundle is read once first, so every run finds it in the page cache (a server
restart, not a cold disk).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time
from pathlib import Path

MODES = ("fast", "full", "skip-weights")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mlrt_run", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("input", type=Path)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    args.bundle.read_bytes()  # into the page cache
    rows = {m: {"wall": [], "load": [], "first": []} for m in MODES}
    for _ in range(args.runs):
        for mode in MODES:
            t0 = time.perf_counter()
            out = subprocess.run([str(args.mlrt_run), str(args.bundle), "-i", str(args.input), "--verify", mode],
                                 capture_output=True, text=True, check=True).stdout
            rows[mode]["wall"].append((time.perf_counter() - t0) * 1e3)
            m = re.search(r"load: ([\d.]+) ms, first run: ([\d.]+) ms", out)
            rows[mode]["load"].append(float(m.group(1)))
            rows[mode]["first"].append(float(m.group(2)))
    print(f"{args.bundle.name}, {args.runs} fresh processes per mode (min / median, ms)")
    print(f"{'verify':<14}{'process':>18}{'load':>18}{'first run':>18}")
    for mode, r in rows.items():
        cells = [f"{min(v):7.1f} / {statistics.median(v):7.1f}" for v in (r["wall"], r["load"], r["first"])]
        print(f"{mode:<14}" + "".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
