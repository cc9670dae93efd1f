"""``advbias stimuli verify``: prove that a set is what its manifest says.

Re-reads every file, trusting nothing that was computed when the set was built:

* the file's sha256 equals its name and its ``stimulus_id``;
* the PNG holds pixels only (IHDR, IDAT, IEND: no text, time, gamma or colour-profile chunks)
  and is 8-bit RGB at the set's size;
* the L-infinity distance to the clean crop of the same photo, recomputed from the pixels,
  equals the manifest's ``linf`` and is within ``eps``;
* the manifest is consistent: columns, conditions, targets within their pair, budgets and
  steps from ``set.json``, one clean row per photo, both halves of every trial pair and every
  control on every model set, ``model_set`` and ``pair_key`` values, no duplicate or missing rows,
  no stray files, counts as in ``set.json``.

Uses numpy and Pillow only, so it runs anywhere, without the models.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from advbias.manifest import IMAGE_CONDITIONS, TARGETED_CONDITIONS, pair_key, read_records
from advbias.setdir import IMAGES_DIR, SET_JSON_NAME, images_dir, read_set_json, require_finished
from stimuli.files import ALLOWED_PNG_CHUNKS, decode_png, png_chunks, sha256_bytes
from stimuli.params import recorded_model_sets


@dataclass
class VerifyResult:
    files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _float(row: dict[str, str], col: str) -> float | None:
    text = row.get(col, "")
    if text == "":
        return None
    return float(text)


def verify_set(setdir: Path) -> VerifyResult:
    """Check every file and row of the set in ``setdir``; problems are one line each."""
    setdir = require_finished(setdir, " (run generate again)")
    meta = read_set_json(setdir)
    design = _Design.of(meta["parameters"])
    result = VerifyResult()
    # The owner's rules for every row (identifiers, file names, conditions, pairs, budgets,
    # duplicates), each broken rule listed as a problem; the checks below add the rest.
    rows = read_records(setdir, on_problem=result.problems.append)
    if all(not r["model_set"] for r in rows) and len(design.model_sets) == 1:
        design = replace(design, model_sets=("",))  # a manifest from before model sets
    by_source = _check_rows(rows, design, result.problems.append)
    _check_structure(by_source, design, result.problems.append)
    _check_files(setdir, by_source, design.size, result)
    _check_folder(setdir, rows, by_source, meta, result.problems.append)
    return result


@dataclass(frozen=True)
class _Design:
    """The parameters of set.json that every row must agree with."""

    size: int
    pairs: list[tuple[str, ...]]
    eps: set[int]
    steps: int
    controls: set[str]
    has_holdout: bool
    model_sets: tuple[str, ...]

    @classmethod
    def of(cls, params: dict[str, Any]) -> "_Design":
        return cls(int(params["size"]), [tuple(p.split(":")) for p in params["pairs"]],
                   {int(e) for e in params["eps"]}, int(params["steps"]), set(params["controls"]),
                   bool(params["holdout"]), tuple(recorded_model_sets(params)))

    def key_set(self, model_set: str) -> str:
        """What a row's model set adds to its pair_key: its name when the set holds several model sets."""
        return model_set if len(self.model_sets) > 1 else ""


def _check_rows(rows: list[dict[str, str]], design: _Design, bad: Any) -> dict[str, list[tuple[int, dict[str, str]]]]:
    """Fields that can be checked row by row; returns the rows grouped by source photo."""
    by_source: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        where = f"manifest line {line}"
        if row["condition"] not in IMAGE_CONDITIONS:
            continue  # listed by the manifest's reader
        try:
            eps, linf, row_steps = int(row["eps"]), int(row["linf"]), int(row["steps"])
        except ValueError:
            bad(f"{where}: eps, linf and steps must be whole numbers")
            continue
        _check_design_fields(row, where, eps, row_steps, design, bad)
        if linf > eps:
            bad(f"{where}: linf {linf} exceeds eps {eps}")
        _check_scores(row, where, design.has_holdout, bad)
        by_source[row["source_sha256"]].append((line, row))
    return by_source


