"""Importing a stimulus set: its manifest (advbias.manifest), set.json and hash-checked images."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterable


from advbias.manifest import StimulusRow, read_manifest

def read_set(setdir: Path) -> tuple[list[StimulusRow], dict[str, Any], str]:
    """The manifest rows, ``set.json`` and the set's hash (sha256 of manifest.csv's bytes).

    The manifest names every image by the sha256 of its bytes, so hashing the
    manifest pins the images too (and they are verified when imported).
    """
    setdir = Path(setdir)
    if not setdir.is_dir():
        raise FileNotFoundError(f"stimulus set folder {setdir} does not exist")
    rows = read_manifest(setdir)
    info_path = setdir / "set.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{setdir} is not a stimulus set: set.json is missing")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{info_path} is not valid JSON: {exc}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{info_path} must hold a JSON object")
    digest = hashlib.sha256((setdir / "manifest.csv").read_bytes()).hexdigest()
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
        src = setdir / "images" / f"{row.stimulus_id}.png"
        if not src.is_file():
            raise FileNotFoundError(f"image {src} listed in the manifest is missing")
        data = src.read_bytes()
        if hashlib.sha256(data).hexdigest() != row.stimulus_id:
            raise ValueError(f"image {src.name} does not match its sha256: the set is corrupt or was edited")
        dest = store / f"{row.stimulus_id}.png"
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


