"""The reference backend: the same targeted L-inf PGD call, run through foolbox 3.

foolbox's ``LinfPGD`` with ``TargetedMisclassification`` is the community reference
(Rauber et al. 2017, 2020). It attacks one epsilon at a time, so a mixed batch is split
into groups of equal (eps, step size). It supports single-class targets with the
cross-entropy loss only; categories and the other losses are this package's own.
Used to validate :func:`attacks.linf_pgd` and as the benchmark baseline.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from .chunks import resolve_device
from .pgd import validate_attack
from .recipe import Recipe

from advbias.errors import InputError


def import_foolbox():
    """Import foolbox without its GitPython probe failing on machines without git.

    foolbox imports GitPython, which looks for a ``git`` executable at import time and
    refuses to load without one unless ``GIT_PYTHON_REFRESH`` is set; that variable is read
    from the environment and nowhere else. So this is one of the two documented places
    where product code writes the environment (docs/architecture.md): it sets
    ``GIT_PYTHON_REFRESH=quiet`` (unless already set) just before foolbox is imported,
    and every import of foolbox goes through here.
    """
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import foolbox

    return foolbox


def linf_pgd_foolbox(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | Sequence[str | int],
    eps: float | torch.Tensor,
    *,
    recipe: Recipe,
    device: str | torch.device = "auto",
) -> torch.Tensor:
    """foolbox ``LinfPGD`` toward single ImageNet classes; the arguments of :func:`attacks.linf_pgd`.

    Plain PGD only: the recipe's steps, step-size rule and random start; cross-entropy loss.
    """
    fb = import_foolbox()
    plain = Recipe(steps=recipe.steps, loss=recipe.loss, step_ratio=recipe.step_ratio, random_start=recipe.random_start)
    if recipe != plain or recipe.loss not in ("auto", "ce"):
        raise InputError("the foolbox backend runs plain PGD with cross-entropy only (no momentum, DI, TI or CFM)")
    spec, eps_t, step_t = validate_attack(x, target, eps, recipe)
    steps, random_start = recipe.steps, recipe.random_start
    if bool((spec.index < 0).any()):
        raise InputError("the foolbox backend supports single ImageNet classes only, not multi-class categories")
    dev = resolve_device(device)
    model.to(dev).eval()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=dev)
    out = torch.empty_like(x)
    pairs = torch.stack([eps_t, step_t], dim=1)
    for values in torch.unique(pairs, dim=0):
        idx = torch.nonzero((pairs == values).all(dim=1)).flatten()
        e, s = (float(v) for v in values)
        attack = fb.attacks.LinfPGD(abs_stepsize=s, steps=steps, random_start=random_start)
        criterion = fb.criteria.TargetedMisclassification(spec.index[idx].to(dev))
        _, clipped, _ = attack(fmodel, x[idx].to(dev), criterion, epsilons=e)
        out[idx] = clipped.to(x.device, x.dtype)
    return out


def imagenet_samples(size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """foolbox's 20 labelled ImageNet photos as (20, 3, size, size) uint8 and (20,) labels.

    Resized with Pillow's bicubic filter (as foolbox's own ``samples`` does); real photos,
    shipped with foolbox, so tests and benchmarks need no download.
    """
    import re
    from importlib import resources

    import numpy as np
    from PIL import Image

    fb = import_foolbox()
    folder = resources.files(fb).joinpath("data")
    files = sorted((f for f in folder.iterdir() if re.fullmatch(r"imagenet_\d+_\d+\.jpg", f.name)), key=lambda f: f.name)
    images, labels = [], []
    for f in files:
        with Image.open(f) as im:
            images.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
        labels.append(int(f.name.rsplit("_", 1)[1].split(".")[0]))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)
