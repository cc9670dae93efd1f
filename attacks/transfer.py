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
from .chunks import resolve_device
from .pgd import linf_pgd
from .recipe import DEFAULT_RECIPE, Recipe
from .scoring import batched_logits, quantize, target_probability
from .targets import resolve_target

from advbias.errors import InputError

BUNDLED_ORDER = ("lite0", "lite1", "lite2")


#: A recipe the benchmark can run: the engine's recipe and, optionally, relative weights of the attacked models
#: (in the order they are listed; None = equal).
@dataclass(frozen=True)
class Candidate:
    name: str
    recipe: Recipe
    weights: tuple[float, ...] | None = None


_OLD_DEFAULT = Recipe(steps=100, loss="logodds")
_LMD = Recipe(steps=100, loss="logit", momentum=1.0, input_diversity=0.7)  # logit + MI + DI, Madry steps


def _named(*items: tuple[str, Recipe] | Candidate) -> dict[str, Candidate]:
    out = [c if isinstance(c, Candidate) else Candidate(*c) for c in items]
    return {c.name: c for c in out}


#: Recipes from the engine's options and the targeted-transfer literature: logit loss (Zhao et al. 2021),
#: momentum (MI-FGSM, Dong et al. 2018), input diversity (DI, Xie et al. 2019; RDI, Zou et al. 2020),
#: translation-invariant smoothing (TI, Dong et al. 2019), Clean Feature Mixup (CFM, Byun et al. 2023),
#: larger and more steps, finishing steps on the models as they are, model weights. Every step size follows
#: the recipe's one rule (:meth:`Recipe.step_fraction`): ``s8`` is eps / 8 per step, as the transfer
#: literature uses (2/255 at 16/255), instead of Madry's 2.5 * eps / steps.
_S8_200 = Recipe(steps=200, loss="logit", step_ratio=0.125, momentum=1.0, input_diversity=0.7, ti_kernel=5)
RECIPES: dict[str, Candidate] = _named(
    ("logodds", _OLD_DEFAULT),
    ("logit-mi-di", _LMD),
    ("logit-mi-di-ti5", _LMD.but(ti_kernel=5)),
    ("logodds-mi-di", _LMD.but(loss="logodds")),
    ("logodds-mi-di-ti5", _LMD.but(loss="logodds", ti_kernel=5)),
    ("logit-mi-di-ti5-200", _LMD.but(ti_kernel=5, steps=200)),
    Candidate("logit-mi-di-ti5-w12", _LMD.but(ti_kernel=5), (1.0, 2.0)),
    ("logit-mi-di-200", _LMD.but(steps=200)),
    ("logit-mi-di-ti7", _LMD.but(ti_kernel=7)),
    ("logit-mi-di-s8", _LMD.but(step_ratio=0.125)),
    ("logit-mi-di-ti5-s8", _LMD.but(ti_kernel=5, step_ratio=0.125)),
    ("logodds-mi-di-ti5-s8", _LMD.but(loss="logodds", ti_kernel=5, step_ratio=0.125)),
    ("logit-mi-di-ti5-s8-200", _S8_200),
    # Clean Feature Mixup on top of the previous default; the authors' settings (mix probability 0.1,
    # weights up to 0.75), with DI at 0.7 or at the authors' 1.0, with or without 20 finishing steps.
    ("cfm", _S8_200.but(cfm_prob=0.1)),
    ("cfm-di1", _S8_200.but(cfm_prob=0.1, input_diversity=1.0)),
    ("cfm-f20", _S8_200.but(cfm_prob=0.1, finish_steps=20)),
    ("cfm-di1-f20", _S8_200.but(cfm_prob=0.1, input_diversity=1.0, finish_steps=20)),
    ("cfm-rdi-di1-f20", _S8_200.but(cfm_prob=0.1, input_diversity=1.0, resize_back=True, finish_steps=20)),
    ("f20", _S8_200.but(finish_steps=20)),
    ("cfm-di1-300-f20", _S8_200.but(cfm_prob=0.1, input_diversity=1.0, steps=300, finish_steps=20)),
)


def chosen() -> str:
    """The name of the benchmark's recipe that is the project's default (:data:`attacks.DEFAULT_RECIPE`)."""
    names = [name for name, c in RECIPES.items() if c.recipe == DEFAULT_RECIPE and c.weights is None]
    if not names:
        raise RuntimeError("the default recipe is none of the benchmark's recipes")
    return names[0]


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
    #: which photos (a group label; "" when all photos form one group)
    photos: str = ""
    #: attack seconds per image (all budgets cost the same: the same steps)
    seconds_per_image: float = 0.0


def parse_photos(spec: str) -> list[int]:
    """``"8-13"`` or ``"0,3,5"`` -> photo indices into foolbox's 20 samples."""
    out: list[int] = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        lo, _, hi = part.partition("-")
        try:
            rng = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise InputError(f"--photos: {part!r} is not an index or a range like 8-13") from None
        out.extend(rng)
    if not out or min(out) < 0 or max(out) > 19:
        raise InputError(f"--photos must pick indices 0..19 of the 20 sample photos, got {spec!r}")
    return sorted(set(out))


def splits(models: Sequence[str], heldout: Sequence[str] | None = None) -> list[tuple[tuple[str, ...], str]]:
    """Leave-one-out splits: (attacked models, held-out model), optionally only for the given held-out models."""
    models = list(models)
    if len(models) < 2:
        raise InputError("leave-one-model-out needs at least two models")
    keep = list(heldout) if heldout else models
    unknown = [m for m in keep if m not in models]
    if unknown:
        raise InputError(f"--heldout {unknown[0]} is not among --models {','.join(models)}")
    return [(tuple(m for m in models if m != h), h) for h in keep]


def _work(photos: torch.Tensor, targets: Sequence[str], eps_levels: Sequence[int]):
    """Every (budget, target, photo), as images, target names and budgets in levels."""
    items = [(e, t, i) for e in eps_levels for t in targets for i in range(photos.shape[0])]
    x = photos[[i for _, _, i in items]]
    return x, [t for _, t, _ in items], torch.tensor([e for e, _, _ in items]), items


def evaluate(candidate: Candidate, attacked: Sequence[torch.nn.Module], held: torch.nn.Module, photos: torch.Tensor,
             targets: Sequence[str], eps_levels: Sequence[int], *, device: torch.device, seed: int,
             progress=False, groups: dict[str, Sequence[int]] | None = None) -> list[Result]:
    """Attack ``photos`` with one recipe on the ``attacked`` models, score on ``held``; one Result per budget.

    ``groups``: label -> positions in ``photos``; the photos are attacked in one engine call and scored per
    group (e.g. the photos a recipe was chosen on and those it is confirmed on). Default: one group, all.
    """
    if candidate.weights is not None and len(candidate.weights) != len(attacked):
        raise InputError(f"recipe {candidate.name}: {len(candidate.weights)} weights for {len(attacked)} models")
    ens = Ensemble(list(attacked), candidate.weights).eval()
    x_u8, tnames, levels, items = _work(photos, targets, eps_levels)
    t0 = time.perf_counter()
    x_adv = linf_pgd(ens, x_u8.float() / 255, tnames, levels.float() / 255, recipe=candidate.recipe, seed=seed,
                     device=device, progress=progress)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    adv = quantize(x_adv.cpu(), x_u8, levels)
    ens_top, held_top = _top1(ens, adv), _top1(held, adv)
    held_p = target_probability(held, adv, tnames)
    a, b = targets[0], targets[1] if len(targets) > 1 else None
    names = ("+".join(getattr(m, "name", "?") for m in attacked), getattr(held, "name", "?"))
    options = {**candidate.recipe.to_dict(), "weights": candidate.weights}
    out = []
    for label, members in (groups or {"": range(photos.shape[0])}).items():
        keep = set(members)
        for e in eps_levels:
            idx = [j for j, it in enumerate(items) if it[0] == e and it[2] in keep]
            hit_e = [ens_top[j].item() in resolve_target(tnames[j]) for j in idx]
            hit_h = [held_top[j].item() in resolve_target(tnames[j]) for j in idx]
            bias = _pair_bias(held, adv, items, e, a, b, keep) if b is not None else float("nan")
            out.append(Result(candidate.name, *names, e, len(idx), sum(hit_e) / len(idx), sum(hit_h) / len(idx),
                              float(held_p[idx].mean()), bias, seconds, options, label,
                              seconds / len(items)))
    return out


def _top1(model: torch.nn.Module, u8: torch.Tensor) -> torch.Tensor:
    return batched_logits(model, u8).argmax(dim=1)


