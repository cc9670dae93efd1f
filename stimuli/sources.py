"""Where the photos come from, and how each becomes a square 8-bit crop.

Two kinds of input:

* ``builtin``: the 20 ImageNet validation photos shipped with foolbox (the true class is
  in the file name, e.g. ``imagenet_07_609.jpg`` is class 609) plus a handful of
  scikit-image's colour photographs (Chelsea the cat, a coffee cup, an astronaut, a
  rocket, a motorcycle). Both are found through the installed packages, so the demo and
  the tests need no download.
* a folder: every ``.jpg``/``.jpeg``/``.png`` below it, recursively, in sorted order.

Unreadable files are listed and skipped (never silently); byte-identical duplicates
are skipped too, since they would produce the same stimuli twice.
"""
from __future__ import annotations

import importlib.util
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stimuli.files import sha256_bytes

from advbias.errors import InputError, InputFileNotFound

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})

#: scikit-image's real colour photographs (its other samples are grey, synthetic,
#: microscopy or astronomy images, which are not useful for an object-category study).
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
)

_FOOLBOX_NAME = re.compile(r"^imagenet_\d+_(\d+)\.jpg$")


@dataclass(frozen=True)
class Source:
    """One input photo: its name in the manifest, where to read it, its hash and label."""

    name: str  #: relative to the input folder (posix), or ``foolbox/...`` / ``skimage/...``
    path: Path
    sha256: str
    label: int | None = None  #: ImageNet-1k class when the file name carries it (foolbox samples)


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (foolbox is slow to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputFileNotFound(f"the builtin images need the '{package}' package, which is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def builtin_candidates() -> list[tuple[str, Path, int | None]]:
    """(name, path, label) of the builtin photos, in sorted name order."""
    out: list[tuple[str, Path, int | None]] = []
    fb = _package_dir("foolbox") / "data"
    for path in sorted(fb.glob("imagenet_*.jpg")):
        m = _FOOLBOX_NAME.match(path.name)
        out.append((f"foolbox/{path.name}", path, int(m.group(1)) if m else None))
    sk = _package_dir("skimage") / "data"
    for name in SKIMAGE_PHOTOS:
        if (sk / name).is_file():
            out.append((f"skimage/{name}", sk / name, None))
    if not out:
        raise InputFileNotFound("no builtin images found in the installed foolbox and scikit-image packages")
    return sorted(out, key=lambda t: t[0])


def folder_candidates(folder: Path) -> tuple[list[tuple[str, Path, int | None]], int]:
    """(name, path, None) of every JPEG/PNG below ``folder`` in sorted order, and how many other files were ignored."""
    if not folder.exists():
        raise InputFileNotFound(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"--images must be a folder or 'builtin', got the file {folder}")
    found, ignored = [], 0
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.append((path.relative_to(folder).as_posix(), path, None))
        else:
            ignored += 1
    return sorted(found, key=lambda t: t[0]), ignored


def decode_photo(data: bytes) -> "PIL.Image.Image":  # noqa: F821
    """Decode a photo fully (so truncated files fail here), upright and in RGB."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: scale to 8 bits instead of letting Pillow clip.
            arr = np.asarray(img, dtype=np.float64)
            img = Image.fromarray(np.clip(arr / 257.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Composite transparent pixels over mid grey rather than whatever colour they hide.
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert("RGB")


def plan_sources(images: str | Path, limit: int | None = None) -> tuple[list[Source], list[Skipped], int]:
    """Find, hash and test-decode the input photos.

    Returns the usable sources in sorted name order (at most ``limit`` of them), the
    skipped files with reasons, and the number of non-image files ignored. Raises a
    one-line error when there is no usable photo at all.
    """
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if str(images) == "builtin":
        candidates, ignored = builtin_candidates(), 0
        where = "the builtin set"
    else:
        folder = Path(images).expanduser()
        candidates, ignored = folder_candidates(folder)
        where = str(folder)
        if not candidates:
            raise InputError(f"no JPEG or PNG images found in {folder}")
    sources: list[Source] = []
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}
    for name, path, label in candidates:
        if limit is not None and len(sources) >= limit:
            break
        try:
            data = path.read_bytes()
            decode_photo(data)
        except Exception as exc:  # any decoder failure means "unreadable"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            skipped.append(Skipped(name, f"unreadable: {reason}"))
            continue
        digest = sha256_bytes(data)
        if digest in seen:
            skipped.append(Skipped(name, f"duplicate of {seen[digest]}"))
            continue
        seen[digest] = name
        sources.append(Source(name=name, path=path, sha256=digest, label=label))
    if not sources:
        raise InputError(f"none of the {len(candidates)} image files in {where} could be read")
    return sources, skipped, ignored


def load_crop(source: Source, size: int) -> np.ndarray:
    """The photo resized (shorter side = ``size``, bicubic with antialiasing) and centre-cropped: (size, size, 3) uint8."""
    from PIL import Image

    data = source.path.read_bytes()
    if sha256_bytes(data) != source.sha256:
        raise InputError(f"{source.name} changed on disk while the set was being built")
    img = decode_photo(data)
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).copy()
