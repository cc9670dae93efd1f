"""The stimulus manifest, ``SETDIR/manifest.csv``: the one file between ``stimuli`` and ``experiment``.

This module owns the format (``docs/manifest.md`` documents every column): the
column names and order, the image conditions, the ``pair_key`` rule, and the
validating reader that every consumer uses. ``stimuli`` writes rows with these
columns; ``experiment`` and the simulated participants read them through
:func:`read_manifest`. Plain ``csv`` only, so reading a set needs no torch.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

#: Manifest columns, in file order.
COLUMNS: tuple[str, ...] = (
    "stimulus_id",
    "file",
    "source",
    "source_sha256",
    "source_label",
    "condition",
    "pair",
    "target",
    "eps",
    "linf",
    "steps",
    "ensemble_target_prob",
    "ensemble_top1",
    "ensemble_top1_name",
    "ensemble_top1_prob",
    "ensemble_category",
    "ensemble_category_prob",
    "ensemble_success",
    "holdout_target_prob",
    "holdout_success",
    "holdout_top1",
    "holdout_top1_name",
    "pair_key",
)

#: The columns a reader cannot do without (the others are descriptive).
REQUIRED: tuple[str, ...] = (
    "stimulus_id", "file", "source", "source_sha256", "condition", "pair", "target", "eps", "pair_key",
    "ensemble_category", "ensemble_category_prob",
)

#: The values of the ``condition`` column (what an image is), in the order rows are sorted.
IMAGE_CONDITIONS: tuple[str, ...] = ("clean", "adversarial", "flip", "noise")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SOURCE_HASH = re.compile(r"^[0-9a-f]{16,64}$")


def pair_key(source_sha256: str, a: str, b: str, eps: int) -> str:
    """The key tying the A and B versions (and controls) of one photo, category pair and budget."""
    return f"{source_sha256[:16]}:{a}:{b}:{eps}"


@dataclass(frozen=True)
class StimulusRow:
    """One manifest row as the readers use it (the fields the design and the simulators need)."""

    stimulus_id: str
    source: str
    source_sha256: str
    condition: str
    pair: str = ""
    target: str = ""
    eps: int = 0
    pair_key: str = ""
    ensemble_category: str = ""
    ensemble_category_prob: float | None = None


def _parse_row(rec: dict[str, str], where: str) -> StimulusRow:
    """Validate one CSV record; ``ValueError`` names the row and the field."""
    sid = (rec["stimulus_id"] or "").strip()
    if not _HEX64.match(sid):
        raise ValueError(f"{where}: stimulus_id {sid!r} is not a 64-digit lowercase hex sha256")
    if rec["file"] != f"images/{sid}.png":
        raise ValueError(f"{where}: file {rec['file']!r} should be images/{sid}.png")
    cond = rec["condition"]
    if cond not in IMAGE_CONDITIONS:
        raise ValueError(f"{where}: condition {cond!r} is not one of {', '.join(IMAGE_CONDITIONS)}")
    try:
        eps = int(rec["eps"] or 0)
    except ValueError:
        raise ValueError(f"{where}: eps {rec['eps']!r} is not an integer") from None
    if not 0 <= eps <= 255:
        raise ValueError(f"{where}: eps {eps} is outside 0..255")
    pair = rec["pair"] or ""
    if pair and (pair.count(":") != 1 or "" in pair.split(":")):
        raise ValueError(f"{where}: pair {pair!r} is not of the form A:B")
    if cond != "clean" and not pair:
        raise ValueError(f"{where}: a {cond} image needs a pair")
    if cond in ("adversarial", "flip") and rec["target"] not in pair.split(":"):
        raise ValueError(f"{where}: target {rec['target']!r} is not one of the pair {pair!r}")
    prob_text = (rec["ensemble_category_prob"] or "").strip()
    try:
        prob = float(prob_text) if prob_text else None
    except ValueError:
        raise ValueError(f"{where}: ensemble_category_prob {prob_text!r} is not a number") from None
    sha = rec["source_sha256"] or ""
    if not _SOURCE_HASH.match(sha):
        raise ValueError(f"{where}: source_sha256 {sha!r} is not a hex digest")
    return StimulusRow(
        stimulus_id=sid, source=rec["source"] or "", source_sha256=sha, condition=cond, pair=pair,
        target=rec["target"] or "", eps=eps, pair_key=rec["pair_key"] or "",
        ensemble_category=rec["ensemble_category"] or "", ensemble_category_prob=prob,
    )


def read_manifest(setdir: Path | str) -> list[StimulusRow]:
    """Parse and validate ``SETDIR/manifest.csv``; ``ValueError`` names the bad row, in file order."""
    path = Path(setdir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{setdir} is not a stimulus set: {path.name} is missing")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
        rows: list[StimulusRow] = []
        seen: set[str] = set()
        for line, rec in enumerate(reader, start=2):
            row = _parse_row(rec, f"{path.name} line {line}")
            if row.stimulus_id in seen:
                raise ValueError(f"{path.name} line {line}: stimulus_id {row.stimulus_id} appears twice")
            seen.add(row.stimulus_id)
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows
