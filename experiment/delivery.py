"""How images reach participants without betraying their condition.

Three things a participant's browser sees about an image could tell a curious or
scripted participant which side holds the image perturbed toward the asked category:

* **its name**: a URL naming the manifest's stimulus id (the sha256 of the file) can be
  recomputed by anyone who re-runs the generation on the public photos, and a name shared
  by every participant links images across sessions: pooling a dozen invented sessions,
  the clean photo is the image with the most partners, which gives away the target side
  of ``vs_clean`` and ``vs_noise`` trials. URLs are instead keyed aliases *per
  participant*: ``HMAC-SHA256(experiment.delivery_key, participant public id, stimulus_id)``,
  truncated to 128 bits, with a random key per experiment kept in the database, under
  ``/stimuli/<experiment>/<participant public id>/<alias>.png``. No two participants see
  the same name for one image, and a participant can fetch only the images of their own
  trials;
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
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from experiment.models import Experiment, Participant, Stimulus, Trial
from experiment.stimulus_set import delivery_bytes

if TYPE_CHECKING:  # pragma: no cover
    from experiment.db import Database

ALIAS_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)
PUBLIC_ID_RE = re.compile(r"[0-9a-f]{8,32}", re.ASCII)
#: Browsers may keep an image for a day; ``private`` keeps shared caches (proxies) out of it.
CACHE_CONTROL = "private, max-age=86400, immutable"
#: Participants whose alias maps this process keeps (a participant's trials never change).
CACHED_PARTICIPANTS = 4096

_ALIASES: "OrderedDict[tuple[str, str, str], dict[str, str]]" = OrderedDict()
_ALIASES_LOCK = threading.Lock()


def alias(key: str, participant: str, stimulus_id: str) -> str:
    """The name of one image for one participant (128 bits of an HMAC under the experiment's key)."""
    message = f"{participant}/{stimulus_id}".encode("ascii")
    return hmac.new(key.encode("ascii"), message, hashlib.sha256).hexdigest()[:32]


def image_url(exp: Experiment, participant: str, stimulus_id: str) -> str:
    """The URL under which ``participant`` (a public id) receives one image."""
    return f"/stimuli/{exp.slug}/{participant}/{alias(exp.delivery_key, participant, stimulus_id)}.png"


def _alias_map(session: Session, slug: str, participant: str) -> dict[str, str]:
    """alias -> stimulus id for every image of one participant's trials (cached per process)."""
    cache_key = (str(session.get_bind().url), slug, participant)
    with _ALIASES_LOCK:
        found = _ALIASES.get(cache_key)
        if found is not None:
            _ALIASES.move_to_end(cache_key)
            return found
    row = session.execute(
        select(Participant.id, Experiment.delivery_key)
        .join(Experiment, Experiment.id == Participant.experiment_id)
        .where(Experiment.slug == slug, Participant.public_id == participant)
    ).first()
    if row is None:
        return {}
    ids: set[str] = set()
    for left, right in session.execute(
        select(Trial.left_stimulus_id, Trial.right_stimulus_id).where(Trial.participant_id == row.id)
    ):
        ids.update((left, right))
    mapping = {alias(row.delivery_key, participant, sid): sid for sid in ids}
    with _ALIASES_LOCK:
        _ALIASES[cache_key] = mapping
        while len(_ALIASES) > CACHED_PARTICIPANTS:
            _ALIASES.popitem(last=False)
    return mapping


def resolve(session: Session, slug: str, participant: str, name: str) -> str | None:
    """The stimulus id behind ``<participant>/<alias>.png`` in experiment ``slug``; None for anything unknown."""
    if not name.endswith(".png") or not ALIAS_RE.fullmatch(name[:-4]) or not PUBLIC_ID_RE.fullmatch(participant):
        return None
    return _alias_map(session, slug, participant).get(name[:-4])


def lookup(db: "Database", slug: str, participant: str, name: str) -> str | None:
    """:func:`resolve` in a session of its own (for the image route)."""
    with db.session() as session:
        return resolve(session, slug, participant, name)


def image_bytes(store: Path, stimulus_id: str) -> bytes | None:
    """The fixed-length encoding served for one image (None if the store lacks it)."""
    return delivery_bytes(store, stimulus_id)


_IMAGE_PX: dict[tuple[str, str], int] = {}
_IMAGE_PX_LOCK = threading.Lock()


def image_px(db: "Database", store: Path, exp: Experiment) -> int:
    """The side of the set's images in pixels (from a delivered PNG's header), so the page draws them at an
    integer multiple of their own size (no resampling); 224 if the store cannot tell. Cached per set."""
    key = (exp.slug, exp.set_hash)
    with _IMAGE_PX_LOCK:
        if key in _IMAGE_PX:
            return _IMAGE_PX[key]
    with db.session() as session:
        stimulus_id = session.scalar(select(Stimulus.stimulus_id).where(Stimulus.experiment_id == exp.id).limit(1))
    data = image_bytes(store, stimulus_id) if stimulus_id else None
    if not data or len(data) < 24 or data[12:16] != b"IHDR":
        return 224
    side = struct.unpack(">I", data[16:20])[0]
    with _IMAGE_PX_LOCK:
        _IMAGE_PX[key] = side
    return side
