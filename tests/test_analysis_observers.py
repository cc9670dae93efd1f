"""Machine observers beside people (`advbias analyze --observers`) and the server-timing exclusions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis.observers import HUMAN_VS_MACHINE_COLUMNS, read_observers
from analysis.simulation import simulate_export
from advbias.cli import main as advbias
from advbias.observers import COLUMNS


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = simulate_export(24, 64, {2: 0.52, 16: 0.6}, eps=(2, 16), conditions=("targets", "vs_noise"),
                            n_images=16, seed=5)
    frame.attrs.clear()
    path = tmp_path_factory.mktemp("export") / "export.csv"
    frame.to_csv(path, index=False)
    return path


def _observers(path: Path) -> Path:
    rows = []
    for model, role, level in (("lite0", "attacked", 0.97), ("lite2", "held_out", 0.7)):
        for condition in ("targets", "vs_noise", "vs_flip"):
            for eps in (2, 16):
                bias = level if eps == 16 else 0.5 + (level - 0.5) / 4
                rows.append({"model": model, "role": role, "condition": condition, "eps": eps, "n_judgments": 32,
                             "bias": bias, "ci_low": bias - 0.1, "ci_high": min(bias + 0.1, 1.0)})
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False)
    return path


def test_observers_are_drawn_and_tabled_beside_people(export: Path, tmp_path: Path) -> None:
    observers = _observers(tmp_path / "observers.csv")
    out = tmp_path / "report"
    assert advbias(["analyze", str(export), "--out", str(out), "--observers", str(observers), "--quiet"]) == 0
    table = pd.read_csv(out / "human_vs_machine.csv")
    assert list(table.columns) == list(HUMAN_VS_MACHINE_COLUMNS)
    # Only what both answered: vs_flip is not in the export.
    assert set(zip(table["condition"], table["eps"])) == {("targets", 2), ("targets", 16), ("vs_noise", 2),
                                                         ("vs_noise", 16)}
    assert len(table) == 8 and table.groupby(["condition", "eps"])["role"].first().eq("held_out").all()
    people = pd.read_csv(out / "bias_by_eps.csv").set_index(["condition", "eps"])
    for row in table.itertuples(index=False):
        assert row.human_bias == pytest.approx(people.loc[(row.condition, row.eps), "bias"])
        assert row.machine_minus_human == pytest.approx(row.machine_bias - row.human_bias)
    svg = (out / "figures" / "bias_by_eps.svg").read_text()
    assert "lite2 (held-out), targets" in svg and "lite0 (attacked), vs_noise" in svg
    html = (out / "report.html").read_text()
    assert "People and machine observers" in html and "Machine observers (held-out models)" in html
    # The set's folder works as well as the file.
    again = tmp_path / "again"
    assert advbias(["analyze", str(export), "--out", str(again), "--observers", str(tmp_path), "--quiet"]) == 0
    assert (again / "human_vs_machine.csv").read_text() == (out / "human_vs_machine.csv").read_text()


def test_bad_observers_files_are_one_line_errors(export: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    good = pd.read_csv(_observers(tmp_path / "good.csv"))
    cases = {
        "missing.csv": None,
        "nocolumn.csv": good.drop(columns=["role"]),
        "badrole.csv": good.assign(role="teacher"),
        "badbias.csv": good.assign(bias=1.5),
        "text.csv": good.assign(eps="eight"),
    }
    for name, frame in cases.items():
        path = tmp_path / name
        if frame is not None:
            frame.to_csv(path, index=False)
        assert advbias(["analyze", str(export), "--out", str(tmp_path / "out"), "--observers", str(path),
                        "--quiet"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("advbias: error: ") and "\n" not in err, (name, err)
    with pytest.raises(ValueError, match="lacks the column"):
        read_observers(tmp_path / "nocolumn.csv")


def test_server_timing_flags_implausible_sessions(export: Path) -> None:
    df = analysis.load_export(export)
    ids = list(dict.fromkeys(df["participant"]))
    rng = np.random.default_rng(0)
    # An honest browser: the server sees the answer RT plus the inter-trial interval and network time.
    df["server_rt_ms"] = df["rt_ms"] + 1500.0 + rng.uniform(5, 60, len(df))
    bot, liar = ids[0], ids[1]
    df.loc[df["participant"] == bot, "server_rt_ms"] = rng.uniform(20, 80, int((df["participant"] == bot).sum()))
    liar_rows = (df["participant"] == liar) & (df["trial_index"] % 3 == 0)
    df.loc[liar_rows, "server_rt_ms"] = df.loc[liar_rows, "rt_ms"] - 400.0  # claims more time than elapsed
    df = analysis.validate_export(df)
    summary = analysis.participant_summary(df)
    reasons = summary.set_index("participant")["reason"]
    assert "median_server_rt<300ms" in reasons[bot]
    assert "rt_over_server>0.1" in reasons[liar]
    assert (reasons.drop([bot, liar]).str.contains("server") == False).all()  # noqa: E712
    assert summary["median_server_rt_ms"].notna().all()
    # Absent column: the rules are skipped (values NaN), nobody is flagged for them.
    plain = analysis.participant_summary(analysis.load_export(export).drop(columns=["server_rt_ms"]))
    assert plain["median_server_rt_ms"].isna().all() and not plain["reason"].str.contains("server").any()
    loose = analysis.ExclusionRules(min_median_server_rt_ms=0, max_rt_over_server_fraction=1)
    assert not analysis.participant_summary(df, loose)["reason"].str.contains("server").any()
