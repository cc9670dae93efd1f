"""Trial design on a real stimulus set: balance per participant, Latin square across lists, seeds."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from advbias.manifest import StimulusRow, read_manifest
from experiment.design import Design, DesignConfig

SEEDS = (0, 1, 7, 123456, 2**31 - 1)


@pytest.fixture(scope="module")
def rows(stimulus_set: Path) -> list[StimulusRow]:
    return read_manifest(stimulus_set)


@pytest.fixture(scope="module")
def by_id(rows: list[StimulusRow]) -> dict[str, StimulusRow]:
    return {r.stimulus_id: r for r in rows}


def test_set_shape(rows: list[StimulusRow]) -> None:
    """The fixture set is what the design tests assume: 8 photos, cat:truck at eps 2 and 16, controls."""
    assert len({r.source_sha256 for r in rows}) == 8
    assert Counter(r.condition for r in rows) == {"clean": 8, "adversarial": 32, "flip": 32, "noise": 16}


def test_each_participant_is_balanced(rows: list[StimulusRow], by_id: dict[str, StimulusRow]) -> None:
    design = Design(rows, DesignConfig())
    assert design.n_lists == 4 and design.n_main == 8
    for list_index in range(design.n_lists):
        for seed in SEEDS:
            trials = design.participant_trials(list_index, seed)
            assert [t.kind for t in trials[:2]] == ["practice", "practice"]
            main = [t for t in trials if t.kind == "main"]
            assert len(main) == 8 and len(trials) == design.n_trials == 12
            # each source photo at most once among the main trials
            assert len({t.source for t in main}) == len(main)
            # budgets, asked category and their combination exactly balanced
            assert Counter(t.eps for t in main) == {2: 4, 16: 4}
            assert Counter(t.question_target for t in main) == {"cat": 4, "truck": 4}
            assert Counter((t.eps, t.question_target) for t in main) == {
                (2, "cat"): 2, (2, "truck"): 2, (16, "cat"): 2, (16, "truck"): 2
            }
            # the image perturbed toward the asked category is on the left in exactly half the trials
            assert Counter(t.target_side for t in main) == {"left": 4, "right": 4}
            for (eps, asked), n in Counter((t.eps, t.question_target) for t in main).items():
                sides = Counter(t.target_side for t in main if (t.eps, t.question_target) == (eps, asked))
                assert sides["left"] == sides["right"] == n // 2
            for t in main:
                toward = by_id[t.left_stimulus_id if t.target_side == "left" else t.right_stimulus_id]
                other = by_id[t.right_stimulus_id if t.target_side == "left" else t.left_stimulus_id]
                assert toward.condition == other.condition == "adversarial"
                assert toward.target == t.question_target and other.target != t.question_target
                assert toward.eps == other.eps == t.eps and toward.pair_key == other.pair_key == t.pair_key
                assert toward.source_sha256 == other.source_sha256
                assert t.question == f"Which image is more {t.question_target}-like?"
                assert {t.left_target, t.right_target} == {"cat", "truck"}


def test_latin_square_rotates_images_through_budgets(rows: list[StimulusRow]) -> None:
    design = Design(rows, DesignConfig())
    cells_per_source: dict[str, list] = {}
    for list_index in range(design.n_lists):
        for sha, cell in design.list_cells(list_index).items():
            cells_per_source.setdefault(sha, []).append((cell.eps, cell.asked))
    assert len(cells_per_source) == 8
    for cells in cells_per_source.values():
        # over the 4 lists every photo appears once in each budget x asked-category cell
        assert sorted(cells) == [(2, "cat"), (2, "truck"), (16, "cat"), (16, "truck")]
    # the union of what the participants of all lists see covers every photo in every cell once
    seen = Counter()
    for list_index in range(design.n_lists):
        for t in design.participant_trials(list_index, seed=5):
            if t.kind == "main":
                seen[(t.source, t.eps, t.question_target)] += 1
    assert len(seen) == 32 and set(seen.values()) == {1}


def test_sequence_is_reproducible_from_the_seed(rows: list[StimulusRow]) -> None:
    design = Design(rows, DesignConfig())
    assert design.participant_trials(1, 42) == design.participant_trials(1, 42)
    orders = {tuple(t.left_stimulus_id for t in design.participant_trials(1, seed)) for seed in SEEDS}
    assert len(orders) == len(SEEDS)


def test_catch_trials_use_confident_clean_images(rows: list[StimulusRow], by_id: dict[str, StimulusRow]) -> None:
    design = Design(rows, DesignConfig(catch_trials=4, catch_min_prob=0.5))
    assert len(design.catch_pool) >= 2
    for seed in SEEDS:
        catch = [t for t in design.participant_trials(0, seed) if t.kind == "catch"]
        assert len(catch) == 4
        assert Counter(t.target_side for t in catch) == {"left": 2, "right": 2}
        for t in catch:
            left, right = by_id[t.left_stimulus_id], by_id[t.right_stimulus_id]
            assert left.condition == right.condition == "clean" and t.condition == "catch" and t.eps == 0
            assert left.ensemble_category != right.ensemble_category
            assert min(left.ensemble_category_prob, right.ensemble_category_prob) >= 0.5
            shown = {"left": left, "right": right}[t.target_side]
            assert shown.ensemble_category == t.question_target
            assert (t.left_target, t.right_target) == (left.ensemble_category, right.ensemble_category)


def test_control_conditions_pair_the_right_images(rows: list[StimulusRow], by_id: dict[str, StimulusRow]) -> None:
    config = DesignConfig(conditions=("targets", "vs_clean", "vs_flip", "vs_noise"), budgets=(16,))
    design = Design(rows, config)
    assert design.n_lists == 8 and design.n_main == 8
    expected_other = {"targets": "adversarial", "vs_clean": "clean", "vs_flip": "flip", "vs_noise": "noise"}
    for seed in SEEDS[:2]:
        main = [t for t in design.participant_trials(3, seed) if t.kind == "main"]
        assert Counter(t.condition for t in main) == {c: 2 for c in expected_other}
        for t in main:
            toward_id, other_id = (
                (t.left_stimulus_id, t.right_stimulus_id) if t.target_side == "left"
                else (t.right_stimulus_id, t.left_stimulus_id)
            )
            toward, other = by_id[toward_id], by_id[other_id]
            assert toward.condition == "adversarial" and toward.target == t.question_target and toward.eps == 16
            assert other.condition == expected_other[t.condition]
            assert other.source_sha256 == toward.source_sha256
            if t.condition == "vs_flip":
                assert other.target == t.question_target and other.pair_key == toward.pair_key
            if t.condition in ("vs_clean", "vs_noise", "vs_flip"):
                other_side_target = t.right_target if t.target_side == "left" else t.left_target
                assert other_side_target == ""
            if t.condition == "vs_noise":
                assert other.pair_key == toward.pair_key


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pairs": ("dog:car",)}, "pair 'dog:car' is not in the stimulus set"),
        ({"budgets": (4,)}, "budget 4 is not in the stimulus set"),
        ({"conditions": ("sideways",)}, "unknown trial type 'sideways'"),
        ({"trials_per_participant": 6}, "must be a positive multiple of 4"),
        ({"trials_per_participant": 12}, "needs 3 source images per cell"),
        ({"question": "Which one is {thing}?"}, "must contain {category}"),
        ({"question": "Which {category"}, "malformed"),
        ({"conditions": ("targets", "vs_clean", "vs_flip", "vs_noise")}, "needs at least one source image per cell"),
        ({"catch_min_prob": 0.9999}, "catch trials need clean images of at least two categories"),
    ],
)
def test_impossible_designs_are_refused(rows: list[StimulusRow], change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        Design(rows, replace(DesignConfig(), **change))


def test_missing_controls_are_named(rows: list[StimulusRow]) -> None:
    without_flip = [r for r in rows if r.condition != "flip"]
    with pytest.raises(ValueError, match="vs_flip needs flip controls"):
        Design(without_flip, DesignConfig(conditions=("vs_flip",)))
    # a set without controls still carries the main design
    assert Design(without_flip, DesignConfig()).n_main == 8
