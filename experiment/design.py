"""Trial design: which pair of images each participant sees, on which side, in which order.

Pure code (no database, no Flask) so that the balance guarantees can be checked
directly and reproduced from the stored list and seed:

* A **cell** is one combination of category pair ``A:B``, model set (the
  attack models the images were made on), trial type (``targets``,
  ``vs_clean``, ``vs_flip``, ``vs_noise``, ``vs_phase``), budget and asked
  category (A or B). An experiment with P pairs, M model sets, C trial types and
  B budgets has ``K = P * M * C * B * 2`` cells. A participant sees ``q = n / K``
  source photos in every cell (``n`` main trials, a multiple of K), each photo
  at most once: so a photo seen on one model set is never seen on another.
* **Lists** cross three counterbalancing factors, innermost first:
  the *side* (which side shows the image perturbed toward the asked category:
  as planned, or mirrored), the *rotation* (a Latin square: the photo at
  position ``j`` of the list's window is in cell ``(j + r) mod K``) and the
  *window* (which ``n`` of the ``S`` usable photos, sorted by hash, the list
  shows: ``n`` consecutive ones from position ``w * n``, cyclically). There are
  ``2 * K * W`` lists with ``W = S / gcd(S, n)`` windows (``W = 1`` when a
  participant sees every photo). Over each complete round of lists every photo
  is shown equally often, in every cell equally often, and on each side of
  every cell equally often; every 2K consecutive lists (one window) are already
  a complete Latin square with mirrored sides.
* **Side balance within a participant.** The side of a main trial is a
  checkerboard over the design factors: with ``(p, s, c, e, a)`` the indices of the
  cell's pair, model set, trial type, budget and asked category, ``m`` the photo's
  rank within its cell and ``f`` the list's side factor, the target is on the left
  when ``p + s + c + e + a + m + f`` is even. Any subset of main trials fixed by
  some factors (one cell, one budget and asked category, one model set, ...)
  therefore shows the target left and right equally often, or with one extra
  trial on one side when the subset has an odd number of trials; the whole set
  (K is even) is exactly balanced.
* **Catch trials** pair two clean images of different categories that the model
  ensemble is confident about and ask about one of them; **practice trials** use
  the first model set and trial type at the largest budget. Both prefer sources the participant
  does not see in a main trial, then images no main trial of the list shows (an
  image seen in a catch trial and again in a main trial would mark the clean photo);
  when the set has none to spare they reuse some, and :meth:`Design.lists_reusing_images`
  (in :meth:`Design.summary`) says so.
* The order (practice first, then main and catch trials shuffled together) and
  every other random choice come from ``random.Random(seed)``, the seed being
  stored with the participant, so a sequence can always be rebuilt from
  ``(list, seed)``.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from string import Formatter
from typing import Callable, Iterable, Sequence

from advbias.errors import InputError
from advbias.manifest import StimulusRow
from advbias.trials import MAIN_TRIAL_TYPES, OTHER_IMAGE, ImageIndex

DEFAULT_QUESTION = "Which image is more {category}-like?"
SIDES = ("left", "right")


@dataclass(frozen=True)
class DesignConfig:
    """The design choices of one experiment (``None`` means "everything the set offers")."""

    conditions: tuple[str, ...] = ("targets",)
    pairs: tuple[str, ...] | None = None
    budgets: tuple[int, ...] | None = None
    trials_per_participant: int | None = None
    practice_trials: int = 2
    catch_trials: int = 2
    catch_min_prob: float = 0.5
    question: str = DEFAULT_QUESTION
    presentation_ms: int | None = None
    model_sets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Cell:
    """One combination of pair, model set, trial type, budget and asked category."""

    pair: str
    condition: str
    eps: int
    asked: str
    model_set: str = ""


@dataclass(frozen=True)
class TrialSpec:
    """One planned trial, with everything the export needs to describe it."""

    kind: str  # practice | main | catch
    condition: str  # targets | vs_clean | vs_flip | vs_noise | catch
    question: str
    question_target: str
    eps: int
    source: str
    source_sha256: str
    pair_key: str
    left_stimulus_id: str
    right_stimulus_id: str
    left_target: str
    right_target: str
    left_condition: str
    right_condition: str
    target_side: str
    presentation_ms: int | None
    model_set: str = ""


def question_text(template: str, category: str) -> str:
    """The question for one category; the template's only field is ``{category}``."""
    return template.format(category=category)


