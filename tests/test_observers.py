"""Machine observers (``advbias stimuli observe``) on a real small stimulus set and the bundled models."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attacks
import stimuli
from advbias.cli import main as cli_main
from advbias.observers import COLUMNS
from stimuli.observe import observe_set

SET = dict(images="builtin", pairs=[("cat", "truck")], eps=[4, 16], steps=10, limit=2, batch_size=8,
           models=["lite0"], holdout=["lite1"], controls=("flip", "noise"), seed=0)


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> Path:
    """A set made on lite0 with enough steps to fool it, observed by lite0 (attacked) and lite1 (held out)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setdir = stimuli.generate_set(**SET, out=tmp_path_factory.mktemp("obs") / "set", progress=False).path
        observe_set(setdir, "lite0,lite1", device="cpu", progress=False)
    finally:
        torch.set_num_threads(old)
    return setdir


def _rows(setdir: Path) -> list[dict[str, str]]:
    with open(setdir / "observers.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_file_has_the_owners_columns_and_every_trial_type(observed):
    rows = _rows(observed)
    with open(observed / "observers.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    cells = {(r["model"], r["condition"], int(r["eps"])) for r in rows}
    assert cells == {(m, c, e) for m in ("lite0", "lite1") for c in ("targets", "vs_clean", "vs_flip", "vs_noise")
                     for e in (4, 16)}
    assert {r["model"]: r["role"] for r in rows} == {"lite0": "attacked", "lite1": "held_out"}
    # two photos x one pair x both asked categories
    assert {int(r["n_judgments"]) for r in rows} == {4}
    for r in rows:
        assert 0.0 <= float(r["ci_low"]) <= float(r["bias"]) <= float(r["ci_high"]) <= 1.0


def test_the_attacked_model_is_fooled_nearly_always(observed):
    mine = [r for r in _rows(observed) if r["model"] == "lite0" and r["condition"] == "targets"]
    assert all(float(r["bias"]) >= 0.75 for r in mine), mine
    assert float(next(r for r in mine if r["eps"] == "16")["bias"]) == 1.0


def _probability(model, setdir: Path, row: dict[str, str], category: str) -> float:
    px = np.array(Image.open(setdir / row["file"]).convert("RGB"))  # a writable copy for torch
    x = torch.from_numpy(px).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        p = model(x).softmax(dim=1)[0]
    return float(p[attacks.resolve_target(category)].sum())


@pytest.mark.parametrize("condition, other_kind", [("vs_noise", "noise"), ("vs_clean", "clean")])
def test_a_control_pair_gives_the_bias_computed_by_hand(observed, condition, other_kind):
    """The held-out model's bias against a control equals the share of pairs in which its own
    probabilities, computed here image by image, favour the perturbed image."""
    with open(observed / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    lite1 = attacks.load_model("lite1")
    picks = []
    for adv in (r for r in manifest if r["condition"] == "adversarial" and r["eps"] == "16"):
        if other_kind == "noise":
            other = next(r for r in manifest if r["condition"] == "noise" and r["pair_key"] == adv["pair_key"])
        else:
            other = next(r for r in manifest if r["condition"] == "clean" and r["source_sha256"] == adv["source_sha256"])
        p_toward = _probability(lite1, observed, adv, adv["target"])
        p_other = _probability(lite1, observed, other, adv["target"])
        picks.append(1.0 if p_toward > p_other else 0.0 if p_toward < p_other else 0.5)
    got = next(r for r in _rows(observed) if r["model"] == "lite1" and r["condition"] == condition and r["eps"] == "16")
    assert len(picks) == int(got["n_judgments"]) == 4
    assert float(got["bias"]) == pytest.approx(sum(picks) / len(picks), abs=1e-6)


def test_report_shows_the_observer_curves(observed, capsys):
    assert cli_main(["stimuli", "report", str(observed), "--gallery", "0"]) == 0
    html = (observed / "report.html").read_text()
    assert "<h2>Machine observers</h2>" in html and "data:image/png;base64," in html


def test_set_json_records_the_recipe(observed):
    import attacks

    meta = json.loads((observed / "set.json").read_text())
    expected = attacks.DEFAULT_RECIPE.but(steps=10).to_dict()
    recipe = {k: meta["parameters"][k] for k in expected}
    assert recipe == expected and attacks.Recipe.from_dict(recipe) == attacks.DEFAULT_RECIPE.but(steps=10)
    assert {k: meta["attack"][k] for k in recipe} == recipe


@pytest.mark.parametrize("args, message", [
    (["{missing}", "--models", "lite2"], "stimulus set folder not found"),
    (["{set}", "--models", "lite9"], "unknown model 'lite9'"),
    (["{set}", "--models", ","], "give at least one model"),
    (["{set}", "--models", "lite2,lite2"], "listed twice"),
    (["{empty}", "--models", "lite2"], "not a finished stimulus set"),
])
def test_bad_input_is_one_line(observed, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    before = (observed / "observers.csv").read_bytes()
    subs = {"missing": tmp_path / "nope", "set": observed, "empty": tmp_path / "empty"}
    argv = ["stimuli", "observe", *[a.format(**subs) for a in args], "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advbias: error: ") and message in err[0], err
    assert (observed / "observers.csv").read_bytes() == before
