"""How a model answers a two-alternative forced-choice trial, and the interval on its answers.

The experiment asks "which image is more A-like?" of two images shown side by side. A
model answers it the way a participant would if it could only report its beliefs: it picks
the image to which it gives the higher probability of category A (summed over the
category's ImageNet classes, as :func:`attacks.target_probability`). A tie (equal
probabilities, e.g. two identical images) is half a pick of each, the expected value of a
coin flip, so that a model that cannot tell the images apart scores 0.5 exactly.
"""
from __future__ import annotations

import math

import torch


def choose(p_toward: torch.Tensor, p_other: torch.Tensor) -> torch.Tensor:
    """Per judgment: 1 when the image perturbed toward the asked category is picked, 0 when
    the other one is, 0.5 on a tie. Both arguments are the asked category's probability."""
    p_toward, p_other = torch.as_tensor(p_toward, dtype=torch.float64), torch.as_tensor(p_other, dtype=torch.float64)
    if p_toward.shape != p_other.shape:
        raise ValueError(f"shapes differ: {tuple(p_toward.shape)} vs {tuple(p_other.shape)}")
    return (p_toward > p_other).double() + 0.5 * (p_toward == p_other).double()


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval for a proportion (Wilson 1927): sound near 0 and 1, where the
    attacked models' answers lie, unlike the normal approximation. ``(nan, nan)`` for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamped (and exact at the ends, where float rounding leaves 1 - 1e-16) to [0, 1].
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high
