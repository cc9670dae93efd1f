"""How images reach participants without betraying their condition.

Three things a participant's browser sees about an image could tell a curious or
scripted participant which side holds the image perturbed toward the asked category:

* **its name**: a URL naming the manifest's stimulus id (the sha256 of the file) can be
  recomputed by anyone who re-runs the generation on the public photos. URLs are
  instead keyed aliases: ``HMAC-SHA256(experiment.delivery_key, stimulus_id)``,
  truncated to 128 bits, with a random key per experiment kept in the database;
* **its length**: compressed PNGs grow with the perturbation. Images are served in a
  fixed-length encoding (:func:`experiment.stimulus_set.delivery_png`): every image
  of a given size has the same number of bytes;
* **its headers**: no ``Last-Modified`` and no ``ETag`` (file times and hashes differ
  between conditions), no answer to conditional or range requests.

The pixels themselves are what the participant must judge and cannot be hidden: someone
who regenerates the set with the same photos, models and seed can match pixels to
manifest rows. The set's seed is therefore part of what a study keeps to itself
(docs/reliability.md, threat model).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiment.models import Experiment, Stimulus
from experiment.stimulus_set import delivery_bytes

if TYPE_CHECKING:  # pragma: no cover
    from experiment.db import Database

ALIAS_RE = re.compile(r"^[0-9a-f]{32}$")
#: Browsers may keep an image for a day; ``private`` keeps shared caches (proxies) out of it.
CACHE_CONTROL = "private, max-age=86400, immutable"

_ALIASES: dict[tuple[str, int, str], dict[str, str]] = {}
_ALIASES_LOCK = threading.Lock()


def alias(key: str, stimulus_id: str) -> str:
    """The public name of one image in one experiment (128 bits of an HMAC under the experiment's key)."""
    return hmac.new(key.encode("ascii"), stimulus_id.encode("ascii"), hashlib.sha256).hexdigest()[:32]


def image_url(exp: Experiment, stimulus_id: str) -> str:
    return f"/stimuli/{exp.slug}/{alias(exp.delivery_key, stimulus_id)}.png"


def _alias_map(session: Session, exp_id: int, key: str) -> dict[str, str]:
    """alias -> stimulus id for every image of the experiment (cached per process: sets never change)."""
    cache_key = (str(session.get_bind().url), exp_id, key)
    with _ALIASES_LOCK:
        found = _ALIASES.get(cache_key)
    if found is not None:
        return found
    ids = session.scalars(select(Stimulus.stimulus_id).where(Stimulus.experiment_id == exp_id)).all()
    mapping = {alias(key, sid): sid for sid in ids}
    with _ALIASES_LOCK:
        _ALIASES[cache_key] = mapping
    return mapping


def resolve(session: Session, slug: str, name: str) -> str | None:
    """The stimulus id behind ``<alias>.png`` in experiment ``slug``; None for anything unknown."""
    if not name.endswith(".png") or not ALIAS_RE.match(name[:-4]):
        return None
    row = session.execute(select(Experiment.id, Experiment.delivery_key).where(Experiment.slug == slug)).first()
    if row is None:
        return None
    return _alias_map(session, row.id, row.delivery_key).get(name[:-4])


def lookup(db: "Database", slug: str, name: str) -> str | None:
    """:func:`resolve` in a session of its own (for the image route)."""
    with db.session() as session:
        return resolve(session, slug, name)


def image_bytes(store: Path, stimulus_id: str) -> bytes | None:
    """The fixed-length encoding served for one image (None if the store lacks it)."""
    return delivery_bytes(store, stimulus_id)
