"""mlrt's Python API on small bundles: signature, inputs in every form, output structures, and the
errors for wrong inputs and damaged bundles (each must be an mlrt.Error, never a crash)."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mlpack
import mlrt
from conftest import assert_matches_eager, flat_outputs
from mlpack import bundle as bundle_fmt


class TwoInOut(nn.Module):
    """Two inputs of different dtypes, nested output structure."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.emb = nn.Embedding(10, 4)

    def forward(self, x, idx):
        a = self.fc(x)
        b = self.emb(idx).sum(1)
        return a + b, {"relu": torch.relu(a), "parts": [a * 2, b]}


@pytest.fixture(scope="module")
def two_io(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoInOut().eval()
    x = torch.randn(3, 8)
    idx = torch.tensor([[1, 2], [3, 4], [9, 0]])
    path = tmp_path_factory.mktemp("rt") / "two_io.bundle"
    mlpack.build(model, (x, idx), path)
    return model, (x, idx), path


def test_signature(two_io):
    _, _, path = two_io
    m = mlrt.load(path)
    assert [(s.name, s.dtype, s.shape) for s in m.inputs] == [("x", np.float32, (3, 8)), ("idx", np.int64, (3, 2))]
    assert [s.shape for s in m.outputs] == [(3, 4)] * 4
    assert m.arena_bytes >= 0


def test_output_structure_and_numerics(two_io):
    model, (x, idx), path = two_io
    m = mlrt.load(path)
    out = m.run(x.numpy(), idx.numpy())
    assert isinstance(out, tuple) and isinstance(out[1], dict) and isinstance(out[1]["parts"], list)
    with torch.no_grad():
        ref = flat_outputs(model(x, idx))
    assert_matches_eager([out[0], out[1]["relu"], *out[1]["parts"]], ref)


def test_inputs_by_name_and_non_contiguous(two_io):
    model, (x, idx), path = two_io
    m = mlrt.load(path)
    expected = m.run_flat(x.numpy(), idx.numpy())
    xt = np.asfortranarray(x.numpy())  # non-contiguous (Fortran order)
    assert not xt.flags.c_contiguous
    got = m.run_flat(idx=idx.numpy(), x=xt)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    strided = np.zeros((3, 16), np.float32)
    strided[:, ::2] = x.numpy()
    np.testing.assert_array_equal(m.run_flat(strided[:, ::2], idx.numpy())[0], expected[0])


@pytest.mark.parametrize("args, message", [
    ((np.zeros((3, 8), np.float32),), "expected 2 input(s)"),
    ((np.zeros((3, 7), np.float32), np.zeros((3, 2), np.int64)), "input 0 ('x'): expected shape [3,8], got [3,7]"),
    ((np.zeros((3, 8), np.float64), np.zeros((3, 2), np.int64)), "input 0 ('x'): expected dtype float32, got float64"),
    ((np.zeros((3, 8), np.float32), np.zeros((3, 2), np.int32)), "input 1 ('idx'): expected dtype int64, got int32"),
    ((np.zeros((3, 8), np.float32), np.zeros((3, 2), np.complex64)), "input 1 ('idx'): expected dtype int64, got unsupported"),
    ((np.zeros((3, 8), np.float32), "tokens"), "input 1 ('idx'): expected a numpy array"),
])
def test_wrong_inputs_raise_mlrt_error(two_io, args, message):
    m = mlrt.load(two_io[2])
    with pytest.raises(mlrt.Error) as e:
        m.run(*args)
    assert message in str(e.value)


def test_unknown_input_name(two_io):
    m = mlrt.load(two_io[2])
    with pytest.raises(mlrt.Error, match="unknown input name"):
        m.run(x=np.zeros((3, 8), np.float32), y=np.zeros((3, 2), np.int64))


def test_nan_and_inf_inputs_pass_through(two_io):
    m = mlrt.load(two_io[2])
    x = np.full((3, 8), np.nan, np.float32)
    x[0, 0] = np.inf
    out = m.run_flat(x, np.zeros((3, 2), np.int64))
    assert np.isnan(out[0]).any()


# --------------------------------------------------------------------------- damaged bundles


def _rewrite_manifest(src: Path, dst: Path, edit) -> None:
    """Re-write a bundle with an edited manifest (hashes recomputed): a well-formed but different bundle."""
    info = bundle_fmt.read_bundle(src)
    manifest = json.loads(json.dumps(info.manifest))
    edit(manifest)
    sections = [(s.name, bundle_fmt.section_bytes(src, s.name), s.alignment) for s in info.sections
                if s.name != "manifest"]
    bundle_fmt.write_bundle(dst, manifest, sections, version=info.format_version)  # the header keeps its version


def _flip(src: Path, dst: Path, offset: int) -> None:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x40
    dst.write_bytes(bytes(data))


def test_truncated_bundle(two_io, tmp_path):
    data = two_io[2].read_bytes()
    for cut in (0, 10, 64, 200, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.bundle"
        p.write_bytes(data[:cut])
        with pytest.raises(mlrt.Error, match="truncated|empty|shorter"):
            mlrt.load(p)


@pytest.mark.parametrize("section,verify,digest", [
    ("manifest", "fast", "sha256"), ("cpu.so", "fast", "sha256"),
    ("weights", "fast", "xxh3"),  # the default: weights by their XXH3 chunk checksums
    ("manifest", "full", "sha256"), ("cpu.so", "full", "sha256"), ("weights", "full", "sha256")])
def test_corrupted_section_fails_hash(two_io, tmp_path, section, verify, digest):
    src = two_io[2]
    s = next(s for s in bundle_fmt.read_bundle(src).sections if s.name == section)
    dst = tmp_path / "bad.bundle"
    _flip(src, dst, s.offset + s.size // 2)
    with pytest.raises(mlrt.Error, match=f"section '{section}' fails its {digest} check"):
        mlrt.load(dst, verify=verify)


def test_skip_weights_verification_mode(two_io, tmp_path):
    src = two_io[2]
    s = next(s for s in bundle_fmt.read_bundle(src).sections if s.name == "weights")
    dst = tmp_path / "w.bundle"
    _flip(src, dst, s.offset + 1)
    mlrt.load(dst, verify="skip-weights")  # documented: weights are trusted in this mode
    s = next(s for s in bundle_fmt.read_bundle(src).sections if s.name == "cpu.so")
    _flip(src, dst, s.offset + 100)
    with pytest.raises(mlrt.Error, match="cpu.so"):
        mlrt.load(dst, verify="skip-weights")  # code is always verified


def test_not_a_bundle(tmp_path):
    p = tmp_path / "x.bundle"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(mlrt.Error, match="not an mlrt bundle"):
        mlrt.load(p)
    with pytest.raises(mlrt.Error, match="No such file"):
        mlrt.load(tmp_path / "missing.bundle")


def test_newer_format_version(two_io, tmp_path):
    data = bytearray(two_io[2].read_bytes())
    newest = mlrt.max_bundle_format_version()
    struct.pack_into("<I", data, 8, newest + 1)
    p = tmp_path / "new.bundle"
    p.write_bytes(bytes(data))
    with pytest.raises(mlrt.Error, match=rf"format version {newest + 1} is newer than this runtime supports \({newest}\)"):
        mlrt.load(p)


def test_missing_cpu_feature(two_io, tmp_path):
    dst = tmp_path / "isa.bundle"
    _rewrite_manifest(two_io[2], dst, lambda m: m["targets"]["cpu"]["features"].append("made-up-isa"))
    with pytest.raises(mlrt.Error, match="needs CPU features this machine lacks: made-up-isa"):
        mlrt.load(dst)
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        _rewrite_manifest(two_io[2], dst, lambda m: m["targets"]["cpu"]["features"].append("avx512f"))
        with pytest.raises(mlrt.Error, match="lacks: avx512f"):
            mlrt.load(dst)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["weights"][0].update(offset=1 << 50), "lies outside the weights section"),
    (lambda m: m["weights"][0].update(shape=[1 << 31, 1 << 31]), "more than 2\\^40 elements"),
    (lambda m: m["outputs"][0].update(shape=[1 << 41]), "integers in \\[0, 2\\^40\\]"),
    (lambda m: m["weights"][0].update(nbytes=4), "nbytes does not match"),
    (lambda m: m["inputs"][0].update(dtype="complex128"), "unknown dtype"),
    (lambda m: m["call"].append("weight:9999"), "out of range"),
    (lambda m: m["call"].remove("arena"), "arena exactly once"),
    (lambda m: m["memory_plan"].update(arena_bytes=-5), "arena_bytes"),
    (lambda m: m.update(format_version=7), "format_version disagrees"),
])
def test_hostile_manifest(two_io, tmp_path, edit, message):
    dst = tmp_path / "hostile.bundle"
    _rewrite_manifest(two_io[2], dst, edit)
    with pytest.raises(mlrt.Error, match=message):
        mlrt.load(dst)


