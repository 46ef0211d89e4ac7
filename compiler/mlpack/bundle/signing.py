"""Ed25519 signing of bundles (`mlpack keygen`, `mlpack sign`).

The signature covers the header's format version and, for every other section, its name, offset,
size and SHA-256 (the section table's digests), so it transitively covers every byte the runtime
uses once the runtime has checked each section against its digest. It is stored as a section
named "signature" holding the 64-byte Ed25519 signature. Layout of the signed message:
docs/bundle-format.md ("Signatures"). Uses the `cryptography` package (OpenSSL).
"""

from __future__ import annotations

import struct
from pathlib import Path

from .. import bundle as bundle_fmt
from ..errors import BuildError

SIGNATURE_SECTION = "signature"
MESSAGE_MAGIC = b"MLRT-SIGNATURE-V1\0"


def signed_message(info: bundle_fmt.BundleInfo) -> bytes:
    parts = [MESSAGE_MAGIC, struct.pack("<I", info.format_version)]
    for s in info.sections:
        if s.name == SIGNATURE_SECTION:
            continue
        parts.append(struct.pack("<16sQQ32s", s.name.encode(), s.offset, s.size, s.sha256))
    return b"".join(parts)


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:
        raise BuildError("signing needs the 'cryptography' package: pip install cryptography") from e
    return serialization, ed25519


def keygen(private_path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key: PRIVATE (PKCS#8 PEM) and PRIVATE.pub (the 32-byte public key as hex)."""
    serialization, ed25519 = _crypto()
    private_path = Path(private_path)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    private_path.write_bytes(pem)
    private_path.chmod(0o600)
    public_path = private_path.with_name(private_path.name + ".pub")
    public_path.write_text(raw.hex() + "\n")
    return private_path, public_path


def sign(bundle_path: str | Path, private_key_path: str | Path) -> bytes:
    """Add (or replace) the bundle's signature section, atomically. Returns the public key."""
    serialization, ed25519 = _crypto()
    key = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BuildError(f"{private_key_path} is not an Ed25519 private key (make one with `mlpack keygen`)")
    info = bundle_fmt.read_bundle(bundle_path)
    sections = [(s.name, bundle_fmt.section_bytes(bundle_path, s.name), s.alignment) for s in info.sections
                if s.name not in ("manifest", SIGNATURE_SECTION)]
    manifest = bundle_fmt.section_bytes(bundle_path, "manifest")
    # The layout (and so the signed offsets) must be final before signing: write once with a
    # placeholder signature of the right size, sign that layout, then write the real signature.
    placeholder = sections + [(SIGNATURE_SECTION, b"\0" * 64, 8)]
    bundle_fmt.write_bundle(bundle_path, manifest, placeholder)
    signature = key.sign(signed_message(bundle_fmt.read_bundle(bundle_path)))
    bundle_fmt.write_bundle(bundle_path, manifest, sections + [(SIGNATURE_SECTION, signature, 8)])
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
