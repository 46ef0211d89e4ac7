"""Signed bundles: `mlpack keygen` / `mlpack sign`, verified at load in Python and C++."""

import json
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import mlpack
import mlrt
from mlpack import bundle as bundle_fmt
from mlpack.cli import main as cli


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("signing")
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU()).eval()
    x = torch.randn(2, 6)
    mlpack.build(model, (x,), d / "plain.bundle")
    runner = CliRunner()
    for name in ("alice", "mallory"):
        assert runner.invoke(cli, ["keygen", str(d / name)]).exit_code == 0
    (d / "signed.bundle").write_bytes((d / "plain.bundle").read_bytes())
    result = runner.invoke(cli, ["sign", str(d / "signed.bundle"), "--key", str(d / "alice")])
    assert result.exit_code == 0, result.output
    return d, model, x


def test_signed_bundle_loads_with_its_key(signed):
    d, model, x = signed
    m = mlrt.load(d / "signed.bundle", public_key=d / "alice.pub")
    with torch.no_grad():
        np.testing.assert_allclose(m.run(x.numpy()), model(x).numpy(), rtol=1e-5, atol=1e-6)
    mlrt.load(d / "signed.bundle")  # no key: signature not required


def test_wrong_key_and_unsigned_are_refused(signed):
    d, _, _ = signed
    with pytest.raises(mlrt.Error, match="does not verify"):
        mlrt.load(d / "signed.bundle", public_key=d / "mallory.pub")
    with pytest.raises(mlrt.Error, match="not signed"):
        mlrt.load(d / "plain.bundle", public_key=d / "alice.pub")
    with pytest.raises(mlrt.Error, match="public key must be 32 bytes"):
        mlrt.load(d / "signed.bundle", public_key=b"short")


def test_tampering_with_rehashed_sections_breaks_the_signature(signed, tmp_path):
    d, _, _ = signed
    src = d / "signed.bundle"
    info = bundle_fmt.read_bundle(src)
    # An attacker can recompute every SHA-256 in the section table, but cannot re-sign.
    manifest = json.loads(json.dumps(info.manifest))
    manifest["inputs"][0]["name"] = "evil"
    weights = bytearray(bundle_fmt.section_bytes(src, "weights"))
    weights[0] ^= 1
    rehashed = {**info.manifest, "weights_sha256": bundle_fmt.weight_chunk_digests(bytes(weights)),
                "weights_xxh3": bundle_fmt.weight_chunk_checksums(bytes(weights))}  # the chunk digests too
    for label, new_manifest, new_weights in (("manifest", manifest, None), ("weights", rehashed, bytes(weights))):
        sections = [(s.name, new_weights if (s.name == "weights" and new_weights) else bundle_fmt.section_bytes(src, s.name),
                     s.alignment) for s in info.sections if s.name != "manifest"]
        bad = tmp_path / f"{label}.bundle"
        bundle_fmt.write_bundle(bad, new_manifest, sections)
        mlrt.load(bad)  # well-formed...
        with pytest.raises(mlrt.Error, match="does not verify"):
            mlrt.load(bad, public_key=d / "alice.pub")  # ...but not by alice


def test_a_required_signature_checks_the_weights_by_sha256(signed, tmp_path):
    """The default check of the weights (XXH3) guards against corruption, not forgery: a required
    signature checks them by SHA-256, which the signed section table binds."""
    d, _, _ = signed
    src = d / "signed.bundle"
    info = bundle_fmt.read_bundle(src)
    weights = bytearray(bundle_fmt.section_bytes(src, "weights"))
    weights[0] ^= 1
    forged = {**info.manifest, "weights_xxh3": bundle_fmt.weight_chunk_checksums(bytes(weights))}
    sections = [(s.name, bytes(weights) if s.name == "weights" else bundle_fmt.section_bytes(src, s.name), s.alignment)
                for s in info.sections if s.name != "manifest"]
    bundle_fmt.write_bundle(tmp_path / "forged.bundle", forged, sections)
    mlrt.load(tmp_path / "forged.bundle")  # the checksums match: corruption is all "fast" looks for
    with pytest.raises(mlrt.Error, match="section 'weights' fails its sha256 check"):
        mlrt.load(tmp_path / "forged.bundle", public_key=d / "alice.pub")


def test_cpp_runtime_checks_signatures(signed, cpp_sample, tmp_path):
    d, _, x = signed
    np.save(tmp_path / "x.npy", x.numpy())
    ok = subprocess.run([str(cpp_sample), str(d / "signed.bundle"), "-i", str(tmp_path / "x.npy"),
                         "--public-key", str(d / "alice.pub")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([str(cpp_sample), str(d / "signed.bundle"), "-i", str(tmp_path / "x.npy"),
                          "--public-key", str(d / "mallory.pub")], capture_output=True, text=True)
    assert bad.returncode == 1 and "PERMISSION_DENIED" in bad.stderr