def test_bundle_is_one_file_and_load_leaves_no_files(two_io, tmp_path):
    import os

    before = set(os.listdir("/tmp"))
    m = mlrt.load(two_io[2])
    del m
    assert set(os.listdir("/tmp")) - before == set()


# --------------------------------------------------------------------------- no torch


def test_import_mlrt_without_torch():
    code = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] in ('torch', 'torch_mlir'): raise ImportError('blocked: ' + n)\n"
        "sys.meta_path.insert(0, B())\n"
        "import mlrt\n"
        "assert 'torch' not in sys.modules\n"
        "print(mlrt.version())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == mlrt.__version__


def test_manifest_with_invalid_utf8_is_an_mlrt_error(two_io, tmp_path):
    src = two_io[2]
    info = bundle_fmt.read_bundle(src)
    raw = json.dumps(info.manifest).encode().replace(b'"float32"', b'"\xff\xfe"', 1)
    others = [(s.name, bundle_fmt.section_bytes(src, s.name), s.alignment) for s in info.sections
              if s.name != "manifest"]
    bundle_fmt.write_bundle(tmp_path / "u.bundle", raw, others)
    with pytest.raises(mlrt.Error, match="invalid UTF-8"):
        mlrt.load(tmp_path / "u.bundle")


def test_threads_option(two_io):
    model, (x, idx), path = two_io
    one = mlrt.load(path, num_threads=1)
    three = mlrt.load(path, num_threads=3)
    assert one.num_threads == 1 and three.num_threads == 3
    for a, b in zip(one.run_flat(x.numpy(), idx.numpy()), three.run_flat(x.numpy(), idx.numpy())):
        np.testing.assert_array_equal(a, b)


