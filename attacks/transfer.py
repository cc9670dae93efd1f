"""Transfer benchmark: do stimuli made on some models fool a model that was not attacked?

Leave-one-model-out over the bundled models: attack an ensemble of all but one, test the
one left out, every way round. Each *recipe* is a set of engine options (loss, steps,
momentum, input diversity, translation-invariant smoothing, model weights); every recipe
runs on the same photos, targets and budgets, and its images are rounded to 8 bits (as
stimuli are saved) before they are scored. Per budget it reports:

* ``ensemble_success``: share of images whose top-1 class under the attacked ensemble is in
  the target category (the attack did its job);
* ``heldout_success``: the same under the held-out model (top-1 targeted transfer);
* ``heldout_prob``: mean probability of the target category under the held-out model;
* ``heldout_bias``: the held-out model as a 2AFC observer (:mod:`attacks.judge`) of the
  experiment's main trial, A-perturbed vs B-perturbed copies of one photo, over both
  questions; 0.5 means it sees no difference;
* ``seconds``: wall time of the attack (all budgets and targets in one engine call).

The photos are foolbox's 20 labelled ImageNet validation photos, chosen by index, so that
a recipe can be chosen on some and confirmed on others (``docs/benchmarks.md``).
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from .foolbox_backend import imagenet_samples
from .judge import choose
from .models import Ensemble, load_model
from .pgd import _resolve_device, linf_pgd, quantize, target_probability
from .targets import resolve_target

BUNDLED_ORDER = ("lite0", "lite1", "lite2")


@dataclass(frozen=True)
class Recipe:
    """Engine options of one attack recipe (see :func:`attacks.linf_pgd`)."""

    name: str
    loss: str = "logodds"
    steps: int = 100
    momentum: float = 0.0
    input_diversity: float = 0.0
    ti_kernel: int = 0
    #: relative weight of each attacked model, in the order they are listed; None = equal
    weights: tuple[float, ...] | None = None
    #: step size as a fraction of eps; None = the engine's default, 2.5 * eps / steps (Madry et al. 2018)
    step_ratio: float | None = None

    def options(self) -> dict:
        return {"loss": self.loss, "steps": self.steps, "momentum": self.momentum,
                "input_diversity": self.input_diversity, "ti_kernel": self.ti_kernel, "step_ratio": self.step_ratio}


#: Recipes from the engine's options and the targeted-transfer literature: logit loss
#: (Zhao et al. 2021), momentum (MI-FGSM, Dong et al. 2018), input diversity (DI, Xie et al.
#: 2019), translation-invariant smoothing (TI, Dong et al. 2019), more steps, model weights.
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("logodds"),
    Recipe("logit-mi-di", loss="logit", momentum=1.0, input_diversity=0.7),
    Recipe("logit-mi-di-ti5", loss="logit", momentum=1.0, input_diversity=0.7, ti_kernel=5),
    Recipe("logodds-mi-di", loss="logodds", momentum=1.0, input_diversity=0.7),
    Recipe("logodds-mi-di-ti5", loss="logodds", momentum=1.0, input_diversity=0.7, ti_kernel=5),
    Recipe("logit-mi-di-ti5-200", loss="logit", steps=200, momentum=1.0, input_diversity=0.7, ti_kernel=5),
    Recipe("logit-mi-di-ti5-w12", loss="logit", momentum=1.0, input_diversity=0.7, ti_kernel=5, weights=(1.0, 2.0)),
    Recipe("logit-mi-di-200", loss="logit", steps=200, momentum=1.0, input_diversity=0.7),
    Recipe("logit-mi-di-ti7", loss="logit", momentum=1.0, input_diversity=0.7, ti_kernel=7),
    # Large steps, as the transfer literature uses them (e.g. 2/255 per step at eps 16/255: eps / 8),
    # instead of 2.5 * eps / steps: the perturbation keeps moving and explores the eps-ball.
    Recipe("logit-mi-di-s8", loss="logit", momentum=1.0, input_diversity=0.7, step_ratio=0.125),
    Recipe("logit-mi-di-ti5-s8", loss="logit", momentum=1.0, input_diversity=0.7, ti_kernel=5, step_ratio=0.125),
    Recipe("logodds-mi-di-ti5-s8", loss="logodds", momentum=1.0, input_diversity=0.7, ti_kernel=5, step_ratio=0.125),
    Recipe("logit-mi-di-ti5-s8-200", loss="logit", steps=200, momentum=1.0, input_diversity=0.7, ti_kernel=5,
           step_ratio=0.125),
)}


#: The recipe ``advbias stimuli generate`` uses by default (stimuli/params.py ``DEFAULT_RECIPE``),
#: chosen by this benchmark; the numbers and the reasoning are in docs/benchmarks.md, section "Transfer".
CHOSEN = "logit-mi-di-ti5-s8-200"


@dataclass
class Result:
    recipe: str
    attacked: str
    held_out: str
    eps: int
    n_images: int
    ensemble_success: float
    heldout_success: float
    heldout_prob: float
    heldout_bias: float
    seconds: float
    options: dict = field(default_factory=dict)


def parse_photos(spec: str) -> list[int]:
    """``"8-13"`` or ``"0,3,5"`` -> photo indices into foolbox's 20 samples."""
    out: list[int] = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        lo, _, hi = part.partition("-")
        try:
            rng = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise ValueError(f"--photos: {part!r} is not an index or a range like 8-13") from None
        out.extend(rng)
    if not out or min(out) < 0 or max(out) > 19:
        raise ValueError(f"--photos must pick indices 0..19 of the 20 sample photos, got {spec!r}")
    return sorted(set(out))


