"""Measure the side balance and photo usage of the trial design on built manifests.

    python tests/design_balance.py [participants]

For each design it plans ``participants`` participants (default: one complete round
of lists), assigned to lists in order as the server's least-filled rule does, and
prints one JSON line: the worst side imbalance (|left - right|) within a participant
per cell, per budget x asked category and per asked category; the share of "A?"
trials with the target on the left (lowest and highest over participants); the
worst left/right split of one (photo, budget, asked category) over all
participants; and the fewest and most main trials of one photo. It uses only
``Design``, ``DesignConfig``, ``n_lists`` and ``participant_trials``, so it runs on
earlier versions of the design too (the numbers in docs/running-a-study.md).
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter, defaultdict
from typing import Any, Callable

from advbias.manifest import StimulusRow, pair_key
from experiment.design import Design, DesignConfig


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(n_photos: int, pairs: tuple[str, ...], budgets: tuple[int, ...]) -> list[StimulusRow]:
    """A complete set's rows (adversarial, flip, noise, clean) for ``n_photos`` photos."""
    rows = []
    for i in range(n_photos):
        src = f"photo{i:03d}.png"
        sha = _sha(src)
        rows.append(StimulusRow(_sha("clean" + src), src, sha, "clean", ensemble_category=("cat", "truck")[i % 2],
                                ensemble_category_prob=0.9))
        for pair in pairs:
            a, b = pair.split(":")
            for eps in budgets:
                key = pair_key(sha, a, b, eps)
                rows.append(StimulusRow(_sha(f"noise{key}"), src, sha, "noise", pair, "", eps, key))
                for target in (a, b):
                    for cond in ("adversarial", "flip"):
                        rows.append(StimulusRow(_sha(f"{cond}{key}{target}"), src, sha, cond, pair, target, eps, key))
    return rows


def _worst(trials: list[Any], key: Callable[[Any], object]) -> int:
    sides: dict[object, Counter] = defaultdict(Counter)
    for t in trials:
        sides[key(t)][t.target_side] += 1
    return max(abs(c["left"] - c["right"]) for c in sides.values())


def measure(name: str, n_photos: int, participants: int | None, pairs: tuple[str, ...] = ("cat:truck",),
            budgets: tuple[int, ...] = (2, 16), **config: Any) -> dict[str, object]:
    design = Design(manifest(n_photos, pairs, budgets), DesignConfig(**config))
    n = participants or design.n_lists
    within = Counter()
    first_left = []
    per_item: dict[tuple, Counter] = defaultdict(Counter)
    usage: Counter = Counter()
    for p in range(n):
        main = [t for t in design.participant_trials(p % design.n_lists, seed=1000 + p) if t.kind == "main"]
        cell = lambda t: (t.pair_key.split(":", 1)[1].rsplit(":", 1)[0], t.condition, t.eps, t.question_target)
        for label, key in (("cell", cell), ("budget_x_asked", lambda t: (t.eps, t.question_target)),
                           ("asked", lambda t: t.question_target)):
            within[label] = max(within[label], _worst(main, key))
        asked = [t for t in main if t.question_target == pairs[0].split(":")[0]]
        first_left.append(sum(t.target_side == "left" for t in asked) / len(asked))
        for t in main:
            per_item[(t.source, t.eps, t.question_target)][t.target_side] += 1
            usage[t.source_sha256] += 1
    split = max(per_item.values(), key=lambda c: abs(c["left"] - c["right"]))
    return {
        "design": name, "photos": n_photos, "cells": len(design.cells), "main_trials": design.n_main,
        "lists": design.n_lists, "participants": n,
        "within_worst_side_imbalance": dict(within),
        "first_category_left_pct": [round(100 * min(first_left)), round(100 * max(first_left))],
        "across_worst_left_right": [split["left"], split["right"]],
        "photo_usage_min_max": [min(usage.get(s, 0) for s in design.sources), max(usage.values())],
    }


DESIGNS: list[tuple[str, int, dict[str, Any]]] = [
    ("1 per cell", 8, {"trials_per_participant": 4}),
    ("2 per cell", 8, {}),
    ("3 per cell", 12, {}),
    ("5 budgets, 50 photos", 50, {"budgets": (1, 2, 4, 8, 16)}),
    ("10 photos, 4 cells", 10, {}),
    ("4 trial types, 20 photos", 20, {"conditions": ("targets", "vs_clean", "vs_flip", "vs_noise")}),
    ("2 pairs x 3 budgets, 40 photos", 40, {"pairs": ("cat:truck", "dog:car"), "budgets": (2, 4, 16)}),
]

if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else None
    for name, photos, config in DESIGNS:
        print(json.dumps(measure(name, photos, count, **config)))
