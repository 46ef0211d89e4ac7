"""Build time of corpus models, by stage, each build in a fresh process (as the CLI pays it).

    python benchmarks/build_time.py timm_xcit timm_mobilevit            # this checkout's compiler
    python benchmarks/build_time.py timm_xcit --against /tmp/old/compiler --rounds 2

--against: the `compiler` folder of another checkout (`git worktree add /tmp/old <commit>`);
builds alternate between it and this checkout, model by model (which goes first alternates by
round), so both see the same machine load; each line gives new / old. Stages are those
`mlpack.build(progress=...)` reports (export, import, optimize, plan, codegen, link, write).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_ONE = """
import json, sys, tempfile, time
sys.path.insert(0, {tests!r})
import corpus, mlpack
model, inputs = corpus.make({name!r})
stages = {{}}
with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    mlpack.build(model, inputs, d + "/m.bundle", progress=lambda s, t: stages.__setitem__(s, stages.get(s, 0) + t))
    total = time.perf_counter() - t0
print(json.dumps({{"total": total, "stages": stages, "mlpack": mlpack.__file__}}))
"""


def build_once(name: str, compiler: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(compiler))
    code = _ONE.format(tests=str(ROOT / "tests"), name=name)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed to build with {compiler}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="corpus model names (tests/corpus.py)")
    ap.add_argument("--against", type=Path, help="another checkout's compiler/ folder, built alternately")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()

    new = ROOT / "compiler"
    for r in range(args.rounds):
        for name in args.models:
            if args.against is not None and r % 2:  # odd rounds build the old one first
                old = build_once(name, args.against)
            row = build_once(name, new)
            stages = " ".join(f"{k} {v:.2f}" for k, v in row["stages"].items())
            if args.against is None:
                print(f"{name:22s} {row['total']:6.2f} s   {stages}", flush=True)
                continue
            if r % 2 == 0:
                old = build_once(name, args.against)
            print(f"{name:22s} round {r + 1}: old {old['total']:6.2f} s  new {row['total']:6.2f} s  "
                  f"new/old {row['total'] / old['total']:.2f}   new: {stages}", flush=True)


if __name__ == "__main__":
    main()