def _pair_bias(held, adv: torch.Tensor, items, e: int, a: str, b: str, keep: set[int]) -> float:
    """The held-out model's 2AFC bias on A-perturbed vs B-perturbed pairs at budget ``e``, both questions."""
    ia = [j for j, it in enumerate(items) if it[0] == e and it[1] == a and it[2] in keep]
    ib = [j for j, it in enumerate(items) if it[0] == e and it[1] == b and it[2] in keep]
    xa, xb = adv[ia], adv[ib]
    pa_on_a, pa_on_b = target_probability(held, xa, [a] * len(ia)), target_probability(held, xb, [a] * len(ib))
    pb_on_b, pb_on_a = target_probability(held, xb, [b] * len(ib)), target_probability(held, xa, [b] * len(ia))
    picks = torch.cat([choose(pa_on_a, pa_on_b), choose(pb_on_b, pb_on_a)])
    return float(picks.mean())


def run(*, recipes: Sequence[str], models: Sequence[str] = BUNDLED_ORDER, heldout: Sequence[str] | None = None,
        photos: Sequence[int] = tuple(range(8, 14)), confirm: Sequence[int] = (),
        targets: Sequence[str] = ("cat", "truck"), eps_levels: Sequence[int] = (2, 4, 8, 16), device: str = "cpu",
        seed: int = 0, threads: int | None = None, log=None) -> dict:
    """Run every recipe on every leave-one-out split; returns ``{"env": ..., "rows": [...]}``.

    ``confirm``: more photos, attacked in the same calls and reported apart (rows with ``photos`` =
    "confirm", the others "choose"), so that a recipe chosen on ``photos`` is confirmed on photos it was
    not chosen on at no extra start-up cost.
    """
    overlap = sorted(set(photos) & set(confirm))
    if overlap:
        raise InputError(f"--confirm photos {overlap} are also --photos; a recipe must be confirmed on other photos")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise InputError(f"unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    for t in targets:
        resolve_target(t)
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    u8, labels = imagenet_samples(224)
    order = list(photos) + list(confirm)
    pics = u8[order]
    groups = {"choose": range(len(photos)), "confirm": range(len(photos), len(order))} if confirm else None
    loaded = {m: load_model(m, device=dev) for m in models}
    rows: list[Result] = []
    from tqdm.auto import tqdm

    plan = [(r, s) for s in splits(models, heldout) for r in recipes]
    for name, (att, held) in tqdm(plan, desc="recipes", unit="run", file=log):
        work = pics.shape[0] * len(targets) * len(eps_levels) * RECIPES[name].recipe.steps
        bar = tqdm(total=work, desc=f"{name} {'+'.join(att)}->{held}", unit="img-step", file=log, leave=False)
        try:
            res = evaluate(RECIPES[name], [loaded[m] for m in att], loaded[held], pics, targets, eps_levels,
                           device=dev, seed=seed, progress=bar, groups=groups)
        finally:
            bar.close()
        rows += res
        if log is not None:
            print(to_markdown({"rows": [asdict(r) for r in res]}, header=False), file=log, flush=True)
    env = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "photos": list(photos), "confirm": list(confirm), "photo_labels": labels[order].tolist(),
        "targets": list(targets),
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
        lines += ["| recipe | photos | attacked -> held out | eps | ensemble success | held-out top-1 | "
                  "held-out target prob | held-out 2AFC bias | attack s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['recipe']} | {r.get('photos') or 'all'} | {r['attacked']} -> {r['held_out']} | {r['eps']}/255 | "
                     f"{r['ensemble_success']:.0%} | {r['heldout_success']:.0%} | {r['heldout_prob']:.3f} | "
                     f"{r['heldout_bias']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(args) -> int:
    import sys

    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()] if args.recipes != "all" else list(RECIPES)
    eps = [int(e) for e in args.eps.split(",") if e.strip()]
    result = run(recipes=recipes, models=[m.strip() for m in args.models.split(",") if m.strip()],
                 heldout=[m.strip() for m in args.heldout.split(",") if m.strip()] or None,
                 photos=parse_photos(args.photos), confirm=parse_photos(args.confirm) if args.confirm else (),
                 targets=[t.strip() for t in args.targets.split(",") if t.strip()],
                 eps_levels=eps, device=args.device, seed=args.seed, threads=args.threads, log=sys.stderr)
    from .bench import publish

    return publish(result, to_markdown(result), args.out)
