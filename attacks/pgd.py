"""The batched targeted L-infinity PGD engine: what one step does, for every sample at once.

One call attacks every (image, target, budget) combination at once: ``target`` and ``eps`` are
per sample, so a stimulus set's whole workload is one tensor program rather than foolbox's loop
over epsilons. *What* the attack does is a :class:`attacks.recipe.Recipe` (loss, steps, step-size
rule, momentum, DI/RDI, TI, CFM); *how* it runs (device, chunk size, precision, layout, progress)
are the other arguments, and :mod:`attacks.chunks` plans them:

* bf16 autocast on CUDA, fp32 on CPU (bf16 gave no gain on the CPUs measured). The budget is exact
  whatever the precision, since projection happens in fp32.

Plain PGD (no momentum, diversity, smoothing or CFM) follows foolbox's ``LinfPGD`` to the operation
(sign of the gradient, step, ``x0 + clip(x - x0, -eps, eps)``, clip to [0, 1]) so that the two agree
pixel for pixel up to float summation order; see ``tests/test_attacks.py``.

The caller's model is left as it was: the engine puts it in its device and layout for the call and
puts the original tensors back afterwards (:func:`attacks.prepare_model` does it for good).
"""
from __future__ import annotations

import contextlib
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .chunks import ChunkPlan, hold_layout, prepare_model, resolve_device, restore_layout
from .methods import CleanFeatureMixup, gaussian_kernel, input_diversity, smooth
from .recipe import LOSSES, Recipe
from .targets import TargetSpec, target_spec

__all__ = ["LOSSES", "linf_pgd", "target_scores", "validate_attack"]


