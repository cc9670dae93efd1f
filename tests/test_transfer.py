"""The transfer benchmark (``advbias bench transfer``) on the bundled models, at a tiny size."""
from __future__ import annotations

import pytest
import torch

import attacks
from advbias.cli import main as cli_main
from attacks.foolbox_backend import imagenet_samples
from attacks import Recipe
from attacks.transfer import RECIPES, Candidate, evaluate, parse_photos, splits


def test_leave_one_model_out_splits_and_photo_ranges():
    assert splits(["lite0", "lite1", "lite2"]) == [(("lite1", "lite2"), "lite0"), (("lite0", "lite2"), "lite1"),
                                                   (("lite0", "lite1"), "lite2")]
    assert splits(["lite0", "lite1", "lite2"], ["lite2"]) == [(("lite0", "lite1"), "lite2")]
    assert parse_photos("8-10,3") == [3, 8, 9, 10]
    for bad in ("20", "x", "5-30", ""):
        with pytest.raises(ValueError, match="--photos"):
            parse_photos(bad)
    with pytest.raises(ValueError, match="not among --models"):
        splits(["lite0", "lite1"], ["lite2"])


def test_every_recipe_is_a_checked_recipe_and_the_names_are_unique():
    assert len({c.recipe for c in RECIPES.values() if c.weights is None}) == sum(
        c.weights is None for c in RECIPES.values())
    for candidate in RECIPES.values():
        assert isinstance(candidate.recipe, Recipe) and Recipe.from_dict(candidate.recipe.to_dict()) == candidate.recipe


def test_evaluate_reports_what_the_held_out_model_sees():
    """One photo, both targets, one budget: the numbers agree with the held-out model's own
    probabilities, and the 2AFC bias is the share of its picks of the perturbed image."""
    torch.set_num_threads(1)
    u8, _ = imagenet_samples(224)
    photos = u8[8:9]
    lite0, lite1 = attacks.load_model("lite0"), attacks.load_model("lite1")
    recipe = Recipe(loss="logit", steps=3, momentum=1.0, input_diversity=0.7, ti_kernel=5, step_ratio=0.5, cfm_prob=0.1)
    (res,) = evaluate(Candidate("tiny", recipe), [lite0], lite1, photos, ["cat", "truck"], [16],
                      device=torch.device("cpu"), seed=0)
    assert res.n_images == 2 and res.attacked == "lite0" and res.held_out == "lite1" and res.eps == 16
    assert 0 <= res.ensemble_success <= 1 and 0 <= res.heldout_success <= 1 and 0 <= res.heldout_prob <= 1
    assert res.heldout_bias in (0.0, 0.25, 0.5, 0.75, 1.0) and res.seconds > 0
    assert Recipe.from_dict({k: v for k, v in res.options.items() if k != "weights"}) == recipe


def test_cli_bad_recipe_is_one_line(capsys):
    assert cli_main(["bench", "transfer", "--recipes", "nope", "--photos", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown recipe 'nope'" in err[0]


def test_the_stimulus_default_is_the_recipe_the_benchmark_chose():
    """``advbias stimuli generate`` uses the recipe chosen by the transfer benchmark (docs/benchmarks.md): the
    same object, so the benchmark measured exactly what the generator makes."""
    from attacks.transfer import chosen
    from stimuli.params import make_params

    candidate = RECIPES[chosen()]
    assert candidate.recipe == attacks.DEFAULT_RECIPE and candidate.weights is None
    params = make_params("builtin", "cat:truck", "2,4", models="lite0", holdout=None, controls=None, size=224,
                         seed=0, limit=None, batch_size="auto", device="cpu")
    assert params.recipe == attacks.DEFAULT_RECIPE