def validate_question(template: str) -> None:
    """Reject templates that would fail or could not name the category."""
    try:
        fields = [name for _, name, _, _ in Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise InputError(f"question template {template!r} is malformed: {exc}") from exc
    if set(fields) != {"category"}:
        raise InputError(f"question template {template!r} must contain {{category}} and no other field")


@dataclass
class _Images:
    """Lookup tables over the manifest rows: the trial-type rules' index, the images perturbed toward
    each category by photo, pair, budget and model set, clean crops (shared by every set) and photo names."""

    trials: ImageIndex[StimulusRow]
    toward: dict[tuple[str, str, int, str, str], StimulusRow] = field(default_factory=dict)
    clean: dict[str, StimulusRow] = field(default_factory=dict)
    source_name: dict[str, str] = field(default_factory=dict)

    @classmethod
    def index(cls, rows: Iterable[StimulusRow]) -> "_Images":
        rows = list(rows)
        images = cls(ImageIndex(rows))
        for row in sorted(rows, key=lambda r: r.stimulus_id):  # deterministic choice among duplicates
            images.source_name.setdefault(row.source_sha256, row.source)
            if row.condition == "adversarial":
                images.toward.setdefault((row.source_sha256, row.pair, row.eps, row.model_set, row.target), row)
            elif row.condition == "clean":
                images.clean.setdefault(row.source_sha256, row)
        return images


class Design:
    """The resolved design of one experiment over one stimulus set.

    Raises ``ValueError`` with a message naming the problem when the set cannot
    carry the requested design (missing controls, too few source images, ...).
    """

    def __init__(self, stimuli: Sequence[StimulusRow], config: DesignConfig) -> None:
        self.config = config
        self.images = _Images.index(stimuli)
        adversarial = [r for r in stimuli if r.condition == "adversarial"]
        if not adversarial:
            raise InputError("the stimulus set has no adversarial images")
        self._check_conditions(config)
        self.pairs, self.budgets = self._factors(config, adversarial)
        self.model_sets = self._model_sets(config, adversarial)
        #: (pair + model set + trial type + budget + asked category indices) mod 2: the checkerboard of the sides.
        self.cell_parity: dict[Cell, int] = {
            Cell(pair, cond, eps, asked, model_set): (p + m + c + e + a) % 2
            for p, pair in enumerate(self.pairs)
            for m, model_set in enumerate(self.model_sets)
            for c, cond in enumerate(config.conditions)
            for e, eps in enumerate(self.budgets)
            for a, asked in enumerate(pair.split(":", 1))
        }
        self.cells: tuple[Cell, ...] = tuple(self.cell_parity)
        all_sources = sorted(self.images.source_name)
        self.sources: tuple[str, ...] = tuple(s for s in all_sources if self._source_usable(s))
        self.excluded_sources = len(all_sources) - len(self.sources)
        self.n_main = self._main_trials(config)
        self.catch_pool = self._catch_pool(config)

    def _check_conditions(self, config: DesignConfig) -> None:
        """Trial types known, each once, with the controls they need; a valid question."""
        for cond in config.conditions:
            if cond not in MAIN_TRIAL_TYPES:
                raise InputError(f"unknown trial type {cond!r}: choose from {', '.join(MAIN_TRIAL_TYPES)}")
        if not config.conditions or len(set(config.conditions)) != len(config.conditions):
            raise InputError("conditions must list at least one trial type, each once")
        validate_question(config.question)
        if config.practice_trials < 0 or config.catch_trials < 0:
            raise InputError("practice_trials and catch_trials cannot be negative")
        for cond in config.conditions:
            if not self.images.trials.supports(cond):
                raise InputError(f"trial type {cond} needs {OTHER_IMAGE[cond]} controls, and the stimulus set has none")

    @staticmethod
    def _factors(config: DesignConfig, adversarial: list[StimulusRow]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The category pairs and budgets of the design: those asked for, each present in the set."""
        set_pairs = sorted({r.pair for r in adversarial})
        pairs = tuple(config.pairs) if config.pairs is not None else tuple(set_pairs)
        for pair in pairs:
            if pair not in set_pairs:
                raise InputError(f"pair {pair!r} is not in the stimulus set (it has {', '.join(set_pairs)})")
        if not pairs:
            raise InputError("pairs must list at least one category pair")
        set_budgets = sorted({r.eps for r in adversarial if r.pair in pairs})
        budgets = tuple(config.budgets) if config.budgets is not None else tuple(set_budgets)
        for eps in budgets:
            if eps not in set_budgets:
                raise InputError(
                    f"budget {eps} is not in the stimulus set (it has {', '.join(map(str, set_budgets))})"
                )
        if not budgets or len(set(budgets)) != len(budgets):
            raise InputError("budgets must list at least one budget, each once")
        return pairs, budgets

    @staticmethod
    def _model_sets(config: DesignConfig, adversarial: list[StimulusRow]) -> tuple[str, ...]:
        """The model sets of the design: those asked for (``model_sets``), each present in the set; by default all.

        A set made before model sets has one, unnamed (``""``).
        """
        set_names = sorted({r.model_set for r in adversarial})
        if config.model_sets is None:
            return tuple(set_names)
        shown = ", ".join(n or '""' for n in set_names)
        for name in config.model_sets:
            if name not in set_names:
                raise InputError(f"model set {name!r} is not in the stimulus set (it has {shown})")
        if not config.model_sets or len(set(config.model_sets)) != len(config.model_sets):
            raise InputError("model_sets must list at least one model set, each once")
        return tuple(config.model_sets)

    def _main_trials(self, config: DesignConfig) -> int:
        """Main trials per participant: a multiple of the cell count that the usable photos can carry."""
        k = len(self.cells)
        if len(self.sources) < k:
            raise InputError(
                f"the design has {k} cells (pairs x model sets x trial types x budgets x 2 asked categories) and needs "
                f"at least one source image per cell; the stimulus set has {len(self.sources)} usable source images"
            )
        per_cell_max = len(self.sources) // k
        if config.trials_per_participant is None:
            return per_cell_max * k
        n = config.trials_per_participant
        if n <= 0 or n % k:
            raise InputError(
                f"trials_per_participant must be a positive multiple of {k} (the number of design cells) "
                f"so that every participant sees each combination equally often; got {n}"
            )
        if n > per_cell_max * k:
            raise InputError(
                f"trials_per_participant {n} needs {n // k} source images per cell, but the set has "
                f"{len(self.sources)} usable source images for {k} cells (at most {per_cell_max * k} trials)"
            )
        return n

    def _catch_pool(self, config: DesignConfig) -> dict[str, list[StimulusRow]]:
        """Clean images per category that the ensemble is confident about (catch trials ask about these)."""
        pool: dict[str, list[StimulusRow]] = defaultdict(list)
        for row in sorted(self.images.clean.values(), key=lambda r: r.source_sha256):
            prob = row.ensemble_category_prob
            if row.ensemble_category and prob is not None and prob >= config.catch_min_prob:
                pool[row.ensemble_category].append(row)
        if config.catch_trials and len(pool) < 2:
            raise InputError(
                f"catch trials need clean images of at least two categories that the ensemble rates "
                f">= {config.catch_min_prob} (catch_min_prob); the set has {len(pool)}: "
                f"lower catch_min_prob or set catch_trials = 0"
            )
        return pool

    # ------------------------------------------------------------------ structure

    @property
    def n_windows(self) -> int:
        """How many different sets of ``n_main`` photos the lists cycle through (1 when all are shown)."""
        return len(self.sources) // math.gcd(len(self.sources), self.n_main)

    @property
    def n_lists(self) -> int:
        """Lists in one complete round: 2 sides x K rotations x the windows."""
        return 2 * len(self.cells) * self.n_windows

    @property
    def n_trials(self) -> int:
        return self.config.practice_trials + self.n_main + self.config.catch_trials

    def summary(self) -> dict[str, object]:
        """A JSON-able description for the admin page and ``experiment create``."""
        return {
            "pairs": list(self.pairs),
            "model_sets": list(self.model_sets),
            "conditions": list(self.config.conditions),
            "budgets": list(self.budgets),
            "cells": len(self.cells),
            "lists": self.n_lists,
            "photo_windows": self.n_windows,
            "usable_sources": len(self.sources),
            "excluded_sources": self.excluded_sources,
            "main_trials": self.n_main,
            "practice_trials": self.config.practice_trials,
            "catch_trials": self.config.catch_trials,
            "trials_per_participant": self.n_trials,
            "catch_categories": sorted(self.catch_pool),
            "lists_reusing_images": self.lists_reusing_images(),
        }

    def _source_usable(self, sha: str) -> bool:
        return all(self._images_for(cell, sha) is not None for cell in self.cells)

    def _images_for(self, cell: Cell, sha: str) -> tuple[StimulusRow, StimulusRow] | None:
        """(image toward the asked category, the other image) for one source, or None if missing."""
        toward = self.images.toward.get((sha, cell.pair, cell.eps, cell.model_set, cell.asked))
        if toward is None:
            return None
        # the toward image's pair_key carries its model set when the set has several
        other = self.images.trials.other(cell.condition, toward.pair_key, sha, cell.pair, cell.asked)
        return None if other is None else (toward, other)

    def list_factors(self, list_index: int) -> tuple[int, int, int]:
        """``(side, rotation, window)`` of a list; the side factor varies fastest, then the rotation."""
        if not 0 <= list_index < self.n_lists:
            raise InputError(f"list {list_index} does not exist (0..{self.n_lists - 1})")
        k = len(self.cells)
        return list_index % 2, (list_index // 2) % k, list_index // (2 * k)

    def window_sources(self, window: int) -> tuple[str, ...]:
        """The ``n_main`` photos of one window: consecutive in hash order, wrapping around."""
        n, s = self.n_main, len(self.sources)
        return tuple(self.sources[(window * n + j) % s] for j in range(n))

    def list_plan(self, list_index: int) -> dict[str, tuple[Cell, str]]:
        """Every main-trial photo of a list with its cell and the side of the image toward the asked category."""
        flip, rotation, window = self.list_factors(list_index)
        k = len(self.cells)
        plan: dict[str, tuple[Cell, str]] = {}
        for j, sha in enumerate(self.window_sources(window)):
            cell = self.cells[(j + rotation) % k]
            rank = j // k  # the photo's rank among the q photos of its cell
            plan[sha] = (cell, SIDES[(self.cell_parity[cell] + rank + flip) % 2])
        return plan

    def list_cells(self, list_index: int) -> dict[str, Cell]:
        """The Latin-square row: the cell of every photo shown in a main trial of list ``list_index``."""
        return {sha: cell for sha, (cell, _side) in self.list_plan(list_index).items()}

    # ------------------------------------------------------------------ one participant

    def _trial(self, kind: str, cell: Cell, sha: str, target_side: str) -> TrialSpec:
        images = self._images_for(cell, sha)
        assert images is not None
        toward, other = images
        other_target = other.target if other.condition == "adversarial" else ""
        sides = {target_side: (toward, cell.asked), ("right" if target_side == "left" else "left"): (other, other_target)}
        (left, left_target), (right, right_target) = sides["left"], sides["right"]
        return TrialSpec(
            kind=kind,
            condition=cell.condition,
            question=question_text(self.config.question, cell.asked),
            question_target=cell.asked,
            eps=cell.eps,
            source=self.images.source_name[sha],
            source_sha256=sha,
            pair_key=toward.pair_key,
            left_stimulus_id=left.stimulus_id,
            right_stimulus_id=right.stimulus_id,
            left_target=left_target,
            right_target=right_target,
            left_condition=left.condition,
            right_condition=right.condition,
            target_side=target_side,
            presentation_ms=self.config.presentation_ms,
            model_set=cell.model_set,
        )

    @staticmethod
    def _in_tiers(rng: random.Random, candidates: Sequence[str], tier: "Callable[[str], int]") -> list[str]:
        """The candidates shuffled within tiers, the lowest tier first (0: best)."""
        tiers: dict[int, list[str]] = defaultdict(list)
        for c in candidates:
            tiers[tier(c)].append(c)
        out: list[str] = []
        for level in sorted(tiers):
            rng.shuffle(tiers[level])
            out += tiers[level]
        return out

    def participant_trials(self, list_index: int, seed: int) -> list[TrialSpec]:
        """The full sequence (practice, then main and catch shuffled) for one participant."""
        rng = random.Random(seed)
        cell_order = {cell: i for i, cell in enumerate(self.cells)}
        plan = sorted(self.list_plan(list_index).items(), key=lambda item: (cell_order[item[1][0]], item[0]))
        main = [self._trial("main", cell, sha, side) for sha, (cell, side) in plan]
        used = {sha for sha, _ in plan}
        shown = {sid for t in main for sid in (t.left_stimulus_id, t.right_stimulus_id)}
        catch, catch_used = self._catch_trials(rng, used, shown)
        practice = self._practice_trials(rng, used | catch_used, shown)
        body = main + catch
        rng.shuffle(body)
        return practice + body

    def reused_images(self, list_index: int, seed: int = 0) -> int:
        """Catch and practice images of one list that a main trial of the list shows too.

        Such an image links trials: an image that appears in a catch trial and in a main trial
        is a clean photo, which gives away the other side of a ``vs_clean`` trial. Selection
        avoids it whenever the set has images to spare (:meth:`_catch_trials`); this counts
        what it could not avoid.
        """
        trials = self.participant_trials(list_index, seed)
        main = {sid for t in trials if t.kind == "main" for sid in (t.left_stimulus_id, t.right_stimulus_id)}
        extra = {sid for t in trials if t.kind != "main" for sid in (t.left_stimulus_id, t.right_stimulus_id)}
        return len(extra & main)

    def lists_reusing_images(self, max_lists: int = 64) -> int:
        """How many of the first ``max_lists`` lists show a main trial's image again in a catch or practice trial."""
        return sum(self.reused_images(i) > 0 for i in range(min(self.n_lists, max_lists)))

    def _catch_trials(self, rng: random.Random, used: set[str], shown: set[str]) -> tuple[list[TrialSpec], set[str]]:
        """Two confident clean images of different categories per trial; the asked one's side alternates.

        Images come, in this order of preference, from photos no main trial uses, then from
        clean photos no main trial of the list shows (one not yet in a catch trial first), and
        only then from the rest.
        """
        catch: list[TrialSpec] = []
        categories = sorted(self.catch_pool)
        catch_used: set[str] = set(used)
        picked: set[str] = set()
        start = rng.randrange(2)
        for j in range(self.config.catch_trials):
            spare = [c for c in categories if any(r.stimulus_id not in shown for r in self.catch_pool[c])]
            chosen_categories = rng.sample(spare if len(spare) >= 2 else categories, 2)  # the asked one first
            asked = chosen_categories[0]
            chosen = []
            for category in chosen_categories:
                pool = {r.source_sha256: r for r in self.catch_pool[category]}

                def tier(sha: str) -> int:
                    if sha not in catch_used:
                        return 0
                    image = pool[sha].stimulus_id
                    return 3 if image in shown else 2 if image in picked else 1

                sha = self._in_tiers(rng, sorted(pool), tier)[0]
                catch_used.add(sha)
                picked.add(pool[sha].stimulus_id)
                chosen.append(pool[sha])
            toward, beside = chosen
            side = SIDES[(j + start) % 2]
            left, right = (toward, beside) if side == "left" else (beside, toward)
            catch.append(
                TrialSpec(
                    kind="catch",
                    condition="catch",
                    question=question_text(self.config.question, asked),
                    question_target=asked,
                    eps=0,
                    source=left.source,
                    source_sha256=left.source_sha256,
                    pair_key="",
                    left_stimulus_id=left.stimulus_id,
                    right_stimulus_id=right.stimulus_id,
                    left_target=left.ensemble_category,
                    right_target=right.ensemble_category,
                    left_condition="clean",
                    right_condition="clean",
                    target_side=side,
                    presentation_ms=self.config.presentation_ms,
                )
            )
        return catch, catch_used

    def _practice_trials(self, rng: random.Random, avoid: set[str], shown: set[str]) -> list[TrialSpec]:
        """The first model set and trial type at the largest budget; asked category and side alternate.

        Photos come from those no other trial uses, then from those whose practice images no
        other trial of the list shows, and only then from the rest.
        """
        practice: list[TrialSpec] = []
        pair = self.pairs[0]
        a, b = pair.split(":", 1)
        start = rng.randrange(2)
        taken = set(shown)
        picked: set[str] = set()
        for j in range(self.config.practice_trials):
            cell = Cell(pair, self.config.conditions[0], max(self.budgets), (a, b)[j % 2], self.model_sets[0])

            def tier(sha: str) -> int:
                images = self._images_for(cell, sha)
                assert images is not None
                clash = any(row.stimulus_id in taken for row in images)
                return (3 if sha in picked else 0) + (0 if sha not in avoid else 2 if clash else 1)

            sha = self._in_tiers(rng, self.sources, tier)[0]
            picked.add(sha)
            trial = self._trial("practice", cell, sha, SIDES[(j + start) % 2])
            taken |= {trial.left_stimulus_id, trial.right_stimulus_id}
            practice.append(trial)
        return practice