def test_portable_sha256_path_agrees(two_io, tmp_path):
    """The scalar SHA-256 (used where the CPU lacks SHA-NI) verifies and rejects like the fast one."""
    src = two_io[2]
    s = next(s for s in bundle_fmt.read_bundle(src).sections if s.name == "weights")
    bad = tmp_path / "bad.bundle"
    _flip(src, bad, s.offset + 3)
    code = ("import mlrt, sys\n"
            f"mlrt.load(r'{src}')\n"
            "try:\n"
            f"    mlrt.load(r'{bad}', verify='full')\n"
            "except mlrt.Error as e:\n"
            "    print('rejected:', e)\n")
    import os

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "MLRT_DISABLE_SHA_NI": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "rejected:" in proc.stdout and "sha256" in proc.stdout


def test_bundle_deleted_while_loaded_keeps_working(two_io, tmp_path):
    """The mapping keeps the file's pages alive (documented: delete/rename is safe, in-place
    truncation is not)."""
    model, (x, idx), path = two_io
    copy = tmp_path / "copy.bundle"
    copy.write_bytes(path.read_bytes())
    m = mlrt.load(copy)
    expected = m.run_flat(x.numpy(), idx.numpy())
    copy.unlink()
    for a, b in zip(m.run_flat(x.numpy(), idx.numpy()), expected):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A bundle whose weights (264 KB) span many 4 KiB chunks once its digests are re-cut."""
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 256).eval()
    path = tmp_path_factory.mktemp("chunks") / "wide.bundle"
    mlpack.build(model, (torch.randn(2, 256),), path)
    small = path.with_name("wide4k.bundle")
    blob = bundle_fmt.section_bytes(path, "weights")
    _rewrite_manifest(path, small, lambda m: m.update(weights_sha256=bundle_fmt.weight_chunk_digests(blob, 4096),
                                                      weights_xxh3=bundle_fmt.weight_chunk_checksums(blob, 4096)))
    return model, path, small


@pytest.mark.parametrize("verify,key", [("full", "weights_sha256"), ("fast", "weights_xxh3")])
def test_weights_are_verified_by_chunk_on_several_threads(wide, tmp_path, verify, key):
    model, path, small = wide
    assert len(bundle_fmt.read_bundle(small).manifest[key]["chunks"]) > 60
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy()
    for p in (path, small):
        np.testing.assert_allclose(mlrt.load(p, verify=verify, num_threads=3).run(x), ref, rtol=1e-5, atol=1e-5)
    w = next(s for s in bundle_fmt.read_bundle(small).sections if s.name == "weights")
    digest = key.split("_")[1]
    for chunk in (0, 17, w.size // 4096):  # first, middle, the short last one
        _flip(small, tmp_path / "bad.bundle", w.offset + chunk * 4096 + 5)
        with pytest.raises(mlrt.Error, match=rf"section 'weights' fails its {digest} check \(chunk {chunk} of"):
            mlrt.load(tmp_path / "bad.bundle", verify=verify, num_threads=3)
        mlrt.load(tmp_path / "bad.bundle", verify="skip-weights")  # documented: trusted in that mode


def test_weights_without_chunk_digests_are_verified_whole(wide, tmp_path):
    """A bundle from before the chunk digests: the section table's one SHA-256, in every mode but skip-weights."""
    _, path, _ = wide
    _rewrite_manifest(path, tmp_path / "old.bundle", lambda m: (m.pop("weights_sha256"), m.pop("weights_xxh3")))
    mlrt.load(tmp_path / "old.bundle")
    w = next(s for s in bundle_fmt.read_bundle(tmp_path / "old.bundle").sections if s.name == "weights")
    _flip(tmp_path / "old.bundle", tmp_path / "bad.bundle", w.offset + 100)
    for verify in ("fast", "full"):
        with pytest.raises(mlrt.Error, match=r"section 'weights' fails its sha256 check \(expected"):
            mlrt.load(tmp_path / "bad.bundle", verify=verify)


