"""Importing a stimulus set: its manifest, set.json and hash-checked images (read through
:mod:`advbias.manifest` and :mod:`advbias.setdir`, the formats' owners), and the fixed-length
encoding in which images are delivered to participants."""
from __future__ import annotations

import hashlib
import io
import os
import secrets
import struct
import zlib
from pathlib import Path
from typing import Any, Iterable

from advbias.errors import InputError, InputFileNotFound
from advbias.manifest import StimulusRow, read_manifest, set_id
from advbias.setdir import image_path, manifest_path, read_set_json, set_json_path


def read_set(setdir: Path) -> tuple[list[StimulusRow], dict[str, Any], str]:
    """The manifest rows, ``set.json`` and the set's hash (sha256 of manifest.csv's bytes).

    The manifest names every image by the sha256 of its bytes, so hashing the
    manifest pins the images too (and they are verified when imported).
    """
    setdir = Path(setdir)
    if not setdir.is_dir():
        raise InputFileNotFound(f"stimulus set folder {setdir} does not exist")
    rows = read_manifest(setdir)
    info_path = set_json_path(setdir)
    if not info_path.is_file():
        raise InputFileNotFound(f"{setdir} is not a stimulus set: {info_path.name} is missing")
    info = read_set_json(info_path)
    digest = set_id(setdir)
    return rows, info, digest


def import_images(setdir: Path, rows: Iterable[StimulusRow], store: Path, *, link: bool = False) -> int:
    """Copy (or symlink) every image into the content-addressed store, verifying its sha256.

    Returns the number of files added. A file whose bytes do not match its
    stimulus id is refused: the id is the only thing a participant's browser
    sees, so it must name exactly those bytes.
    """
    store.mkdir(parents=True, exist_ok=True)
    added = 0
    for row in rows:
        src = image_path(setdir, row.stimulus_id)
        if not src.is_file():
            raise InputFileNotFound(f"image {src} listed in the manifest is missing")
        data = src.read_bytes()
        if hashlib.sha256(data).hexdigest() != row.stimulus_id:
            raise InputError(f"image {src.name} does not match its sha256: the set is corrupt or was edited")
        dest = store / f"{row.stimulus_id}.png"
        delivered = delivery_path(store, row.stimulus_id)
        if not delivered.exists():
            _write_atomic(delivered, delivery_png(data))
        if dest.exists():
            continue
        tmp = store / f".{row.stimulus_id}.{secrets.token_hex(4)}.tmp"
        if link:
            os.symlink(src.resolve(), tmp)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, dest)
        added += 1
    return added


# --------------------------------------------------------------------------- delivery encoding

#: Folder of the store that holds the fixed-length encodings served to participants.
DELIVERY_DIR = "delivery"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STORED_BLOCK = 65535  # the largest deflate "stored" (uncompressed) block


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _stored_zlib(raw: bytes) -> bytes:
    """A zlib stream of deflate stored blocks: its length depends on ``len(raw)`` only, never on the bytes."""
    out = bytearray(b"\x78\x01")
    for start in range(0, max(len(raw), 1), _STORED_BLOCK):
        block = raw[start:start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= len(raw)
        out += bytes([1 if final else 0]) + struct.pack("<HH", len(block), len(block) ^ 0xFFFF) + block
    out += struct.pack(">I", zlib.adler32(raw))
    return bytes(out)


def delivery_length(width: int, height: int) -> int:
    """The byte length of every delivered image of this size (8-bit RGB, uncompressed PNG)."""
    raw = height * (1 + 3 * width)
    blocks = max(1, -(-raw // _STORED_BLOCK))
    return len(_PNG_SIGNATURE) + (12 + 13) + (12 + 2 + 5 * blocks + raw + 4) + 12


def delivery_png(data: bytes) -> bytes:
    """Re-encode a PNG as an uncompressed 8-bit RGB PNG whose length depends only on its size.

    Compressed files betray their content: a perturbed image compresses worse than its
    clean photo, noise worse than a perturbation, and more so at larger budgets, so a
    participant who compares byte lengths could tell which side holds which condition.
    Here the pixels are kept exactly; the file has no ancillary chunks (no text, gamma,
    colour profile or time), one IDAT of deflate stored blocks, and filter type 0 on
    every row, so every image of a given size has the same length.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("RGB", "L"):
            raise InputError(f"stimulus images must be RGB or greyscale, not {image.mode}")
        rgb = image.convert("RGB")
        width, height = rgb.size
        pixels = rgb.tobytes()
    stride = 3 * width
    raw = b"".join(b"\x00" + pixels[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    encoded = _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", _stored_zlib(raw)) + _chunk(b"IEND", b"")
    assert len(encoded) == delivery_length(width, height)
    return encoded


def delivery_path(store: Path, stimulus_id: str) -> Path:
    """Where the fixed-length encoding of one stored image lives (written on import, or on first use)."""
    return Path(store) / DELIVERY_DIR / f"{stimulus_id}.png"


def _write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def delivery_bytes(store: Path, stimulus_id: str) -> bytes | None:
    """The bytes served for a stored image; None if the store does not hold it.

    Stores imported by older versions have no delivery encodings yet: they are made
    from the stored original on first use (atomically, so concurrent workers agree).
    """
    path = delivery_path(store, stimulus_id)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    original = Path(store) / f"{stimulus_id}.png"
    if not original.is_file():
        return None
    data = delivery_png(original.read_bytes())
    _write_atomic(path, data)
    return data
