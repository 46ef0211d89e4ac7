"""The C++ runtime under AddressSanitizer + UBSan: correct results on real bundles, and a clean
error (exit 1), never a crash or a sanitizer report, on truncated, bit-flipped and malformed ones."""

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_matches_eager, run_cpp_sample
from mlpack import bundle as bundle_fmt

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "Segmentation fault")


@pytest.fixture(scope="session")
def asan_runner(sanitizer_build) -> Path:
    return sanitizer_build("address") / "samples" / "cpp" / "mlrt_run"


def _run(exe, bundle, inputs_dir):
    proc = subprocess.run([str(exe), str(bundle), "-i", str(inputs_dir / "in0.npy")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0"})
    return proc


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "encoder"])
def test_sanitized_runtime_matches_eager(name, build_zoo, asan_runner, tmp_path):
    built = build_zoo(name)
    assert_matches_eager(run_cpp_sample(asan_runner, built.bundle, built.inputs, tmp_path), built.reference)


def _variants(src: Path, tmp: Path):
    """Yield damaged copies of `src`: truncations, bit flips in header/table/sections, malformed manifests."""
    data = src.read_bytes()
    info = bundle_fmt.read_bundle(src)
    rng = random.Random(1234)
    cuts = [1, 8, 63, 64, 100, 64 + 80 * len(info.sections) - 1] + [s.offset + s.size // 2 for s in info.sections]
    for cut in cuts:
        yield f"cut{cut}", data[:cut]
    positions = list(range(0, 64 + 80 * len(info.sections))) + [rng.randrange(len(data)) for _ in range(40)]
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        yield f"flip{pos}", bytes(flipped)
    # Well-hashed bundles with malformed manifests: the parser itself must hold.
    text = json.dumps(info.manifest).encode()
    others = [(s.name, bundle_fmt.section_bytes(src, s.name), s.alignment) for s in info.sections
              if s.name != "manifest"]
    manifests = [text[:n] for n in (0, 1, len(text) // 3, len(text) - 1)]
    manifests += [b"[" * 100000, b'{"a":' * 5000, b'"\\ud800"', b"1e99999", b"{}", b"null", b'{"inputs": 5}',
                  text.replace(b'"float32"', b'"\xc0\xafx"', 1), text.replace(b'"float32"', b'"\xe2\x82"', 1)]
    for _ in range(40):
        m = bytearray(text)
        for _ in range(rng.randint(1, 8)):
            m[rng.randrange(len(m))] = rng.choice(b'{}[]",:0-9e\\ ')
        manifests.append(bytes(m))
    for i, m in enumerate(manifests):
        path = tmp / "m.bundle"
        bundle_fmt.write_bundle(path, m, others)
        yield f"manifest{i}", path.read_bytes()


def test_damaged_bundles_never_crash(build_zoo, asan_runner, tmp_path):
    built = build_zoo("small_cnn")
    np.save(tmp_path / "in0.npy", built.inputs[0])
    tried = 0
    for label, blob in _variants(built.bundle, tmp_path):
        path = tmp_path / "bad.bundle"
        path.write_bytes(blob)
        proc = _run(asan_runner, path, tmp_path)
        report = proc.stdout + proc.stderr
        assert proc.returncode in (0, 1), f"{label}: exit {proc.returncode}\n{report}"
        assert not any(m in report for m in SANITIZER_MARKERS), f"{label}:\n{report}"
        if proc.returncode == 1:
            assert "mlrt_run: " in proc.stderr, f"{label}: no error message\n{report}"
        tried += 1
    assert tried > 150