def test_fast_mode_without_checksums_uses_the_sha256_chunks(wide, tmp_path):
    _, _, small = wide
    _rewrite_manifest(small, tmp_path / "sha.bundle", lambda m: m.pop("weights_xxh3"))
    w = next(s for s in bundle_fmt.read_bundle(tmp_path / "sha.bundle").sections if s.name == "weights")
    _flip(tmp_path / "sha.bundle", tmp_path / "bad.bundle", w.offset + 3 * 4096)
    with pytest.raises(mlrt.Error, match=r"section 'weights' fails its sha256 check \(chunk 3 of"):
        mlrt.load(tmp_path / "bad.bundle")


def test_unknown_verify_mode_is_refused(wide):
    with pytest.raises(mlrt.Error, match="verify must be 'fast', 'full' or 'skip-weights'"):
        mlrt.load(wide[1], verify="sha1")


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(chunk_bytes=5000), "power of two"),
    (lambda d: d.update(chunk_bytes=1 << 31), "power of two"),
    (lambda d: d["chunks"].pop(), "lists"),
    (lambda d: d["chunks"].append(d["chunks"][0]), "lists"),
    (lambda d: d["chunks"].__setitem__(0, d["chunks"][0].upper()), "hex digits"),
    (lambda d: d["chunks"].__setitem__(0, d["chunks"][0][:-1]), "hex digits"),
    (lambda d: d.pop("chunks"), "needs integer"),
])
@pytest.mark.parametrize("key", ["weights_sha256", "weights_xxh3"])
def test_malformed_chunk_digests_are_refused(wide, tmp_path, edit, message, key):
    _, _, small = wide
    _rewrite_manifest(small, tmp_path / "m.bundle", lambda m: edit(m[key]))
    with pytest.raises(mlrt.Error, match=message):
        mlrt.load(tmp_path / "m.bundle")
