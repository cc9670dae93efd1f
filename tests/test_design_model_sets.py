"""The model set as a design factor: balance and each photo at most once, over random small designs.

Property-based (hypothesis, bounded and derandomised) on synthetic manifests shaped like the
ones ``stimuli generate --model-set ...`` writes: clean crops shared by every set, and per set
adversarial images, flipped and phase-randomised controls and noise.
"""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advbias.manifest import StimulusRow, pair_key
from experiment.config import resolve_config
from experiment.design import Design, DesignConfig

SETS = ("conv", "attn", "mix")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(n_photos: int, model_sets: tuple[str, ...], budgets: tuple[int, ...],
             pair: str = "cat:truck") -> list[StimulusRow]:
    """Every image of a set made on ``model_sets`` (the pair_key carries the set when there are several)."""
    a, b = pair.split(":")
    rows = []
    for i in range(n_photos):
        src = f"photo{i:03d}.png"
        sha = _sha(src)
        rows.append(StimulusRow(_sha("clean" + src), src, sha, "clean", ensemble_category=("cat", "truck")[i % 2],
                                ensemble_category_prob=0.9))
        for ms in model_sets:
            for eps in budgets:
                key = pair_key(sha, a, b, eps, ms if len(model_sets) > 1 else "")
                rows.append(StimulusRow(_sha(f"noise{key}"), src, sha, "noise", pair, "", eps, key, model_set=ms))
                for target in (a, b):
                    for cond in ("adversarial", "flip", "phase"):
                        rows.append(StimulusRow(_sha(f"{cond}{key}{target}"), src, sha, cond, pair, target, eps, key,
                                                model_set=ms))
    return rows


@st.composite
def designs(draw: st.DrawFn) -> tuple[Design, tuple[str, ...], dict[str, StimulusRow]]:
    n_sets = draw(st.integers(1, 3))
    in_set = SETS[:n_sets]
    chosen = tuple(draw(st.permutations(in_set))[: draw(st.integers(1, n_sets))])
    budgets = tuple(draw(st.lists(st.sampled_from((2, 4, 16)), min_size=1, max_size=2, unique=True)))
    conditions = tuple(draw(st.lists(st.sampled_from(("targets", "vs_clean", "vs_phase", "vs_noise")), min_size=1,
                                     max_size=2, unique=True)))
    k = len(chosen) * len(budgets) * len(conditions) * 2
    n_photos = draw(st.integers(k, 2 * k + 3))
    per_cell = draw(st.integers(1, n_photos // k))
    config = DesignConfig(conditions=conditions, budgets=budgets, model_sets=chosen, trials_per_participant=per_cell * k,
                          practice_trials=draw(st.integers(0, 2)), catch_trials=0)
    rows = manifest(n_photos, in_set, (2, 4, 16))
    return Design(rows, config), chosen, {r.stimulus_id: r for r in rows}


@settings(max_examples=25, deadline=None, derandomize=True)
@given(designs())
def test_model_sets_are_balanced_and_photos_shown_once(case: tuple) -> None:
    design, chosen, by_id = case
    assert design.model_sets == chosen and design.summary()["model_sets"] == list(chosen)
    per_set = design.n_main // len(chosen)
    shown: Counter = Counter()
    sides: Counter = Counter()
    for list_index in range(design.n_lists):
        trials = design.participant_trials(list_index, seed=list_index)
        main = [t for t in trials if t.kind == "main"]
        # each photo at most once over every set and trial type; every set equally often
        assert len({t.source_sha256 for t in main}) == len(main) == design.n_main
        assert Counter(t.model_set for t in main) == {ms: per_set for ms in chosen}
        for t in main:
            for sid in (t.left_stimulus_id, t.right_stimulus_id):  # both images are the cell's set's own
                row = by_id[sid]
                assert row.model_set == ("" if row.condition == "clean" else t.model_set)
                assert row.source_sha256 == t.source_sha256
            shown[(t.source_sha256, t.model_set)] += 1
            sides[(t.model_set, t.target_side)] += 1
        for t in trials:
            if t.kind == "practice":
                assert t.model_set == chosen[0]
    # over a round of lists: each photo on each set equally often, each set's target on each side equally often
    assert len(set(shown.values())) == 1 and len(shown) == len(design.sources) * len(chosen)
    assert len(set(sides.values())) == 1


def test_model_sets_default_to_every_set_and_are_checked() -> None:
    rows = manifest(8, ("a", "b"), (4,))
    assert Design(rows, DesignConfig()).model_sets == ("a", "b")
    assert len(Design(rows, DesignConfig(model_sets=("b",))).cells) == 2
    with pytest.raises(ValueError, match="model set 'c' is not in the stimulus set"):
        Design(rows, DesignConfig(model_sets=("c",)))
    with pytest.raises(ValueError, match="each once"):
        Design(rows, DesignConfig(model_sets=("a", "a")))
    old = manifest(4, ("",), (4,))  # a set from before model sets: one unnamed set
    assert Design(old, DesignConfig()).model_sets == ("",)
    with pytest.raises(ValueError, match="model_sets must be a list of strings"):
        resolve_config({"model_sets": [1]})
    design, _ = resolve_config({"model_sets": ["a"]})
    assert design.model_sets == ("a",)
