"""The bundle container: write (for `build`) and read (for `inspect` and tests).

The byte layout is the contract with the C++ runtime and is documented in docs/bundle-format.md;
change both together and bump FORMAT_VERSION on any incompatible change.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"MLRTBNDL"
FORMAT_VERSION = 3  # the newest this reader knows
STATIC_FORMAT_VERSION = 1  # bundles without dynamic dims stay readable by version-1 runtimes
DYNAMIC_FORMAT_VERSION = 2  # one program per bucket: docs/bundle-format.md "Dynamic dimensions"
BFLOAT16_FORMAT_VERSION = 3  # weights stored as bfloat16, a dtype older readers do not know
HEADER = struct.Struct("<8sIIIIQQ24x")  # magic, version, header_size, count, entry_size, table_off, file_size
SECTION = struct.Struct("<16sQQQ32sII")  # name, offset, size, alignment, sha256, flags, reserved
PAGE = 4096
WEIGHT_ALIGNMENT = 64

assert HEADER.size == 64 and SECTION.size == 80


@dataclass
class Section:
    name: str
    offset: int
    size: int
    alignment: int
    sha256: bytes


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def stored_dtype(weight: tuple) -> str:
    """The manifest dtype of a (name, array) or (name, array, dtype) weight: the third element
    where given ("bfloat16": the array holds the uint16 bits), else the array's."""
    return weight[2] if len(weight) > 2 else str(weight[1].dtype)


def pack_weights(weights) -> tuple[bytes, list[dict]]:
    """Concatenate weights ((name, array) or (name, array, dtype): stored_dtype), each 64-byte
    aligned; returns (blob, manifest entries)."""
    entries, chunks, off = [], [], 0
    for weight in weights:
        name, arr = weight[:2]
        data = arr.tobytes()  # C order
        pad = _pad(off, WEIGHT_ALIGNMENT) - off
        chunks.append(b"\0" * pad)
        off += pad
        entries.append({"name": name, "dtype": stored_dtype(weight), "shape": list(arr.shape), "offset": off,
                        "nbytes": len(data)})
        chunks.append(data)
        off += len(data)
    return b"".join(chunks), entries


def format_version_for(version: int, weight_entries: list[dict]) -> int:
    """The format version a bundle is written as: `version` (1 static, 2 dynamic), or 3 when a
    weight is stored as bfloat16, so that older runtimes refuse it by its version (float16 weights
    need no bump: float16 was always a weight dtype, and only the bundle's own kernels read them)."""
    if any(e["dtype"] == "bfloat16" for e in weight_entries):
        return max(version, BFLOAT16_FORMAT_VERSION)
    return version


WEIGHT_CHUNK = 1 << 22  # bytes per weights_sha256 chunk: a 100 MB model has 25, shared out between threads


def weight_chunk_digests(blob: bytes, chunk: int = WEIGHT_CHUNK) -> dict:
    """The manifest's `weights_sha256`: a SHA-256 per `chunk` bytes of the weights section, so a
    runtime can verify the weights on several threads (a section digest is one sequential chain)."""
    return {"chunk_bytes": chunk,
            "chunks": [hashlib.sha256(blob[i:i + chunk]).hexdigest() for i in range(0, len(blob), chunk)]}


def weight_chunk_checksums(blob: bytes, chunk: int = WEIGHT_CHUNK) -> dict:
    """The manifest's `weights_xxh3`: an XXH3-64 per `chunk` bytes, which mlrt checks by default
    (verify="fast"): ~10x cheaper than SHA-256, and what a load of a large model spends its time on."""
    import xxhash  # the compiler extra's: `mlpack inspect` on a runtime-only install reads bundles without it

    view = memoryview(blob)
    return {"chunk_bytes": chunk,
            "chunks": [xxhash.xxh3_64_hexdigest(view[i:i + chunk]) for i in range(0, len(blob), chunk)]}


def write_bundle(path: str | Path, manifest: dict | bytes, sections: list[tuple[str, bytes, int]],
                 version: int | None = None) -> int:
    """Write the bundle atomically (temp file + rename: a failed build leaves no half file). Returns its size.

    `sections` excludes the manifest, which always goes first; each is (name, bytes, alignment).
    `manifest` is a dict, or raw bytes (tests use that to hand the runtime malformed JSON). The
    header's version is the manifest's `format_version` (for raw bytes: `version`).
    """
    if version is None:
        version = manifest.get("format_version", STATIC_FORMAT_VERSION) if isinstance(manifest, dict) \
            else STATIC_FORMAT_VERSION
    if isinstance(manifest, dict):
        manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    else:
        manifest_bytes = manifest
    all_sections = [("manifest", manifest_bytes, 8)] + list(sections)
    table_off = HEADER.size
    off = table_off + SECTION.size * len(all_sections)
    layout = []
    for name, data, align in all_sections:
        if len(name.encode()) > 15:
            raise ValueError(f"section name too long: {name}")
        off = _pad(off, align)
        layout.append((name, off, data, align))
        off += len(data)
    file_size = off

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(HEADER.pack(MAGIC, version, HEADER.size, len(layout), SECTION.size, table_off, file_size))
            for name, s_off, data, align in layout:
                f.write(SECTION.pack(name.encode(), s_off, len(data), align, hashlib.sha256(data).digest(), 0, 0))
            for name, s_off, data, align in layout:
                f.write(b"\0" * (s_off - f.tell()))
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return file_size


@dataclass
class BundleInfo:
    format_version: int
    file_size: int
    sections: list[Section]
    manifest: dict


def read_bundle(path: str | Path, verify: bool = True) -> BundleInfo:
    """Parse a bundle's header, section table and manifest (Python side: inspect and tests)."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size or data[:8] != MAGIC:
        raise ValueError(f"{path}: not an mlrt bundle (bad magic)")
    magic, version, hsize, count, esize, table_off, file_size = HEADER.unpack_from(data)
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: bundle format version {version} is newer than this tool ({FORMAT_VERSION})")
    if file_size != len(data):
        raise ValueError(f"{path}: truncated or padded (header says {file_size} bytes, file has {len(data)})")
    sections = []
    for i in range(count):
        name, off, size, align, digest, _flags, _ = SECTION.unpack_from(data, table_off + i * esize)
        s = Section(name.rstrip(b"\0").decode(), off, size, align, digest)
        if off + size > len(data):
            raise ValueError(f"{path}: section '{s.name}' runs past the end of the file")
        if verify and hashlib.sha256(data[off:off + size]).digest() != digest:
            raise ValueError(f"{path}: section '{s.name}' is corrupted (sha256 mismatch)")
        sections.append(s)
    man = next(s for s in sections if s.name == "manifest")
    manifest = json.loads(data[man.offset:man.offset + man.size])
    return BundleInfo(version, file_size, sections, manifest)


def section_bytes(path: str | Path, name: str) -> bytes:
    info = read_bundle(path, verify=False)
    s = next(s for s in info.sections if s.name == name)
    with open(path, "rb") as f:
        f.seek(s.offset)
        return f.read(s.size)
