"""What an image's delivery could betray about its condition: byte length, headers and name.

Every image a participant can receive is fetched (every stimulus of the experiment, all
trial types and budgets), in the app and through a real gunicorn server. The attack that
motivated this is checked on the set's own files first, so the test would notice if the
delivered files stopped hiding it: on compressed PNGs "the perturbed image is the larger
file next to its clean photo, the smaller next to noise" finds the target side almost always.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import shutil
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest
from PIL import Image
from sqlalchemy import select, text

from experiment.delivery import alias, image_url
from experiment.models import Experiment, Participant, Stimulus, Trial
from experiment.stimulus_set import delivery_length, delivery_path

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ALL_CONDITIONS = ["targets", "vs_clean", "vs_flip", "vs_noise"]
#: Headers that could differ between two images, or let a browser learn about the file behind one.
FORBIDDEN_HEADERS = {"last-modified", "etag", "accept-ranges", "content-disposition", "content-range"}


def _experiment_images(db: Any, slug: str) -> tuple[Experiment, list[Stimulus]]:
    with db.session() as session:
        exp = session.scalar(select(Experiment).where(Experiment.slug == slug))
        rows = session.scalars(select(Stimulus).where(Stimulus.experiment_id == exp.id)).all()
        return exp, list(rows)


def _chunks(png: bytes) -> list[bytes]:
    names, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        names.append(png[pos + 4:pos + 8])
        pos += 12 + length
    return names


def _length_guess_accuracy(db: Any, slug: str, length_of: Callable[[str], int]) -> tuple[float, int]:
    """How often file lengths give away the target side in main trials against a clean photo or noise.

    The rule a participant could learn: the perturbed image is the larger file next to its clean
    photo and the smaller one next to noise. Returns the share of trials it gets right among those
    where the two files differ in length, and how many did (ties allow no guess).
    """
    larger_is_target = {"vs_clean": True, "vs_noise": False}
    right = decided = 0
    with db.session() as session:
        trials = session.scalars(select(Trial).where(Trial.kind == "main", Trial.condition.in_(larger_is_target)))
        for t in trials:
            left, right_len = length_of(t.left_stimulus_id), length_of(t.right_stimulus_id)
            if left == right_len:
                continue
            decided += 1
            left_guess = (left > right_len) == larger_is_target[t.condition]
            right += left_guess == (t.target_side == "left")
    return (right / decided if decided else 0.5), decided


def _served_urls(db: Any, exp: Experiment) -> dict[str, str]:
    """One URL for every image some participant of the experiment can receive (through that participant)."""
    with db.session() as session:
        rows = session.execute(
            select(Participant.public_id, Trial.left_stimulus_id, Trial.right_stimulus_id)
            .join(Trial, Trial.participant_id == Participant.id).where(Participant.experiment_id == exp.id)
        ).all()
    urls: dict[str, str] = {}
    for public_id, *stimulus_ids in rows:
        for sid in stimulus_ids:
            urls.setdefault(sid, image_url(exp, public_id, sid))
    return urls


def test_every_image_of_a_size_has_one_length_and_no_validators(client, db, make_experiment, participant,
                                                               stimulus_set: Path) -> None:  # type: ignore[no-untyped-def]
    slug = make_experiment("lengths", conditions=ALL_CONDITIONS, budgets=[16])
    for i in range(8):  # participants over several lists, so that main trials of every kind are planned
        participant(slug, prolific_pid=f"len-{i}")
    exp, all_rows = _experiment_images(db, slug)
    urls = _served_urls(db, exp)
    rows = [r for r in all_rows if r.stimulus_id in urls]
    assert len(rows) >= 30  # every trial type at budget 16, clean photos and catch images
    originals = {r.stimulus_id: (stimulus_set / "images" / f"{r.stimulus_id}.png").read_bytes() for r in rows}

    # The attack works on the set's own (compressed) files, so this test can see a leak ...
    accuracy, decided = _length_guess_accuracy(db, slug, lambda sid: len(originals[sid]))
    assert decided >= 20 and accuracy > 0.9, (accuracy, decided)

    served: dict[str, bytes] = {}
    header_sets = set()
    lengths_by_size: dict[tuple[int, int], set[int]] = defaultdict(set)
    for row in rows:  # every image any participant of this experiment can receive
        reply = client.get(urls[row.stimulus_id])
        assert reply.status_code == 200
        data = reply.get_data()
        served[row.stimulus_id] = data
        headers = {k.lower(): v for k, v in reply.headers.items()}
        assert not FORBIDDEN_HEADERS & set(headers), headers
        assert headers["cache-control"] == "private, max-age=86400, immutable"
        header_sets.add(tuple(sorted((k, v) for k, v in headers.items() if k != "date")))
        with Image.open(io.BytesIO(data)) as image:
            assert image.tobytes() == Image.open(io.BytesIO(originals[row.stimulus_id])).convert("RGB").tobytes()
            lengths_by_size[image.size].add(len(data))
            assert len(data) == delivery_length(*image.size)
        assert _chunks(data) == [b"IHDR", b"IDAT", b"IEND"]  # no text, time, gamma or profile chunks
    assert len(header_sets) == 1  # nothing in the headers differs from one image to another
    assert all(len(lengths) == 1 for lengths in lengths_by_size.values()), lengths_by_size

    # ... and finds nothing in what is served.
    assert _length_guess_accuracy(db, slug, lambda sid: len(served[sid])) == (0.5, 0)

    # Conditional and range requests get the whole image: no 304 or 206 that could differ between files.
    url = urls[rows[0].stimulus_id]
    for extra in ({"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}, {"If-None-Match": "*"},
                  {"Range": "bytes=0-99"}):
        reply = client.get(url, headers=extra)
        assert reply.status_code == 200 and reply.get_data() == served[rows[0].stimulus_id], extra


def test_image_names_are_keyed_aliases_per_participant(client, db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    first, second = make_experiment("alias-a"), make_experiment("alias-b")
    exp_a, rows = _experiment_images(db, first)
    exp_b, _ = _experiment_images(db, second)
    assert exp_a.delivery_key != exp_b.delivery_key and len(exp_a.delivery_key) == 64

    p = participant(first, prolific_pid="alias-p").prepare()
    q = participant(first, prolific_pid="alias-q").prepare()
    r = participant(second, prolific_pid="alias-r").prepare()
    pub = {d.token: _public_id(db, d.token) for d in (p, q, r)}
    public = {row.stimulus_id for row in rows} | {row.source_sha256 for row in rows}
    names_p: set[str] = set()
    for trial in p.trials():
        for url in (trial["left"], trial["right"]):
            prefix, name = url.rsplit("/", 1)
            assert prefix == f"/stimuli/{first}/{pub[p.token]}"
            name = name[:-4]
            names_p.add(name)
            sid = next(row.stimulus_id for row in rows if alias(exp_a.delivery_key, pub[p.token], row.stimulus_id) == name)
            # What someone holding the manifest (or re-running the generation) could compute does not name it.
            assert not any(name in h or h.startswith(name[:8]) for h in public)
            assert name != hmac.new(b"", sid.encode(), hashlib.sha256).hexdigest()[:32]
            # Another participant has another name for the same image, and neither name works for the other.
            other = alias(exp_a.delivery_key, pub[q.token], sid)
            assert other != name
            assert client.get(f"/stimuli/{first}/{pub[q.token]}/{name}.png").status_code == 404
            assert client.get(f"/stimuli/{first}/{pub[p.token]}/{other}.png").status_code == 404
            assert client.get(f"/stimuli/{second}/{pub[p.token]}/{name}.png").status_code == 404
            assert client.get(f"/stimuli/{first}/{name}.png").status_code == 404
            assert client.get(f"/stimuli/{sid}.png").status_code == 404
            assert client.get(f"/stimuli/{first}/{pub[p.token]}/{sid[:32]}.png").status_code == 404
    names_q = {u.rsplit("/", 1)[1][:-4] for t in q.trials() for u in (t["left"], t["right"])}
    names_r = {u.rsplit("/", 1)[1][:-4] for t in r.trials() for u in (t["left"], t["right"])}
    assert not names_p & names_q and not names_p & names_r
    assert exp_a.delivery_key not in str(p.trials()) and exp_a.delivery_key not in client.get(p.base).get_data(True)


def _public_id(db: Any, token: str) -> str:
    with db.session() as session:
        return session.scalar(select(Participant.public_id).where(Participant.token == token))


def _cooccurrence_guesses(trials: list[dict[str, Any]], name_of: Callable[[str], str]) -> tuple[int, int, int]:
    """The pooled-name attack: the clean photo (or the noise image's partner) is the name with most partners.

    ``trials`` are every trial (practice and catch included) of many sessions, main ones with
    their condition and target side; ``name_of`` maps a URL to the name an attacker pools on. For each ``vs_clean``
    trial the side whose name has more distinct partners is taken for the clean photo (the
    target is the other side); for ``vs_noise`` the noise image is the one with fewer partners.
    Returns (right guesses, decided trials, trials).
    """
    partners: dict[str, set[str]] = defaultdict(set)
    for t in trials:
        left, right = name_of(t["left"]), name_of(t["right"])
        partners[left].add(right)
        partners[right].add(left)
    right_guesses = decided = 0
    scored = [t for t in trials if t.get("condition") in ("vs_clean", "vs_noise")]
    for t in scored:
        left, right = len(partners[name_of(t["left"])]), len(partners[name_of(t["right"])])
        if left == right:
            continue
        decided += 1
        more = "left" if left > right else "right"
        fewer = "right" if more == "left" else "left"
        guess = fewer if t["condition"] == "vs_clean" else more
        right_guesses += guess == t["target_side"]
    return right_guesses, decided, len(scored)


def test_pooled_sessions_do_not_link_image_names(client, db, make_experiment, participant) -> None:  # type: ignore[no-untyped-def]
    """13 invented sessions pooled: names decide the target side no better than chance.

    The same attack on experiment-wide names (one name per image, as before names were per
    participant) decides most trials correctly, so the test would see the leak come back.
    """
    # catch_min_prob 0: the small test set has catch images to spare, so no list needs to reuse one
    slug = make_experiment("pooled", conditions=["vs_clean", "vs_noise"], catch_min_prob=0.0)
    people = [participant(slug, prolific_pid=f"pool-{i}").prepare() for i in range(13)]
    by_url: dict[str, str] = {}
    with db.session() as session:
        planned = session.execute(select(Trial.public_id, Trial.kind, Trial.condition, Trial.target_side,
                                         Trial.left_stimulus_id, Trial.right_stimulus_id)).all()
    plan = {row.public_id: row for row in planned}
    pooled: list[dict[str, Any]] = []
    for person in people:
        for trial in person.trials():
            row = plan[trial["id"]]
            by_url[trial["left"]], by_url[trial["right"]] = row.left_stimulus_id, row.right_stimulus_id
            truth = {"condition": row.condition, "target_side": row.target_side} if row.kind == "main" else {}
            pooled.append({**trial, **truth})
    assert sum(t.get("condition") in ("vs_clean", "vs_noise") for t in pooled) >= 100
    served = _cooccurrence_guesses(pooled, lambda url: url)
    shared = _cooccurrence_guesses(pooled, lambda url: by_url[url])
    right, decided, total = served
    assert decided < 0.1 * total or right <= 0.6 * decided, served
    s_right, s_decided, _ = shared
    assert s_decided >= 0.5 * total and s_right >= 0.8 * s_decided, shared


def test_old_stores_get_delivery_encodings_and_old_experiments_a_key(app, client, db, make_experiment, participant,
                                                                    database_url: str) -> None:  # type: ignore[no-untyped-def]
    """A store imported before fixed-length delivery, and an experiment created before keyed names."""
    from experiment.db import downgrade, upgrade

    slug = make_experiment("legacy")
    exp, rows = _experiment_images(db, slug)
    store = app.extensions["advbias"].store
    shutil.rmtree(store / "delivery")
    participant(slug, prolific_pid="legacy-p")
    sid, url = next(iter(_served_urls(db, exp).items()))
    reply = client.get(url)
    assert reply.status_code == 200 and len(reply.get_data()) == delivery_length(224, 224)
    assert delivery_path(store, sid).is_file()

    downgrade(db.engine, "0001")
    with db.engine.connect() as conn:
        assert "delivery_key" not in {c["name"] for c in __import__("sqlalchemy").inspect(conn).get_columns("experiments")}
    upgrade(db.engine)
    with db.engine.connect() as conn:
        key = conn.execute(text("SELECT delivery_key FROM experiments WHERE slug = :s"), {"s": slug}).scalar()
    assert key and len(key) == 64 and key != exp.delivery_key


def test_delivery_through_gunicorn(live_study) -> None:  # type: ignore[no-untyped-def]
    """The real server adds nothing that differs between images (gunicorn's own headers included)."""
    from advbias.client import HttpClient, Participant

    slug = live_study.create_experiment(conditions=ALL_CONDITIONS, budgets=[16])
    client = HttpClient(live_study.url)
    person = Participant(slug, "gunicorn-leaks")
    while person.stage != "respond":
        method, path, body, _ = person.next_request()
        person.handle(client.request(method, path, body))
    client.close()
    parts = urlsplit(live_study.url)
    lengths, header_sets = set(), set()
    for url in {u for t in person.trials for u in (t["left"], t["right"])}:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", url, headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
        reply = conn.getresponse()
        body = reply.read()
        conn.close()
        headers = {k.lower(): v for k, v in reply.getheaders()}
        assert reply.status == 200 and not FORBIDDEN_HEADERS & set(headers), headers
        assert int(headers["content-length"]) == len(body)
        lengths.add(len(body))
        header_sets.add(tuple(sorted((k, v) for k, v in headers.items() if k != "date")))
    assert lengths == {delivery_length(224, 224)} and len(header_sets) == 1
