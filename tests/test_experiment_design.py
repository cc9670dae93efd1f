"""Trial design: balance per participant, Latin square and side counterbalancing across lists, seeds.

The first tests run on the real fixture stimulus set; the balance tests also run on
manifests built here (any number of photos, pairs, budgets and trial types), since the
design is pure code over manifest rows.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import pytest

from advbias.manifest import StimulusRow, read_manifest
from design_balance import manifest as built_manifest
from experiment.design import Design, DesignConfig, TrialSpec

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
    assert design.n_lists == 8 and design.n_main == 8 and design.n_windows == 1
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


def test_latin_square_rotates_images_through_budgets_and_sides(rows: list[StimulusRow]) -> None:
    design = Design(rows, DesignConfig())
    cells_per_source: dict[str, list] = {}
    for list_index in range(design.n_lists):
        for sha, (cell, side) in design.list_plan(list_index).items():
            cells_per_source.setdefault(sha, []).append((cell.eps, cell.asked, side))
    assert len(cells_per_source) == 8
    for cells in cells_per_source.values():
        # over the 8 lists every photo appears once in each budget x asked-category cell x side
        assert sorted(cells) == sorted(
            (eps, asked, side) for eps in (2, 16) for asked in ("cat", "truck") for side in ("left", "right")
        )
    # what the participants of all lists see covers every photo in every cell once on each side
    seen = Counter()
    for list_index in range(design.n_lists):
        for t in design.participant_trials(list_index, seed=5):
            if t.kind == "main":
                seen[(t.source, t.eps, t.question_target, t.target_side)] += 1
    assert len(seen) == 64 and set(seen.values()) == {1}
    with pytest.raises(ValueError, match="list 8 does not exist"):
        design.list_plan(8)


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


def _reuse(design: Design, list_index: int, seed: int) -> set[str]:
    """Images of catch or practice trials that a main trial of the same list shows too."""
    trials = design.participant_trials(list_index, seed)
    main = {sid for t in trials if t.kind == "main" for sid in (t.left_stimulus_id, t.right_stimulus_id)}
    return {sid for t in trials if t.kind != "main" for sid in (t.left_stimulus_id, t.right_stimulus_id)} & main


@pytest.mark.parametrize("conditions", [("vs_clean", "vs_noise"), ("vs_flip", "vs_clean"), ("targets", "vs_clean")])
def test_catch_and_practice_never_reuse_a_main_image_when_the_set_allows(rows: list[StimulusRow],
                                                                         conditions: tuple[str, ...]) -> None:
    """An image seen in a catch or practice trial and again in a main trial would mark the clean photo."""
    design = Design(rows, DesignConfig(conditions=conditions, catch_min_prob=0.0, catch_trials=2, practice_trials=2))
    for list_index in range(design.n_lists):
        for seed in SEEDS:
            assert not _reuse(design, list_index, seed), (list_index, seed)
    assert design.summary()["lists_reusing_images"] == 0


def test_the_design_says_when_it_must_reuse_main_images(rows: list[StimulusRow]) -> None:
    """Three confident clean photos for two catch trials beside four clean photos in main trials: some reuse."""
    design = Design(rows, DesignConfig(conditions=("vs_clean", "vs_noise"), catch_min_prob=0.5))
    assert sum(len(v) for v in design.catch_pool.values()) == 3
    reusing = [i for i in range(design.n_lists) if _reuse(design, i, 0)]
    assert reusing and design.summary()["lists_reusing_images"] == len(reusing)
    assert all(design.reused_images(i) == len(_reuse(design, i, 0)) for i in range(design.n_lists))


def test_control_conditions_pair_the_right_images(rows: list[StimulusRow], by_id: dict[str, StimulusRow]) -> None:
    config = DesignConfig(conditions=("targets", "vs_clean", "vs_flip", "vs_noise"), budgets=(16,))
    design = Design(rows, config)
    assert design.n_lists == 16 and design.n_main == 8
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


# --------------------------------------------------------------------------- balance on built manifests

# ``built_manifest``: the rows of a complete set for any number of photos, pairs and budgets
# (tests/design_balance.py, which also measures the balance).


#: (photos, pairs, budgets, trial types, main trials): 1, 2 and 3 trials per cell, photos a multiple of the
#: cell count or not, one or two pairs, one to three budgets and trial types.
CASES = [
    (8, ("cat:truck",), (2, 16), ("targets",), 4),
    (10, ("cat:truck",), (2, 16), ("targets",), None),
    (12, ("cat:truck",), (2, 16), ("targets",), 12),
    (13, ("cat:truck",), (2, 16), ("targets",), 12),
    (15, ("cat:truck",), (1, 2, 4, 8, 16), ("targets",), 10),
    (20, ("cat:truck",), (4, 16), ("targets", "vs_clean", "vs_flip"), 12),
    (14, ("cat:truck", "dog:car"), (4,), ("targets", "vs_noise"), None),
    (25, ("cat:truck", "dog:car"), (2, 4, 16), ("targets",), None),
]
CASE_IDS = ["1-per-cell", "10-photos-4-cells", "3-per-cell", "13-photos-3-per-cell", "5-budgets-1-per-cell",
            "3-types-1-per-cell", "2-pairs-2-types-3-per-cell", "2-pairs-3-budgets-2-per-cell"]
FACTORS = ("pair", "condition", "eps", "asked")


def _design(case: tuple) -> Design:
    n_photos, pairs, budgets, conditions, n_main = case
    config = DesignConfig(conditions=conditions, trials_per_participant=n_main, catch_trials=0, practice_trials=0)
    return Design(built_manifest(n_photos, pairs, budgets), config)


def _factors(design: Design, t: TrialSpec) -> dict[str, object]:
    pair = next(p for p in design.pairs if t.question_target in p.split(":"))
    return {"pair": pair, "condition": t.condition, "eps": t.eps, "asked": t.question_target}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_participant_is_side_balanced_in_every_slice(case: tuple) -> None:
    """Every cell, budget x asked category, asked category, ...: left and right differ by at most one trial,
    and by none when the slice has an even number of trials."""
    design = _design(case)
    per_cell = design.n_main // len(design.cells)
    for list_index in range(design.n_lists):
        main = [t for t in design.participant_trials(list_index, seed=list_index) if t.kind == "main"]
        assert len(main) == design.n_main and len({t.source for t in main}) == len(main)
        assert Counter((t.condition, t.eps, t.question_target) for t in main).most_common()[-1][1] == per_cell
        for size in range(len(FACTORS) + 1):
            for names in combinations(FACTORS, size):
                sides: dict[tuple, Counter] = defaultdict(Counter)
                for t in main:
                    f = _factors(design, t)
                    sides[tuple(f[n] for n in names)][t.target_side] += 1
                for key, count in sides.items():
                    total = count["left"] + count["right"]
                    assert abs(count["left"] - count["right"]) == total % 2, (list_index, names, key, count)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_a_round_of_lists_counterbalances_photos_cells_and_sides(case: tuple) -> None:
    """Over one round every photo is shown equally often, in every cell equally often, on each side of every
    cell equally often; every 2K consecutive lists are already a Latin square with mirrored sides."""
    design = _design(case)
    n_photos, k = len(design.sources), len(design.cells)
    assert design.n_lists == 2 * k * design.n_windows
    assert design.n_windows * design.n_main % n_photos == 0
    usage: Counter = Counter()
    per_cell: Counter = Counter()
    per_side: Counter = Counter()
    per_item: dict[tuple, Counter] = defaultdict(Counter)
    for list_index in range(design.n_lists):
        for t in design.participant_trials(list_index, seed=7):
            usage[t.source_sha256] += 1
            per_cell[(t.source_sha256, t.condition, t.eps, t.question_target)] += 1
            per_side[(t.source_sha256, t.condition, t.eps, t.question_target, t.target_side)] += 1
            per_item[(t.source_sha256, t.eps, t.question_target)][t.target_side] += 1
        if (list_index + 1) % (2 * k) == 0:  # a window is complete: left and right mirror each other
            assert all(c["left"] == c["right"] for c in per_item.values())
    uses = design.n_lists * design.n_main // n_photos
    assert set(usage.values()) == {uses} and len(usage) == n_photos
    assert len(per_cell) == n_photos * k and set(per_cell.values()) == {uses // k}
    assert len(per_side) == 2 * n_photos * k and set(per_side.values()) == {uses // k // 2}
    assert all(c["left"] == c["right"] for c in per_item.values())


def test_old_imbalance_is_gone_with_one_trial_per_cell() -> None:
    """The case that used to put the target on the left in every "cat?" trial and no "truck?" trial."""
    design = _design(CASES[0])
    for list_index in range(design.n_lists):
        main = [t for t in design.participant_trials(list_index, seed=3) if t.kind == "main"]
        assert Counter((t.question_target, t.target_side) for t in main) == {
            ("cat", "left"): 1, ("cat", "right"): 1, ("truck", "left"): 1, ("truck", "right"): 1
        }


def test_windows_spread_photos_that_are_not_a_multiple_of_the_cell_count() -> None:
    design = _design(CASES[1])  # 10 photos, 4 cells: participants see 8
    assert design.n_main == 8 and design.n_windows == 5 and design.n_lists == 40
    windows = [set(design.window_sources(w)) for w in range(design.n_windows)]
    assert all(len(w) == 8 for w in windows)
    assert set(Counter(s for w in windows for s in w).values()) == {4}
    assert design.summary()["photo_windows"] == 5 and design.summary()["lists"] == 40
