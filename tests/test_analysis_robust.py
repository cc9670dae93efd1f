"""The analysis never fails on a valid export (property-based, hypothesis).

Exports are drawn across the space a real study produces: one participant, one image,
one budget, all-0 and all-1 cells and images, separated budgets and trial types,
missing optional columns, NaN and extreme response times, odd list counts. Every
table, figure and the report must be written; where an estimate cannot be made the
report and stderr say so; when the exclusions leave nobody, ``exclusions.csv`` and a
report explaining why are written and the command exits non-zero with one line.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from advbias.cli import main as advbias
from advbias.export import COLUMNS, REQUIRED_COLUMNS
from analysis.report import NothingLeftError
from analysis.run import run_analysis
from analysis.simulation import simulate_export

#: Written by every analysis that has kept trials (figures are checked separately).
TABLES = ("primary", "bias_by_eps", "bias_by_condition", "contrasts", "trend", "bias_by_image", "bias_by_category",
          "bias_by_half", "participant_bias", "mixed_model", "mixed_model_fits", "exclusions", "exclusion_counts",
          "participants", "side_bias", "rt_by_eps", "warnings")
FIGURES = ("bias_by_eps", "participant_bias", "bias_by_image", "rt_by_eps")
OPTIONAL = tuple(c for c in COLUMNS if c not in REQUIRED_COLUMNS)
LENIENT = {"exclusions": {"min_catch_accuracy": 0.0, "min_rt_ms": 0.0, "require_completed": False,
                          "max_not_fullscreen_fraction": 1.0, "max_blurred_fraction": 1.0,
                          "min_median_server_rt_ms": 0.0, "max_rt_over_server_fraction": 1.0},
           "analysis": {"n_boot": 50}}


@st.composite
def exports(draw: st.DrawFn) -> pd.DataFrame:
    """An export a real (often small) study could produce, with the awkward cases over-represented."""
    n_participants = draw(st.integers(1, 5))
    conditions = draw(st.lists(st.sampled_from(("targets", "vs_clean", "vs_flip", "vs_noise")), min_size=1,
                               max_size=3, unique=True))
    eps = draw(st.lists(st.sampled_from((2, 4, 8, 16)), min_size=1, max_size=3, unique=True))
    frame = simulate_export(
        n_participants, draw(st.integers(1, 24)), bias=draw(st.sampled_from((0.5, 0.6, 0.9))),
        participant_sd=draw(st.sampled_from((0.0, 0.5))), image_sd=draw(st.sampled_from((0.0, 0.5))),
        eps=sorted(eps), conditions=conditions, n_images=draw(st.integers(1, 6)), n_catch=draw(st.integers(0, 3)),
        n_practice=draw(st.integers(0, 2)), incomplete=draw(st.sampled_from((0.0, 0.5))),
        seed=draw(st.integers(0, 10_000)))
    frame.attrs.clear()
    assume(len(frame) > 0)  # a study nobody answered has no export to analyse
    main = frame["kind"] == "main"
    for _ in range(draw(st.integers(0, 2))):
        what = draw(st.sampled_from(("cell", "image", "type", "everything")))
        value = draw(st.sampled_from((0, 1)))
        if what == "cell":  # a separated budget: every answer at one condition x budget the same
            row = frame[main].iloc[draw(st.integers(0, int(main.sum()) - 1))]
            hit = main & (frame["condition"] == row["condition"]) & (frame["eps"] == row["eps"])
        elif what == "image":  # an image always (or never) chosen
            hit = main & (frame["source"] == draw(st.sampled_from(sorted(frame["source"].unique()))))
        elif what == "type":  # a separated trial type
            hit = main & (frame["condition"] == draw(st.sampled_from(conditions)))
        else:
            hit = main
        frame.loc[hit, "chose_question_target"] = value
        frame.loc[hit, "response"] = np.where(value == 1, frame.loc[hit, "target_side"],
                                              np.where(frame.loc[hit, "target_side"] == "left", "right", "left"))
    rt = draw(st.sampled_from(("plain", "nan", "extreme")))
    if rt == "nan":
        frame.loc[frame.index[:: draw(st.integers(1, 3))], "rt_ms"] = math.nan
    elif rt == "extreme":
        frame.loc[frame.index[::2], "rt_ms"] = draw(st.sampled_from((0.0, 1e9)))
    if "list" in frame:
        frame["list"] = frame["list"] % draw(st.integers(1, 7))
    dropped = draw(st.lists(st.sampled_from(OPTIONAL), max_size=6, unique=True))
    return frame.drop(columns=dropped)


def _check_written(out: Path) -> None:
    for name in TABLES:
        assert (out / f"{name}.csv").is_file(), name
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 0, name
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Primary analysis" in html
    text = (out / "report.md").read_text(encoding="utf-8").split("Settings and software")[0]
    leaked = re.search(r".{0,60}\b(nan|NaN|inf|None)\b.{0,20}", text)
    assert leaked is None, leaked.group(0)


@settings(max_examples=24, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(frame=exports(), lenient=st.booleans(), fmt=st.sampled_from(("csv", "parquet")))
def test_every_valid_export_gives_a_report(frame: pd.DataFrame, lenient: bool, fmt: str,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("robust")
    path = folder / f"export.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
    out = folder / "out"
    config = LENIENT if lenient else {"analysis": {"n_boot": 50}}
    try:
        tables = run_analysis(path, out, config)
    except NothingLeftError as exc:
        assert str(exc).count("\n") == 0 and "exclusions.csv" in str(exc)
        excluded = pd.read_csv(out / "exclusions.csv")
        assert len(excluded) == frame["participant"].nunique()
        assert "Nothing left to analyse" in (out / "report.md").read_text(encoding="utf-8")
        return
    _check_written(out)
    kept = tables["participants"]
    if (~kept["excluded"]).sum() == 1:
        assert tables["warnings"]["warning"].str.contains("one participant").any()
