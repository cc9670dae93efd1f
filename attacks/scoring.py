"""Scoring and saving what the engine made: 8-bit rounding within budget, class probabilities.

Kept apart from the engine (:mod:`attacks.pgd`) because every stage that reads images scores
them (the generator, the transfer benchmark, machine observers) while only one attacks.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .targets import categories, target_spec


def quantize(x_adv: torch.Tensor, x_clean: torch.Tensor, eps_levels: int | torch.Tensor) -> torch.Tensor:
    """Round adversarial images to uint8 with ``|delta| <= eps_levels`` exactly, clipped to [0, 255].

    ``x_clean`` is the uint8 original (or float k/255). The perturbation is rounded to whole
    levels *and then* clipped to the budget, so rounding can never push it over; pixels that
    the float attack moved by e.g. 7.6 of 8 levels become 8, and 8.0000001 becomes 8.
    """
    if x_clean.dtype == torch.uint8:
        base = x_clean.to(torch.int16)
    else:
        base = torch.round(x_clean.float() * 255).to(torch.int16)
    if x_adv.shape != base.shape:
        raise ValueError(f"shapes differ: adversarial {tuple(x_adv.shape)} vs clean {tuple(base.shape)}")
    n = base.shape[0]
    if isinstance(eps_levels, torch.Tensor):
        e = eps_levels.to(torch.int16).flatten()
        e = e.expand(n) if e.numel() == 1 else e
    else:
        e = torch.full((n,), int(eps_levels), dtype=torch.int16)
    if (e < 0).any() or (e > 255).any():
        raise ValueError("eps_levels must lie in 0..255")
    e = e.to(base.device).view(-1, 1, 1, 1)
    delta = torch.round(x_adv.detach().float() * 255 - base.float()).to(torch.int16)
    delta = torch.maximum(torch.minimum(delta, e), -e)
    return (base + delta).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Logits in fixed batches, on the model's device and in the layout :func:`prepare_model` gave it."""
    param = next(model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    layout = getattr(model, "_advbias_layout", None)
    fmt = torch.channels_last if layout is not None and layout[1] else torch.contiguous_format
    outs = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(dev)
        xb = (xb.float() / 255 if xb.dtype == torch.uint8 else xb.float()).contiguous(memory_format=fmt)
        outs.append(model(xb).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, 1000)


def class_probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 1000) softmax probabilities on the CPU; uint8 images are read as k/255."""
    return batched_logits(model, x).softmax(dim=1)


def target_probability(model: nn.Module | None, x: torch.Tensor | None, target: torch.Tensor | Sequence[str | int],
                       *, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Probability of each sample's target (summed over a category's classes), (N,) on the CPU.

    ``probs``: the images' :func:`class_probabilities`, already computed, to score several
    targets (or take the top-1 too) with one forward pass; ``model`` and ``x`` are then unused.
    """
    if probs is None:
        probs = class_probabilities(model, x)
    spec = target_spec(target, probs.shape[0])
    return (probs * spec.mask.to(probs.dtype)).sum(dim=1)


def category_probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C) summed probabilities of each known category, columns in :func:`categories` order."""
    cats = categories()
    membership = torch.zeros(1000, len(cats))
    for j, idx in enumerate(cats.values()):
        membership[idx, j] = 1.0
    return class_probabilities(model, x) @ membership


def quantization_check(
    model: nn.Module,
    x_adv: torch.Tensor,
    x_clean: torch.Tensor,
    eps_levels: int | torch.Tensor,
    target: torch.Tensor | Sequence[str | int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantise and report the target probability before and after 8-bit rounding.

    Returns ``(uint8 images, prob_float, prob_uint8)``: rounding moves each pixel by at most
    half a level, which can lower the target probability a little; at small budgets (2 levels)
    it occasionally undoes the attack, which is why stimuli are checked on the saved files.
    """
    u8 = quantize(x_adv, x_clean, eps_levels)
    return u8, target_probability(model, x_adv, target), target_probability(model, u8, target)
