"""The stimulus images: metadata-free PNGs, named by their hash, written atomically.

Everything here is plain numpy + Pillow (no torch) so that ``verify`` and ``report``
stay fast and can run on a machine without the models. The set's folder layout, its
``set.json``, the manifest's reader and writer and the atomic writes themselves belong
to :mod:`advbias.setdir` and :mod:`advbias.manifest`, which every stage shares.
"""
from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np

from advbias.errors import InputError
from advbias.setdir import atomic_write_bytes, image_path

#: zlib level for PNGs. Fixed so that the same pixels always give the same bytes
#: (and therefore the same stimulus_id) on a given zlib build.
PNG_COMPRESS_LEVEL = 6

#: The only PNG chunks a stimulus may contain: no text, time, gamma, ICC or pHYs chunks.
ALLOWED_PNG_CHUNKS: frozenset[bytes] = frozenset({b"IHDR", b"IDAT", b"IEND"})

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as a PNG holding pixels only.

    Pillow writes IHDR/IDAT/IEND and nothing else when it is given no ``pnginfo``,
    ``dpi``, ``icc_profile`` or ``exif``; :func:`png_chunks` lets ``verify`` prove it.
    """
    from PIL import Image

    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {pixels.dtype} {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").save(
        buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL
    )
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to an (H, W, 3) uint8 array (refusing anything but 8-bit RGB)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.format != "PNG" or img.mode != "RGB":
            raise ValueError(f"not an 8-bit RGB PNG (format {img.format}, mode {img.mode})")
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_stimulus(path: Path) -> np.ndarray:
    """The pixels of a set's image file; a file that is not an 8-bit RGB PNG is the user's :class:`InputError`."""
    from PIL import UnidentifiedImageError

    data = path.read_bytes()
    try:
        return decode_png(data)
    except (ValueError, UnidentifiedImageError) as exc:
        raise InputError(f"{path} is not a stimulus image ({exc}): check the set with advbias stimuli verify") from None


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG file, in order; ``ValueError`` when the file is not a valid PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("missing PNG signature")
    pos, types = len(PNG_SIGNATURE), []
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("truncated PNG chunk header")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError(f"truncated PNG chunk {ctype!r}")
        crc = struct.unpack(">I", data[end - 4 : end])[0]
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) & 0xFFFFFFFF != crc:
            raise ValueError(f"bad CRC in PNG chunk {ctype!r}")
        types.append(ctype)
        pos = end
        if ctype == b"IEND":
            break
    if pos != len(data):
        raise ValueError("data after the IEND chunk")
    if not types or types[-1] != b"IEND":
        raise ValueError("no IEND chunk")
    if types[0] != b"IHDR":
        raise ValueError("the first chunk is not IHDR")
    return types


def save_stimulus(setdir: Path, pixels: np.ndarray) -> str:
    """Write one stimulus PNG into the set, named by the sha256 of its bytes; returns the stimulus_id.

    Writing the same pixels twice is a no-op, which is what makes resuming safe.
    """
    data = encode_png(pixels)
    stimulus_id = sha256_bytes(data)
    path = image_path(setdir, stimulus_id)
    if not path.exists() or sha256_file(path) != stimulus_id:
        atomic_write_bytes(path, data)
    return stimulus_id