def splits(models: Sequence[str], heldout: Sequence[str] | None = None) -> list[tuple[tuple[str, ...], str]]:
    """Leave-one-out splits: (attacked models, held-out model), optionally only for the given held-out models."""
    models = list(models)
    if len(models) < 2:
        raise ValueError("leave-one-model-out needs at least two models")
    keep = list(heldout) if heldout else models
    unknown = [m for m in keep if m not in models]
    if unknown:
        raise ValueError(f"--heldout {unknown[0]} is not among --models {','.join(models)}")
    return [(tuple(m for m in models if m != h), h) for h in keep]


def _work(photos: torch.Tensor, targets: Sequence[str], eps_levels: Sequence[int]):
    """Every (budget, target, photo), as images, target names and budgets in levels."""
    items = [(e, t, i) for e in eps_levels for t in targets for i in range(photos.shape[0])]
    x = photos[[i for _, _, i in items]]
    return x, [t for _, t, _ in items], torch.tensor([e for e, _, _ in items]), items


def evaluate(recipe: Recipe, attacked: Sequence[torch.nn.Module], held: torch.nn.Module, photos: torch.Tensor,
             targets: Sequence[str], eps_levels: Sequence[int], *, device: torch.device, seed: int,
             progress=False) -> list[Result]:
    """Attack ``photos`` with one recipe on the ``attacked`` models, score on ``held``; one Result per budget."""
    if recipe.weights is not None and len(recipe.weights) != len(attacked):
        raise ValueError(f"recipe {recipe.name}: {len(recipe.weights)} weights for {len(attacked)} models")
    ens = Ensemble(list(attacked), recipe.weights).eval()
    x_u8, tnames, levels, items = _work(photos, targets, eps_levels)
    t0 = time.perf_counter()
    eps = levels.float() / 255
    step = None if recipe.step_ratio is None else eps * recipe.step_ratio
    x_adv = linf_pgd(ens, x_u8.float() / 255, tnames, eps, steps=recipe.steps, step_size=step, loss=recipe.loss,
                     momentum=recipe.momentum, input_diversity=recipe.input_diversity, ti_kernel=recipe.ti_kernel,
                     seed=seed, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    adv = quantize(x_adv.cpu(), x_u8, levels)
    ens_top = _top1(ens, adv)
    held_top = _top1(held, adv)
    held_p = target_probability(held, adv, tnames)
    out = []
    a, b = targets[0], targets[1] if len(targets) > 1 else None
    for e in eps_levels:
        idx = [j for j, it in enumerate(items) if it[0] == e]
        hit_e = [ens_top[j].item() in resolve_target(tnames[j]) for j in idx]
        hit_h = [held_top[j].item() in resolve_target(tnames[j]) for j in idx]
        bias = _pair_bias(held, adv, items, e, a, b) if b is not None else float("nan")
        out.append(Result(recipe.name, "+".join(getattr(m, "name", "?") for m in attacked), getattr(held, "name", "?"),
                          e, len(idx), sum(hit_e) / len(idx), sum(hit_h) / len(idx),
                          float(held_p[idx].mean()), bias, seconds, recipe.options() | {"weights": recipe.weights}))
    return out


def _top1(model: torch.nn.Module, u8: torch.Tensor) -> torch.Tensor:
    from .pgd import _batched_logits

    return _batched_logits(model, u8).argmax(dim=1)


def _pair_bias(held, adv: torch.Tensor, items, e: int, a: str, b: str) -> float:
    """The held-out model's 2AFC bias on A-perturbed vs B-perturbed pairs at budget ``e``, both questions."""
    ia = [j for j, it in enumerate(items) if it[0] == e and it[1] == a]
    ib = [j for j, it in enumerate(items) if it[0] == e and it[1] == b]
    xa, xb = adv[ia], adv[ib]
    pa_on_a, pa_on_b = target_probability(held, xa, [a] * len(ia)), target_probability(held, xb, [a] * len(ib))
    pb_on_b, pb_on_a = target_probability(held, xb, [b] * len(ib)), target_probability(held, xa, [b] * len(ia))
    picks = torch.cat([choose(pa_on_a, pa_on_b), choose(pb_on_b, pb_on_a)])
    return float(picks.mean())


def run(*, recipes: Sequence[str], models: Sequence[str] = BUNDLED_ORDER, heldout: Sequence[str] | None = None,
        photos: Sequence[int] = tuple(range(8, 14)), targets: Sequence[str] = ("cat", "truck"),
        eps_levels: Sequence[int] = (4, 8, 16), device: str = "cpu", seed: int = 0, threads: int | None = None,
        log=None) -> dict:
    """Run every recipe on every leave-one-out split; returns ``{"env": ..., "rows": [...]}``."""
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    for t in targets:
        resolve_target(t)
    dev = _resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    u8, labels = imagenet_samples(224)
    pics = u8[list(photos)]
    loaded = {m: load_model(m, device=dev) for m in models}
    rows: list[Result] = []
    from tqdm.auto import tqdm

    plan = [(r, s) for s in splits(models, heldout) for r in recipes]
    for name, (att, held) in tqdm(plan, desc="recipes", unit="run", file=log):
        work = pics.shape[0] * len(targets) * len(eps_levels) * RECIPES[name].steps
        bar = tqdm(total=work, desc=f"{name} {'+'.join(att)}->{held}", unit="img-step", file=log, leave=False)
        try:
            res = evaluate(RECIPES[name], [loaded[m] for m in att], loaded[held], pics, targets, eps_levels,
                           device=dev, seed=seed, progress=bar)
        finally:
            bar.close()
        rows += res
        if log is not None:
            print(to_markdown({"rows": [asdict(r) for r in res]}, header=False), file=log, flush=True)
    env = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "photos": list(photos), "photo_labels": labels[list(photos)].tolist(), "targets": list(targets),
        "eps": list(eps_levels), "seed": seed,
    }
    return {"env": env, "rows": [asdict(r) for r in rows]}