def _per_sample(value: float | torch.Tensor, n: int, what: str, *, upper: float | None = 1.0) -> torch.Tensor:
    """A float or (N,) tensor as a float32 (N,) tensor, validated to lie in (0, upper]."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu", torch.float32).flatten()
        if t.numel() == 1:
            t = t.expand(n).clone()
        elif t.numel() != n:
            raise ValueError(f"{what} must be a float or have one value per image ({n}), got {t.numel()}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        t = torch.full((n,), float(value), dtype=torch.float32)
    else:
        raise ValueError(f"{what} must be a float or a tensor, got {type(value).__name__}")
    if not torch.isfinite(t).all() or (t <= 0).any() or (upper is not None and (t > upper).any()):
        bound = f"(0, {upper}]" if upper is not None else "(0, inf)"
        raise ValueError(f"{what} must lie in {bound} (in [0, 1] image units, e.g. 8/255), got {t.min().item():.6g}..{t.max().item():.6g}")
    return t


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"images must be float in [0, 1], got dtype {x.dtype} (divide uint8 images by 255)")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise ValueError("images must lie in [0, 1]")


def validate_attack(x: torch.Tensor, target, eps, recipe: Recipe) -> tuple[TargetSpec, torch.Tensor, torch.Tensor]:
    """Check an attack's common arguments; returns per-sample targets, budgets and step sizes.

    The step size is ``eps * recipe.step_fraction()``: the recipe's one step-size rule.
    """
    if not isinstance(recipe, Recipe):
        raise ValueError(f"recipe must be an attacks.Recipe, got {type(recipe).__name__}")
    _check_images(x)
    n = x.shape[0]
    spec = target_spec(target, n)
    eps_t = _per_sample(eps, n, "eps")
    return spec, eps_t, eps_t * recipe.step_fraction()


def target_scores(logits: torch.Tensor, spec: TargetSpec, loss: str) -> torch.Tensor:
    """Per-sample objective that the attack *maximises*.

    * ``ce``: log-probability of the target (minus cross-entropy); for a category, of the
      category's summed probability.
    * ``logodds``: ``log sum_{i in c} exp(z_i) - log sum_{j not in c} exp(z_j)``: the
      category's log-odds, which keeps pushing after the category dominates.
    * ``logit``: the target logit (Zhao et al. 2021); for a category, the log-sum-exp of its logits.
    * ``auto``: ``logodds`` for samples whose target is a category, ``ce`` for single classes.
    """
    z = logits.float()
    neg = torch.finfo(z.dtype).min
    single = spec.index >= 0
    if loss in ("ce", "logit", "auto") and bool(single.all()) and (loss != "auto" or not bool(spec.is_category.any())):
        if loss == "logit":
            return z.gather(1, spec.index.view(-1, 1)).squeeze(1)
        # The very call foolbox makes (through eagerpy), so that both take the same float path.
        return -F.cross_entropy(z, spec.index, reduction="none")
    in_c = torch.logsumexp(z.masked_fill(~spec.mask, neg), dim=1)
    if loss == "logit":
        return in_c
    if loss == "ce":
        return in_c - torch.logsumexp(z, dim=1)
    out_c = torch.logsumexp(z.masked_fill(spec.mask, neg), dim=1)
    logodds = in_c - out_c
    if loss == "logodds":
        return logodds
    ce = in_c - torch.logsumexp(z, dim=1)
    return torch.where(spec.is_category, logodds, ce)


def _check_execution(precision: str, batch_size) -> None:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")


def linf_pgd(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | Sequence[str | int],
    eps: float | torch.Tensor,
    *,
    recipe: Recipe,
    seed: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int | str = "auto",
    precision: str = "auto",
    channels_last: bool = True,
    progress=False,
) -> torch.Tensor:
    """Targeted L-infinity PGD toward ``target`` for every image, each with its own budget.

    Args:
        model: maps [0, 1] NCHW images to (N, 1000) logits (see :func:`attacks.load_model`).
        x: clean images, float in [0, 1], shape (N, 3, H, W).
        target: (N,) ImageNet class indices, or N names (classes or categories).
        eps: budget in [0, 1] units (8/255 for 8 levels), a float or per-sample (N,) tensor.
        recipe: what the attack does (:class:`attacks.Recipe`; ``attacks.DEFAULT_RECIPE`` is the project's).
        seed: seeds the random start, input diversity and CFM's draws.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        batch_size: images per chunk, or ``auto`` to choose on the work (:class:`attacks.chunks.ChunkPlan`).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        channels_last: run in channels_last memory layout.
        progress: show a tqdm bar (True) or update the given tqdm bar, in image-steps.

    Returns:
        Adversarial images, float in [0, 1], same shape and device as ``x``, with
        ``|x_adv - x| <= eps`` per sample. Round them with :func:`attacks.quantize` before saving.
    """
    _check_execution(precision, batch_size)
    spec, eps_t, step_t = validate_attack(x, target, eps, recipe)
    n = x.shape[0]
    if n == 0:
        return x.clone()
    dev = resolve_device(device)
    autocast_dtype = torch.bfloat16 if (precision == "bf16" or (precision == "auto" and dev.type == "cuda")) else None
    gen = torch.Generator()  # private: the caller's global RNG state is left untouched
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    start = None
    if recipe.random_start:  # drawn once for all N on the CPU: independent of the chunking
        start = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps_t.view(-1, 1, 1, 1)
    key = (tuple(x.shape[1:]), str(dev), channels_last, autocast_dtype)
    chunks = ChunkPlan(n, recipe.steps, model, key, dev) if batch_size == "auto" else None
    bar, own_bar = progress, False
    if progress is True:
        from tqdm.auto import tqdm

        bar, own_bar = tqdm(total=n * recipe.steps, unit="img-step", desc="PGD", smoothing=0.1), True
    held = hold_layout(model)
    prepare_model(model, dev, channels_last)
    run = _Run(recipe, gen, dev, torch.channels_last if channels_last else torch.contiguous_format,
               autocast_dtype, bar or None)
    try:
        return _run_chunks(model, x, spec.to(dev), eps_t, step_t, start, chunks, batch_size, run)
    finally:
        restore_layout(model, held)
        if own_bar:
            bar.close()


class _Run:
    """One call's recipe and execution settings, shared by its chunks."""

    def __init__(self, recipe: Recipe, gen: torch.Generator, device: torch.device, fmt, autocast_dtype, bar) -> None:
        self.recipe, self.gen, self.device, self.fmt = recipe, gen, device, fmt
        self.autocast_dtype, self.bar = autocast_dtype, bar
        self.kernel = gaussian_kernel(recipe.ti_kernel) if recipe.ti_kernel else None

    def autocast(self):
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _run_chunks(model, x, spec, eps_t, step_t, start, chunks: ChunkPlan | None, batch_size, run: _Run) -> torch.Tensor:
    """The attack, chunk after chunk, at the sizes the plan gives (or ``batch_size``)."""
    n, out, lo = x.shape[0], torch.empty_like(x), 0
    while lo < n:
        size = chunks.next_size() if chunks is not None else batch_size
        hi = min(lo + size, n)
        timed = chunks is not None and chunks.timing and hi - lo == size
        adv, rate = _attack_chunk(model, x[lo:hi], spec[lo:hi], eps_t[lo:hi], step_t[lo:hi],
                                  None if start is None else start[lo:hi], run, timed=timed)
        out[lo:hi] = adv.to(x.device, x.dtype)
        if chunks is not None:
            chunks.record(size, rate if timed else None)
        lo = hi
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _attack_chunk(model, x, spec, eps, step, start, run: _Run, *, timed: bool = False) -> tuple[torch.Tensor, float | None]:
    """All steps for one chunk; with ``timed``, also its image-steps per second after the first step."""
    r, device = run.recipe, run.device
    x0 = x.to(device, torch.float32).contiguous(memory_format=run.fmt)
    eps_b = eps.to(device).view(-1, 1, 1, 1)
    step_b = step.to(device).view(-1, 1, 1, 1)
    xa = x0 if start is None else torch.clamp(x0 + start.to(device), 0.0, 1.0)
    velocity = torch.zeros_like(x0) if r.momentum > 0 else None
    t_first = None
    cfm = CleanFeatureMixup(model, r.cfm_prob, r.cfm_max, run.gen) if r.uses_cfm else contextlib.nullcontext()
    with cfm:
        if r.uses_cfm:
            cfm.record(x0, run.autocast_dtype)
        for k in range(r.steps):
            if timed and k == 1:
                _sync(device)
                t_first = time.perf_counter()
            plain = k >= r.steps - r.finish_steps  # the finishing steps attack the models as they are
            if r.uses_cfm:
                cfm.active = not plain
            xa = xa.detach().requires_grad_(True)
            diverse = r.input_diversity > 0 and not plain
            inp = input_diversity(xa, r.input_diversity, run.gen, r.resize_back) if diverse else xa
            with run.autocast():
                logits = model(inp)
            (grad,) = torch.autograd.grad(target_scores(logits, spec, r.loss).sum(), xa)
            with torch.no_grad():
                if run.kernel is not None and not plain:
                    grad = smooth(grad, run.kernel)
                if velocity is not None:
                    norm = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
                    velocity = r.momentum * velocity + grad / norm
                    grad = velocity
                xa = xa.detach() + step_b * grad.sign()
                # foolbox's projection, to the operation: x0 + clip(x - x0, -eps, eps), then clip to bounds.
                xa = x0 + torch.maximum(torch.minimum(xa - x0, eps_b), -eps_b)
                xa = xa.clamp(0.0, 1.0)
            if run.bar is not None:
                run.bar.update(x.shape[0])
    rate = None
    if t_first is not None:
        _sync(device)
        rate = x.shape[0] * (r.steps - 1) / max(time.perf_counter() - t_first, 1e-9)
    return xa.detach(), rate
