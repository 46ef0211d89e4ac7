"""Issue 5: many threads, no leaks, resource failures, and a bounded fuzz run of the bundle reader."""

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import mlrt
from conftest import ROOT
from mlpack import bundle as bundle_fmt

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer")


def _stress(build: Path, *args, env=None):
    proc = subprocess.run([str(build / "mlrt_stress_test"), *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert not any(m in report for m in SANITIZER_MARKERS), report
    return proc.stdout


@pytest.mark.parametrize("name", ["small_cnn", "encoder"])
def test_cpp_threads_share_a_model_asan(name, build_zoo, sanitizer_build):
    out = _stress(sanitizer_build("address"), "concurrency", build_zoo(name).bundle, 8, 25)
    assert "8 threads x 25 runs, 0 mismatches, 0 errors" in out


def test_cpp_threads_share_a_model_tsan(build_zoo, sanitizer_build):
    out = _stress(sanitizer_build("thread"), "concurrency", build_zoo("small_cnn").bundle, 4, 20,
                  env={"TSAN_OPTIONS": "halt_on_error=1"})
    assert "0 mismatches, 0 errors" in out


@pytest.mark.parametrize("kind", ["thread", "address"])
def test_thread_pool_runs_each_task_once(kind, sanitizer_build):
    """Thousands of short loops, workers often waking late: each task runs once, never after its
    loop returned, without a sanitizer report."""
    out = _stress(sanitizer_build(kind), "pool", 3, 20000, env={"TSAN_OPTIONS": "halt_on_error=1"})
    assert "3 threads x 20000 loops, 0 errors" in out


def test_load_run_unload_loop_has_no_leaks(build_zoo, sanitizer_build):
    out = _stress(sanitizer_build("address"), "leak", build_zoo("small_cnn").bundle, 300,
                  env={"ASAN_OPTIONS": "detect_leaks=1"})
    assert "300 load/run/unload iterations" in out


def test_rss_does_not_grow_over_thousands_of_loads(build_zoo):
    """Release build, through Python: 2000 load/run/unload cycles; RSS growth must stay small."""
    bundle = build_zoo("small_cnn").bundle
    code = (
        "import mlrt, numpy as np, gc\n"
        "def rss():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS'))\n"
        f"x = np.zeros((1, 3, 32, 32), np.float32)\n"
        "for i in range(2000):\n"
        f"    m = mlrt.load(r'{bundle}'); m.run(x); del m\n"
        "    if i == 200: gc.collect(); start = rss()\n"
        "gc.collect(); print(start, rss())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    start, end = map(int, proc.stdout.split())
    print(f"RSS after 200 loads {start} kB, after 2000 {end} kB")
    assert end - start < 4096, f"RSS grew {end - start} kB over 1800 load/run/unload cycles"


def test_python_threads_release_the_gil_and_agree(build_zoo):
    built = build_zoo("small_cnn")
    m = mlrt.load(built.bundle)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(6)]
    expected = [m.run(x) for x in inputs]
    failures = []

    def worker(t):
        for r in range(40):
            k = (t + r) % len(inputs)
            if not np.array_equal(m.run(inputs[k]), expected[k]):
                failures.append((t, r))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_arena_allocation_failure_is_an_error(build_zoo, tmp_path):
    src = build_zoo("small_cnn").bundle
    info = bundle_fmt.read_bundle(src)
    manifest = json.loads(json.dumps(info.manifest))
    manifest["memory_plan"]["arena_bytes"] = (1 << 40) - 64  # allowed by the format, not by this machine
    sections = [(s.name, bundle_fmt.section_bytes(src, s.name), s.alignment) for s in info.sections
                if s.name != "manifest"]
    bundle_fmt.write_bundle(tmp_path / "huge.bundle", manifest, sections)
    code = ("import resource, mlrt, numpy as np\n"
            "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            f"m = mlrt.load(r'{tmp_path / 'huge.bundle'}')\n"
            "try:\n"
            "    m.run(np.zeros((1, 3, 32, 32), np.float32))\n"
            "except mlrt.Error as e:\n"
            "    print('error:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cannot allocate the model's" in proc.stdout


def test_address_space_limit_at_load_is_an_error(build_zoo):
    bundle = build_zoo("resnet18").bundle  # 47 MB to map
    code = ("import resource, mlrt\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
            "used = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize')) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (used + (16 << 20), hard))\n"
            "try:\n"
            f"    mlrt.load(r'{bundle}')\n"
            "except mlrt.Error as e:\n"
            "    print('error:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "error:" in proc.stdout and ("cannot map" in proc.stdout or "cannot allocate" in proc.stdout), proc.stdout


CLANG = shutil.which("clang++-14") or shutil.which("clang++")


@pytest.mark.skipif(CLANG is None, reason="clang++ with libFuzzer not installed (scripts/setup.sh installs it as root)")
def test_fuzz_bundle_reader_bounded(build_zoo, tmp_path):
    """A bounded libFuzzer run (ASan + UBSan) over the container and manifest parsers, seeded
    with real bundles. Longer runs by hand: the same binary with -max_total_time=N."""
    runtime = ROOT / "runtime"
    fuzzer = tmp_path / "bundle_fuzzer"
    sources = [str(p) for p in (runtime / "src").glob("*.cc") if p.name in
               ("bundle_reader.cc", "checksum.cc", "json.cc", "sha256.cc", "status.cc")]
    subprocess.run([CLANG, "-std=c++17", "-O1", "-g", "-fsanitize=fuzzer,address,undefined",
                    "-fno-sanitize-recover=undefined", f"-I{runtime / 'include'}", f"-I{runtime / 'src'}",
                    f"-I{runtime / 'third_party' / 'xxhash'}",
                    str(runtime / "fuzz" / "bundle_fuzzer.cc"), *sources, "-o", str(fuzzer)], check=True)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("mlp", "small_cnn"):
        shutil.copy(build_zoo(name).bundle, corpus / name)
    seconds = int(os.environ.get("MLRT_FUZZ_SECONDS", "45"))
    proc = subprocess.run([str(fuzzer), str(corpus), f"-max_total_time={seconds}", "-max_len=2000000",
                           "-rss_limit_mb=4096", "-print_final_stats=1"],
                          capture_output=True, text=True, timeout=seconds + 300)
    report = proc.stdout + proc.stderr
    execs = [l for l in report.splitlines() if "stat::number_of_executed_units" in l]
    print("\n".join(execs), f"corpus: {len(list(corpus.iterdir()))} files")
    assert proc.returncode == 0, report[-4000:]
    assert "ERROR:" not in report