def to_markdown(result: dict, header: bool = True) -> str:
    lines = []
    if header:
        env = result.get("env", {})
        if env:
            lines += [f"Photos {env['photos']} (foolbox samples), targets {','.join(env['targets'])}, "
                      f"device {env['device']}, torch {env['torch']}, {env['threads']} threads.", ""]
        lines += ["| recipe | attacked -> held out | eps | ensemble success | held-out top-1 | "
                  "held-out target prob | held-out 2AFC bias | attack s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['recipe']} | {r['attacked']} -> {r['held_out']} | {r['eps']}/255 | "
                     f"{r['ensemble_success']:.0%} | {r['heldout_success']:.0%} | {r['heldout_prob']:.3f} | "
                     f"{r['heldout_bias']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(args) -> int:
    import sys

    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()] if args.recipes != "all" else list(RECIPES)
    eps = [int(e) for e in args.eps.split(",") if e.strip()]
    result = run(recipes=recipes, models=[m.strip() for m in args.models.split(",") if m.strip()],
                 heldout=[m.strip() for m in args.heldout.split(",") if m.strip()] or None,
                 photos=parse_photos(args.photos), targets=[t.strip() for t in args.targets.split(",") if t.strip()],
                 eps_levels=eps, device=args.device, seed=args.seed, threads=args.threads, log=sys.stderr)
    from .bench import publish

    return publish(result, to_markdown(result), args.out)