def _check_design_fields(row: dict[str, str], where: str, eps: int, row_steps: int, design: _Design, bad: Any) -> None:
    """Condition, pair, target, budget, steps and pair_key of one row against the design."""
    cond, pair, target, key = row["condition"], row["pair"], row["target"], row["pair_key"]
    if cond == "clean":
        if eps != 0 or pair or target or key or row_steps != 0 or row["model_set"]:
            bad(f"{where}: a clean row must have eps 0, steps 0 and no pair, target, pair_key or model_set")
        return
    if row["model_set"] not in design.model_sets:
        bad(f"{where}: model_set {row['model_set']!r} is not one of the set's ({', '.join(design.model_sets)})")
    if cond not in ("adversarial",) and cond not in design.controls:
        bad(f"{where}: condition {cond} was not requested (controls: {','.join(sorted(design.controls)) or 'none'})")
    if tuple(pair.split(":")) not in design.pairs:
        bad(f"{where}: pair {pair!r} is not one of the set's pairs")
    if eps not in design.eps:
        bad(f"{where}: eps {eps} is not one of the set's budgets")
    a, _, b = pair.partition(":")
    expected_key = pair_key(row["source_sha256"], a, b, eps, design.key_set(row["model_set"]))
    if key != expected_key:
        bad(f"{where}: pair_key {key!r} should be {expected_key!r}")
    if cond == "noise":
        if target:
            bad(f"{where}: a noise row has no target")
    elif cond in TARGETED_CONDITIONS and target not in (a, b):
        bad(f"{where}: target {target!r} is not part of its pair {pair!r}")
    want_steps = design.steps if cond == "adversarial" else 0
    if row_steps != want_steps:
        bad(f"{where}: steps {row_steps} should be {want_steps}")


def _check_structure(by_source: dict, design: _Design, bad: Any) -> None:
    """One clean per photo, both halves of every pair_key, every budget and control."""
    for sha, items in by_source.items():
        cleans = [r for _, r in items if r["condition"] == "clean"]
        if len(cleans) != 1:
            bad(f"source {items[0][1]['source']}: {len(cleans)} clean rows (expected 1)")
        seen = Counter((r["model_set"], r["condition"], r["pair"], int(r["eps"] or 0), r["target"]) for _, r in items)
        wanted = [("adversarial", 0), ("adversarial", 1)]
        wanted += [(c, t) for c in ("flip", "phase") if c in design.controls for t in (0, 1)]
        wanted += [("noise", None)] if "noise" in design.controls else []
        for ms in design.model_sets:
            on = f" on model set {ms}" if ms else ""
            for a, b in design.pairs:
                for e in sorted(design.eps):
                    for cond, t in wanted:
                        toward = "" if t is None else (a, b)[t]
                        n = seen.get((ms, cond, f"{a}:{b}", e, toward), 0)
                        if n != 1:
                            what = f"{cond} toward {toward}" if toward else cond
                            bad(f"source {items[0][1]['source']}: {n} {what} rows for {a}:{b} at eps {e}{on} "
                                "(expected 1)")


def _check_files(setdir: Path, by_source: dict, size: int, result: VerifyResult) -> None:
    """Hash, chunks, pixels, and the budget measured against the clean crop."""
    bad = result.problems.append
    for sha, items in by_source.items():
        clean_px: np.ndarray | None = None
        clean_rows = [r for _, r in items if r["condition"] == "clean"]
        if len(clean_rows) == 1:
            clean_px = _check_file(setdir, clean_rows[0], size, result)
        for line, row in items:
            if row["condition"] == "clean":
                continue
            px = _check_file(setdir, row, size, result)
            if px is None or clean_px is None:
                continue
            measured = int(np.abs(px.astype(np.int16) - clean_px.astype(np.int16)).max())
            if measured != int(row["linf"]):
                bad(f"manifest line {line}: linf is {row['linf']} but the file differs from its clean crop by {measured}")
            if measured > int(row["eps"]):
                bad(f"{row['file']}: perturbation of {measured} levels exceeds its budget eps {row['eps']}")


