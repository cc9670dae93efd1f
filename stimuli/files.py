"""File formats of a stimulus set: atomic writes, metadata-free PNGs, the manifest CSV.

Everything here is plain numpy + Pillow (no torch) so that ``verify`` and ``report``
stay fast and can run on a machine without the models.

Why atomic writes: a crash (or Ctrl-C, or a killed cluster job) must never leave a
half-written image or manifest that a later run or the experiment would trust. Each
file is written to a temporary name in the same folder, flushed to disk, and renamed
over its final name with :func:`os.replace`, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from advbias.manifest import COLUMNS, IMAGE_CONDITIONS

#: The manifest's columns and image conditions are owned by :mod:`advbias.manifest`.
MANIFEST_COLUMNS = COLUMNS

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


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


def save_stimulus(images_dir: Path, pixels: np.ndarray) -> str:
    """Write one stimulus PNG named by the sha256 of its bytes; returns the stimulus_id.

    Writing the same pixels twice is a no-op, which is what makes resuming safe.
    """
    data = encode_png(pixels)
    stimulus_id = sha256_bytes(data)
    path = images_dir / f"{stimulus_id}.png"
    if not path.exists() or sha256_file(path) != stimulus_id:
        atomic_write_bytes(path, data)
    return stimulus_id


def format_cell(value: Any) -> str:
    """How a value is written into the manifest: empty for None, 6 decimals for probabilities."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def rows_to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] = MANIFEST_COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: format_cell(row.get(c)) for c in columns})
    return buf.getvalue()


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write manifest-shaped rows (as strings) atomically."""
    atomic_write_text(path, rows_to_csv(rows))


def read_rows(path: Path) -> list[dict[str, str]]:
    """Read a manifest-shaped CSV as a list of string dicts (empty cells stay empty strings)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path.name} lacks the column(s) {', '.join(missing)}")
        return [dict(row) for row in reader]


def sort_key(row: Mapping[str, Any]) -> tuple:
    """The manifest's row order: by source, then clean first, then pair, budget, condition, target.

    A total, content-only order, so that any way of computing the rows (resumed, or
    split over processes) gives the same file.
    """
    condition = str(row["condition"])
    return (
        str(row["source"]),
        str(row["source_sha256"]),
        0 if condition == "clean" else 1,
        str(row.get("pair") or ""),
        int(row.get("eps") or 0),
        IMAGE_CONDITIONS.index(condition),
        str(row.get("target") or ""),
        str(row["stimulus_id"]),
    )
