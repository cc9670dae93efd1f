"""`advbias simulate`: synthetic participants take a real study over HTTP, then the export is analysed.

The experiment is the real Flask app on a real SQLite file, served by werkzeug on a
free loopback port; the stimulus set is the real one from ``tests/conftest.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from scipy.stats import binomtest

import analysis
from analysis.participants import classify, load_stimuli, simulate_study
from advbias.errors import CLIError
from advbias.cli import main as advbias

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_synthetic_participants_over_http_then_analysis(
    app_server: str, make_experiment: Callable[..., str], stimulus_set: Path, db: Any, tmp_path: Path
) -> None:
    from experiment.export import write_export

    slug = make_experiment("rehearsal", conditions=["targets", "vs_noise"], practice_trials=2, catch_trials=2)
    truth = {2: 0.5, 16: 0.9}
    summary = simulate_study(slug, 16, truth, set_dir=stimulus_set, url=app_server, participant_sd=0.0, image_sd=0.0,
                             catch_accuracy=1.0, seed=3, concurrency=3)
    assert summary["statuses"] == {"completed": 16}
    assert summary["trials_answered"] == 16 * 12
    assert summary["truth"]["bias"] == {"targets:2": 0.5, "targets:16": 0.9, "vs_noise:2": 0.5,
                                        "vs_noise:16": 0.9}

    export = tmp_path / "export.parquet"
    assert write_export(db, slug, export) == 16 * 12
    df = analysis.load_export(export)
    assert df["participant"].nunique() == 16
    assert (df["participant_status"] == "completed").all()
    assert (df.loc[df["kind"] == "catch", "chose_question_target"] == 1).all()
    # The synthetic participants read each trial through the manifest exactly as the server planned it.
    manifest = load_stimuli(stimulus_set)
    for row in df.itertuples(index=False):
        view = {"index": row.trial_index, "practice": row.kind == "practice", "question": row.question,
                "left": f"/stimuli/{row.left_stimulus_id}.png", "right": f"/stimuli/{row.right_stimulus_id}.png"}
        assert classify(view, manifest) == (row.kind, row.condition, row.target_side, row.eps, row.source)
    # ... so the answers follow the truth. The server shuffles trials with its own randomness, so the check
    # is an exact binomial test per budget (64 trials each) at the 0.1% level, not a fixed number.
    main = df[df["kind"] == "main"]
    for eps, true in truth.items():
        outcomes = main.loc[main["eps"] == eps, "chose_question_target"]
        assert len(outcomes) == 64
        assert binomtest(int(outcomes.sum()), len(outcomes), true).pvalue > 0.001, (eps, outcomes.mean())
    assert main.loc[main["eps"] == 16, "chose_question_target"].mean() > main.loc[
        main["eps"] == 2, "chose_question_target"].mean()
    table = analysis.bias_by_eps(df)
    assert set(zip(table["condition"], table["eps"])) == {("targets", 2), ("targets", 16), ("vs_noise", 2),
                                                         ("vs_noise", 16)}

    # Synthetic participants answer as fast as the server replies: the default server-timing rule
    # (docs/analysis.md) sees through them and excludes every one ...
    assert advbias(["analyze", str(export), "--out", str(tmp_path / "default"), "--quiet"]) == 2
    # ... so their analysis turns that rule off, as a study of bots must.
    config = tmp_path / "analysis.toml"
    config.write_text("[exclusions]\nmin_median_server_rt_ms = 0\nmax_rt_over_server_fraction = 1\n")
    out = tmp_path / "report"
    assert advbias(["analyze", str(export), "--out", str(out), "--config", str(config), "--quiet"]) == 0
    assert (out / "report.html").stat().st_size > 0

    # The same seed resumes the same participants: nothing is answered twice.
    again = simulate_study(slug, 16, truth, set_dir=stimulus_set, url=app_server, seed=3, concurrency=2)
    assert again["statuses"] == {"completed": 16} and again["trials_answered"] == 0
    assert write_export(db, slug, tmp_path / "again.csv") == 16 * 12
    # The CSV and Parquet exports read back to the same trials.
    from_csv = analysis.load_export(tmp_path / "again.csv")
    for column in ("participant", "trial_index", "kind", "condition", "eps", "source", "target_side", "response",
                   "chose_question_target", "rt_ms", "fullscreen", "blur_events"):
        assert from_csv[column].tolist() == df[column].tolist(), column


def test_simulate_cli_and_its_errors(app_server: str, make_experiment: Callable[..., str], stimulus_set: Path,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slug = make_experiment("cli-study")
    truth_file = tmp_path / "truth.json"
    assert advbias(["simulate", slug, "--participants", "2", "--set", str(stimulus_set), "--url", app_server,
                    "--bias", "2:0.5,16:0.7", "--quiet", "--truth", str(truth_file)]) == 0
    out = capsys.readouterr().out
    assert "2 synthetic participants (2 completed)" in out and "targets:16 0.7" in out
    assert truth_file.stat().st_size > 0

    assert advbias(["simulate", "no-such-study", "--participants", "1", "--set", str(stimulus_set),
                    "--url", app_server, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advbias: error: experiment 'no-such-study' at http") and "HTTP 404" in err
    assert "\n" not in err

    # A budget the bias does not cover is refused before anything is answered wrongly.
    assert advbias(["simulate", slug, "--participants", "1", "--set", str(stimulus_set), "--url", app_server,
                    "--bias", "2:0.5", "--seed", "9", "--quiet"]) == 2
    assert "no value for condition 'targets' at eps 16" in capsys.readouterr().err

    with pytest.raises(FileNotFoundError):
        simulate_study(slug, 1, 0.6, set_dir=tmp_path, url=app_server)
    with pytest.raises(CLIError, match="cannot reach"):
        simulate_study(slug, 1, 0.6, set_dir=stimulus_set, url="http://127.0.0.1:9", timeout=0.5)