def _check_folder(setdir: Path, rows: list[dict[str, str]], by_source: dict, meta: dict, bad: Any) -> None:
    """Nothing unlisted in the images folder, and the counts in set.json as the manifest has them."""
    listed = {r["file"] for r in rows}
    folder = images_dir(setdir)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            rel = f"{IMAGES_DIR}/{path.name}"
            if rel not in listed:
                bad(f"{rel}: file not listed in the manifest")
    counts = meta.get("counts") or {}
    actual = {"stimuli": len(rows), "sources": len(by_source)}
    for c in IMAGE_CONDITIONS:
        actual[c] = sum(1 for r in rows if r["condition"] == c)
    for k, v in actual.items():
        if k in counts and counts[k] != v:
            bad(f"{SET_JSON_NAME} counts {k} = {counts[k]} but the manifest has {v}")
    if not counts:
        bad(f"{SET_JSON_NAME} has no counts: the set was not finished (run generate again)")


def _check_scores(row: dict[str, str], where: str, has_holdout: bool, bad: Any) -> None:
    try:
        for col in ("ensemble_target_prob", "ensemble_top1_prob", "ensemble_category_prob", "holdout_target_prob"):
            v = _float(row, col)
            if v is not None and not 0.0 <= v <= 1.0 + 1e-6:
                bad(f"{where}: {col} {v} is not a probability")
        top1 = _float(row, "ensemble_top1")
        if top1 is None or not 0 <= top1 < 1000:
            bad(f"{where}: ensemble_top1 must be an ImageNet class index")
    except ValueError:
        bad(f"{where}: a probability or class column is not a number")
        return
    has_target = bool(row["target"])
    for col in ("ensemble_target_prob", "ensemble_success"):
        if bool(row[col]) != has_target:
            bad(f"{where}: {col} must be {'set' if has_target else 'empty'} for a {row['condition']} row")
    if row["ensemble_success"] not in ("", "0", "1"):
        bad(f"{where}: ensemble_success must be 0 or 1")
    for col in ("holdout_target_prob", "holdout_success"):
        if bool(row[col]) != (has_target and has_holdout):
            bad(f"{where}: {col} must be {'set' if has_target and has_holdout else 'empty'}")
    if bool(row["holdout_top1"]) != has_holdout:
        bad(f"{where}: holdout_top1 must be {'set' if has_holdout else 'empty'}")


def _check_file(setdir: Path, row: dict[str, str], size: int, result: VerifyResult) -> np.ndarray | None:
    """Hash, chunk and format checks for one file; returns its pixels when readable."""
    bad = result.problems.append
    path = setdir / row["file"]
    if not path.is_file():
        bad(f"{row['file']}: missing")
        return None
    data = path.read_bytes()
    result.files += 1
    digest = sha256_bytes(data)
    if digest != row["stimulus_id"] or path.stem != digest:
        bad(f"{row['file']}: sha256 is {digest[:16]}..., not its name (the file was changed)")
    try:
        chunks = png_chunks(data)
    except ValueError as exc:
        bad(f"{row['file']}: not a valid PNG ({exc})")
        return None
    extra = sorted({c.decode("latin-1") for c in chunks} - {c.decode() for c in ALLOWED_PNG_CHUNKS})
    if extra:
        bad(f"{row['file']}: metadata chunks {', '.join(extra)} (only IHDR, IDAT, IEND are allowed)")
    bit_depth, colour_type = data[24], data[25]  # IHDR fields after signature, length, type, width, height
    if (bit_depth, colour_type) != (8, 2):
        bad(f"{row['file']}: PNG bit depth {bit_depth}, colour type {colour_type} (expected 8-bit RGB: 8, 2)")
    try:
        px = decode_png(data)
    except Exception as exc:  # Pillow raises many types for broken files
        bad(f"{row['file']}: unreadable ({exc})")
        return None
    if px.shape != (size, size, 3):
        bad(f"{row['file']}: {px.shape[1]}x{px.shape[0]} pixels, expected {size}x{size}")
        return None
    return px
