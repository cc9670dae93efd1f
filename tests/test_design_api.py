"""The design's balance as participants receive it: a full round of lists started through the JSON API.

The browser is never told which side shows the image perturbed toward the asked
category, so each trial is read the way an observer would: its two image URLs are
matched to manifest rows (through the stored trials, which name the stimulus behind
every URL), the asked category comes from the question, and the side of the
adversarial image toward that category is the target side. Runs on SQLite and
PostgreSQL (the ``database_url`` fixture).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import select

from advbias.manifest import StimulusRow, read_manifest
from conftest import ParticipantDriver
from experiment.models import Experiment, Participant, Trial

OTHER_CONDITION = {"adversarial": "targets", "clean": "vs_clean", "flip": "vs_flip", "noise": "vs_noise"}

#: (name, experiment config, cells K, trials per cell, lists in a round); the set has 8 photos, cat:truck, eps 2, 16.
CASES = [
    ("one-per-cell", {"trials_per_participant": 4}, 4, 1, 16),
    ("two-per-cell", {}, 4, 2, 8),
    ("three-per-cell", {"budgets": [16], "trials_per_participant": 6}, 2, 3, 16),
    ("8-photos-6-cells", {"conditions": ["targets", "vs_clean", "vs_flip"], "budgets": [16]}, 6, 1, 48),
]


def _asked(question: str) -> str:
    match = re.fullmatch(r"Which image is more (\w+)-like\?", question)
    assert match, question
    return match.group(1)


def observed_trials(
    db: Any, driver: ParticipantDriver, manifest: dict[str, StimulusRow], url_to_id: dict[str, str]
) -> list[dict[str, Any]]:
    """The participant's main trials as seen through the API, classified through the manifest."""
    shown = driver.trials()
    with db.session() as s:
        stored = {t.public_id: t for t in s.scalars(select(Trial).join(Participant).where(Participant.token == driver.token))}
    main = []
    for view in shown:
        record = stored[view["id"]]
        for side in ("left", "right"):  # one URL always names one image
            stimulus_id = getattr(record, f"{side}_stimulus_id")
            assert url_to_id.setdefault(view[side], stimulus_id) == stimulus_id
        if record.kind != "main":
            continue
        asked = _asked(view["question"])
        images = {side: manifest[url_to_id[view[side]]] for side in ("left", "right")}
        toward = [s for s, row in images.items() if row.condition == "adversarial" and row.target == asked]
        assert len(toward) == 1, (view, images)
        side = toward[0]
        row, other = images[side], images["right" if side == "left" else "left"]
        assert side == record.target_side  # the browser's view and the stored record agree
        main.append({"photo": row.source_sha256, "condition": OTHER_CONDITION[other.condition], "eps": row.eps,
                     "asked": asked, "side": side})
    return main


@pytest.mark.parametrize("name, config, k, per_cell, n_lists", CASES, ids=[c[0] for c in CASES])
def test_a_round_of_participants_is_counterbalanced(
    client, db, make_experiment: Callable[..., str], stimulus_set: Path,  # type: ignore[no-untyped-def]
    name: str, config: dict[str, Any], k: int, per_cell: int, n_lists: int,
) -> None:
    slug = make_experiment(name, **config)
    with db.session() as s:
        assert s.scalar(select(Experiment.n_lists).where(Experiment.slug == slug)) == n_lists
    manifest = {r.stimulus_id: r for r in read_manifest(stimulus_set)}
    url_to_id: dict[str, str] = {}
    drivers = [ParticipantDriver(client, slug, f"{name}-{i}").prepare() for i in range(n_lists)]
    with db.session() as s:  # the least-filled list first: one participant per list
        assert sorted(s.scalars(select(Participant.list_index)).all()) == list(range(n_lists))

    per_item: dict[tuple, Counter] = defaultdict(Counter)
    per_cell_side: Counter = Counter()
    usage: Counter = Counter()
    for driver in drivers:
        main = observed_trials(db, driver, manifest, url_to_id)
        assert len(main) == k * per_cell and len({t["photo"] for t in main}) == len(main)
        assert set(Counter((t["condition"], t["eps"], t["asked"]) for t in main).values()) == {per_cell}
        # within the participant: every slice (cell, budget x asked, asked, trial type, ...) is side-balanced
        for size in range(4):
            for names in combinations(("condition", "eps", "asked"), size):
                sides: dict[tuple, Counter] = defaultdict(Counter)
                for t in main:
                    sides[tuple(t[n] for n in names)][t["side"]] += 1
                for count in sides.values():
                    assert abs(count["left"] - count["right"]) == (count["left"] + count["right"]) % 2, (names, count)
        for t in main:
            per_item[(t["photo"], t["eps"], t["asked"])][t["side"]] += 1
            per_cell_side[(t["photo"], t["condition"], t["eps"], t["asked"], t["side"])] += 1
            usage[t["photo"]] += 1

    # across the round: every (photo, budget, asked category) left as often as right, every photo in every
    # cell on each side equally often, every photo shown equally often
    assert per_item and all(c["left"] == c["right"] for c in per_item.values())
    assert len(per_cell_side) == 8 * k * 2 and len(set(per_cell_side.values())) == 1
    assert len(usage) == 8 and len(set(usage.values())) == 1
