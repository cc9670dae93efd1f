"""Trial types: which two images each main trial compares, and the order they are listed in.

Every main trial shows the image perturbed toward the asked category beside one other image
of the same photo and budget; the trial type says which. This module is the one owner of that
rule (:data:`RULES`): the design (``experiment``), the machine observers (``stimuli observe``)
and the analysis (its tables are ordered by :data:`MAIN_TRIAL_TYPES`) all read it, so a new
control is one more :class:`TrialType` here (plus the images of its condition in the manifest).

How the other image is found (``match``):

* ``other_target``: the image of condition ``other`` with the same ``pair_key``, perturbed toward
  the pair's other category (``targets``);
* ``same_target``: the image of condition ``other`` with the same ``pair_key`` and the asked
  category as its target (``vs_flip``: the same perturbation turned upside down; ``vs_phase``: its
  phase-randomised control);
* ``pair``: the one image of condition ``other`` with the same ``pair_key`` (``vs_noise``);
* ``source``: the image of condition ``other`` of the same photo (``vs_clean``: the clean crop).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterable, Protocol, TypeVar


@dataclass(frozen=True)
class TrialType:
    """One main trial type: its name (the export's ``condition``) and how its other image is found."""

    name: str
    #: the manifest ``condition`` of the image shown beside the one perturbed toward the asked category
    other: str
    #: ``other_target`` | ``same_target`` | ``pair`` | ``source`` (see the module's docstring)
    match: str
    #: how the report's tables and figures describe it
    label: str


#: The main trial types, in their canonical order (tables, figures, contrasts, the design's cells).
RULES: tuple[TrialType, ...] = (
    TrialType("targets", "adversarial", "other_target", "A vs B, both perturbed"),
    TrialType("vs_clean", "clean", "source", "perturbed vs clean"),
    TrialType("vs_flip", "flip", "same_target", "perturbed vs flipped perturbation"),
    TrialType("vs_noise", "noise", "pair", "perturbed vs random noise"),
    TrialType("vs_phase", "phase", "same_target", "perturbed vs phase-randomised perturbation"),
)
BY_NAME: dict[str, TrialType] = {t.name: t for t in RULES}
#: The main trial types, in order: the values a study's ``conditions`` may take.
MAIN_TRIAL_TYPES: tuple[str, ...] = tuple(t.name for t in RULES)
#: Values of the export's ``condition`` column: the main trial types and ``catch``.
TRIAL_TYPES: tuple[str, ...] = MAIN_TRIAL_TYPES + ("catch",)
#: The manifest condition of the image shown beside the one perturbed toward the asked category.
OTHER_IMAGE: dict[str, str] = {t.name: t.other for t in RULES}
#: The trial type that shows an image of this manifest condition beside the perturbed one.
BY_OTHER: dict[str, str] = {t.other: t.name for t in RULES}
#: How the report's tables and figures name each trial type.
LABELS: dict[str, str] = {t.name: t.label for t in RULES}
_MATCHES = ("other_target", "same_target", "pair", "source")
assert all(t.match in _MATCHES for t in RULES)


def order_index(trial_type: str) -> int:
    """The position of a trial type in the canonical order (``catch`` and unknown names last)."""
    return MAIN_TRIAL_TYPES.index(trial_type) if trial_type in BY_NAME else len(MAIN_TRIAL_TYPES)


class _Image(Protocol):
    """What the rule needs of a manifest row (:class:`advbias.manifest.StimulusRow` has it)."""

    stimulus_id: str
    source_sha256: str
    condition: str
    pair: str
    target: str
    pair_key: str
    eps: int


Row = TypeVar("Row", bound=_Image)


class ImageIndex(Generic[Row]):
    """The images of a set, looked up the way the trial-type rules need them.

    Among duplicates (which a verified set has none of) the smallest ``stimulus_id`` wins, so
    the choice never depends on the order of the manifest's rows.
    """

    def __init__(self, rows: Iterable[Row]) -> None:
        self._by_target: dict[tuple[str, str, str], Row] = {}
        self._by_pair: dict[tuple[str, str], Row] = {}
        self._by_source: dict[tuple[str, str], Row] = {}
        self.conditions: set[str] = set()
        for row in sorted(rows, key=lambda r: r.stimulus_id):
            self.conditions.add(row.condition)
            if row.pair_key:
                self._by_target.setdefault((row.condition, row.pair_key, row.target), row)
                self._by_pair.setdefault((row.condition, row.pair_key), row)
            else:
                self._by_source.setdefault((row.condition, row.source_sha256), row)

    def toward(self, pair_key: str, asked: str) -> Row | None:
        """The image of one photo, pair and budget perturbed toward the asked category."""
        return self._by_target.get(("adversarial", pair_key, asked))

    def other(self, trial_type: str, pair_key: str, source_sha256: str, pair: str, asked: str) -> Row | None:
        """The image shown beside ``toward(pair_key, asked)`` in a trial of ``trial_type`` (None if absent)."""
        rule = BY_NAME[trial_type]
        if rule.match == "source":
            return self._by_source.get((rule.other, source_sha256))
        if rule.match == "pair":
            return self._by_pair.get((rule.other, pair_key))
        a, _, b = pair.partition(":")
        target = (b if asked == a else a) if rule.match == "other_target" else asked
        return self._by_target.get((rule.other, pair_key, target))

    def supports(self, trial_type: str) -> bool:
        """Whether the set has any image of the condition the trial type shows beside the perturbed one."""
        return BY_NAME[trial_type].other in self.conditions
