"""The batched targeted L-infinity PGD engine.

One call attacks every (image, target, budget) combination at once: ``target``, ``eps``
and ``step_size`` are per sample, so a stimulus set's whole workload is one tensor
program rather than foolbox's loop over epsilons. The engine chooses how to run it:

* **memory layout**: channels_last, which oneDNN (CPU) and cuDNN (GPU) run faster for
  the depthwise/pointwise convolutions of EfficientNets;
* **chunk size**: CPU caches favour small chunks (throughput drops past ~16 images), GPUs
  favour large ones; with ``batch_size="auto"`` large jobs run their first chunks at candidate
  sizes and time them, and the rest of the work (and later calls on the same model and shape)
  uses the fastest; small jobs use the usual best size. Choosing costs no pass outside the
  work (:class:`_ChunkPlan`);
* **precision**: bf16 autocast on CUDA, fp32 on CPU (bf16 gave no gain on the CPUs measured).
  The budget is exact whatever the precision, since projection happens in fp32.

The update follows foolbox's ``LinfPGD`` to the operation (sign of the gradient, step,
``x0 + clip(x - x0, -eps, eps)``, clip to [0, 1]) so that the two agree pixel for pixel
up to float summation order; see ``tests/test_attacks.py``.

The caller's model is left as it was: the engine puts it in its device and layout for the
call and puts the original tensors back afterwards (:func:`prepare_model` does it for good).
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .targets import TargetSpec, categories, target_spec

LOSSES = ("auto", "ce", "logodds", "logit")
_CHUNK_CACHE: dict[tuple, int] = {}


def _resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return dev


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


def validate_attack(x: torch.Tensor, target, eps, steps: int, step_size) -> tuple[TargetSpec, torch.Tensor, torch.Tensor]:
    """Check an attack's common arguments; returns per-sample targets, budgets and step sizes."""
    _check_images(x)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    n = x.shape[0]
    spec = target_spec(target, n)
    eps_t = _per_sample(eps, n, "eps")
    step_t = 2.5 * eps_t / steps if step_size is None else _per_sample(step_size, n, "step_size", upper=None)
    return spec, eps_t, step_t


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


def _input_diversity(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """DI-FGSM (Xie et al. 2019): with probability p, random resize then random pad to 110%."""
    if p <= 0 or torch.rand((), generator=gen).item() >= p:
        return x
    h, w = x.shape[-2:]
    out_h, out_w = int(h * 1.1), int(w * 1.1)
    rnd = int(torch.randint(h, out_h, (), generator=gen))
    rnd_w = int(round(rnd * w / h))
    resized = F.interpolate(x, size=(rnd, rnd_w), mode="nearest")
    top = int(torch.randint(0, out_h - rnd + 1, (), generator=gen))
    left = int(torch.randint(0, max(out_w - rnd_w, 0) + 1, (), generator=gen))
    return F.pad(resized, (left, max(out_w - rnd_w - left, 0), top, out_h - rnd - top))


def gaussian_kernel(size: int) -> torch.Tensor:
    """TI-FGSM's smoothing kernel (Dong et al. 2019): a ``size`` x ``size`` Gaussian over +/-3 sigma, sum 1.

    Returned as a depthwise (3, 1, size, size) convolution weight.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise ValueError(f"ti_kernel must be 0 (off) or an odd whole number >= 3, got {size!r}")
    x = torch.linspace(-3.0, 3.0, size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * x * x)
    k2 = torch.outer(k1, k1)
    k2 = (k2 / k2.sum()).to(torch.float32)
    return k2.expand(3, 1, size, size).contiguous()


def _smooth(grad: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of the gradient with the TI kernel (translation-invariant attack)."""
    pad = kernel.shape[-1] // 2
    return F.conv2d(grad, kernel.to(grad.device, grad.dtype), padding=pad, groups=3)


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move the model to the device and memory layout the engine runs in (in place, idempotent)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if getattr(model, "_advbias_layout", None) != (str(device), channels_last):
        model.to(device=device, memory_format=fmt)
        model.eval()
        model._advbias_layout = (str(device), channels_last)  # type: ignore[attr-defined]
    return model


def _grad_step_time(model: nn.Module, shape: tuple, device: torch.device, chunk: int, fmt, autocast_dtype) -> float:
    x = torch.rand((chunk, *shape[1:]), generator=torch.Generator().manual_seed(0))
    x = x.to(device).contiguous(memory_format=fmt).requires_grad_(True)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        z = model(x)
    (g,) = torch.autograd.grad(z.float()[:, 0].sum(), x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return float(g.flatten()[0])


def choose_chunk(model: nn.Module, shape: tuple, device: torch.device, *, channels_last: bool = True,
                 autocast_dtype: torch.dtype | None = None) -> int:
    """Pick the chunk size with the highest image-steps per second, by timing the real model.

    Candidates are powers of two up to the batch (4..32 on CPU, 32..1024 on CUDA, shrinking on
    out-of-memory). The answer is cached per model, input shape, device and layout. Batches of
    up to 16 (CPU) or 64 (CUDA) images run as one chunk without calibration.
    """
    n = shape[0]
    if n <= (16 if device.type == "cpu" else 64):
        return n  # small jobs: one chunk is near the best and calibrating would cost more than it saves
    key = (id(model), tuple(shape[1:]), str(device), channels_last, autocast_dtype)
    if key in _CHUNK_CACHE:
        return min(_CHUNK_CACHE[key], n)
    base = (4, 8, 16, 32) if device.type == "cpu" else (32, 64, 128, 256, 512, 1024)
    candidates = sorted({c for c in base if c <= n} | ({n} if n < base[0] or n <= base[-1] else set()))
    if len(candidates) == 1:
        return candidates[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    best, best_rate = candidates[0], 0.0
    for chunk in candidates:
        try:
            _grad_step_time(model, shape, device, chunk, fmt, autocast_dtype)  # warm-up (allocator, oneDNN plans)
            reps = 2 if device.type == "cpu" else 5
            t0 = time.perf_counter()
            for _ in range(reps):
                _grad_step_time(model, shape, device, chunk, fmt, autocast_dtype)
            rate = chunk * reps / (time.perf_counter() - t0)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        if rate > best_rate * 1.03:  # prefer the smaller chunk unless clearly faster
            best, best_rate = chunk, rate
    _CHUNK_CACHE[key] = best
    return best


#: Per device type, the work (image-steps) from which trying chunk sizes on it can pay for the new
#: shapes' first steps; below it the usual best size runs (docs/benchmarks.md, first call).
_CHOOSE_FROM = {"cpu": 2_000, "cuda": 20_000}


class _ChunkPlan:
    """Chunk sizes for one call, chosen on the real work rather than by extra passes.

    Choosing costs something even on the real work: every new chunk shape pays for its kernel
    plans on its first step. So small jobs do not choose: up to 16 images (CPU) or 64 (CUDA)
    run as one chunk, and jobs under ``_CHOOSE_FROM`` image-steps run in chunks of the usual
    best size (8 on CPU, 256 on CUDA). Larger jobs run their first chunks at each candidate
    size in turn (CPU 8, 16; CUDA 64 .. 1024), timing every step after a chunk's first; the
    fastest per image-step takes the rest of the work and is cached per model and input shape
    for later calls.
    """

    def __init__(self, n: int, steps: int, key: tuple, device: torch.device) -> None:
        self.n, self.key = n, key
        cpu = device.type == "cpu"
        cands = (8, 16) if cpu else (64, 128, 256, 512, 1024)
        self.rates: dict[int, float] = {}
        self.best: int | None = None
        if n <= (16 if cpu else 64):
            self.best = n
        elif key in _CHUNK_CACHE:
            self.best = _CHUNK_CACHE[key]
        elif n * steps < _CHOOSE_FROM.get(device.type, 20_000) or steps < 3:
            self.best = 8 if cpu else 256
        self.todo = [c for c in cands if c <= n] if self.best is None else []

    @property
    def timing(self) -> bool:
        """Whether the next chunk is a trial whose steps should be timed."""
        return self.best is None and bool(self.todo)

    def next_size(self) -> int:
        if self.best is None and self.todo:
            return self.todo[0]
        if self.best is None:
            self._decide()
        return self.best  # type: ignore[return-value]

    def record(self, size: int, image_steps_per_s: float | None) -> None:
        if self.todo and size == self.todo[0]:
            self.todo.pop(0)
            if image_steps_per_s is not None:
                self.rates[size] = image_steps_per_s
            if not self.todo:
                self._decide()

    def _decide(self) -> None:
        best, best_rate = min(self.rates, default=8), 0.0
        for size in sorted(self.rates):
            if self.rates[size] > best_rate * 1.03:  # prefer the smaller chunk unless clearly faster
                best, best_rate = size, self.rates[size]
        self.best = best
        if self.rates:
            _CHUNK_CACHE[self.key] = best


def _hold_layout(model: nn.Module) -> dict:
    """The model's tensors, training flag and layout tag as they are, to put back after the call."""
    return {
        "params": [(m, name, t) for m in model.modules() for name, t in m._parameters.items() if t is not None],
        "data": [t.data for m in model.modules() for t in m._parameters.values() if t is not None],
        "buffers": [(m, name, t) for m in model.modules() for name, t in m._buffers.items() if t is not None],
        "training": [(m, m.training) for m in model.modules()],
        "layout": getattr(model, "_advbias_layout", None),
    }


def _restore_layout(model: nn.Module, held: dict) -> None:
    for (m, name, p), data in zip(held["params"], held["data"]):
        p.data = data
    for m, name, t in held["buffers"]:
        m._buffers[name] = t
    for m, flag in held["training"]:
        m.training = flag
    if held["layout"] is None:
        if hasattr(model, "_advbias_layout"):
            del model._advbias_layout
    else:
        model._advbias_layout = held["layout"]  # type: ignore[attr-defined]


def _check_options(loss: str, momentum: float, input_diversity: float, precision: str, batch_size) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    if not 0.0 <= float(input_diversity) <= 1.0:
        raise ValueError(f"input_diversity must lie in [0, 1], got {input_diversity}")
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
    steps: int,
    step_size: float | torch.Tensor | None = None,
    loss: str = "auto",
    random_start: bool = False,
    momentum: float = 0.0,
    input_diversity: float = 0.0,
    ti_kernel: int = 0,
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
        steps: number of gradient steps.
        step_size: per step, float or (N,); default ``2.5 * eps / steps`` (Madry et al. 2018).
        loss: ``auto`` | ``ce`` | ``logodds`` | ``logit`` (see :func:`target_scores`).
        random_start: start from a uniform point in the eps-ball.
        momentum: MI-FGSM decay (Dong et al. 2018); 0 disables it.
        input_diversity: DI-FGSM probability of a random resize-and-pad per step.
        ti_kernel: TI-FGSM (Dong et al. 2019): smooth the gradient with a Gaussian of this odd
            size (pixels, +/-3 sigma) before the sign and momentum; 0 disables it.
        seed: seeds the random start and input diversity.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        batch_size: images per chunk, or ``auto`` to calibrate on the model.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        channels_last: run in channels_last memory layout.
        progress: show a tqdm bar (True) or update the given tqdm bar, in image-steps.

    Returns:
        Adversarial images, float in [0, 1], same shape and device as ``x``, with
        ``|x_adv - x| <= eps`` per sample. Round them with :func:`quantize` before saving.
    """
    n = x.shape[0] if isinstance(x, torch.Tensor) else 0
    _check_options(loss, momentum, input_diversity, precision, batch_size)
    kernel = gaussian_kernel(ti_kernel) if ti_kernel != 0 else None
    spec, eps_t, step_t = validate_attack(x, target, eps, steps, step_size)
    if n == 0:
        return x.clone()
    dev = _resolve_device(device)
    autocast_dtype = torch.bfloat16 if (precision == "bf16" or (precision == "auto" and dev.type == "cuda")) else None
    gen = torch.Generator()  # private: the caller's global RNG state is left untouched
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    start = None
    if random_start:  # drawn once for all N on the CPU: independent of the chunking
        start = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps_t.view(-1, 1, 1, 1)

    key = (id(model), tuple(x.shape[1:]), str(dev), channels_last, autocast_dtype)
    chunks = _ChunkPlan(n, steps, key, dev) if batch_size == "auto" else None
    bar, own_bar = progress, False
    if progress is True:
        from tqdm.auto import tqdm

        bar, own_bar = tqdm(total=n * steps, unit="img-step", desc="PGD", smoothing=0.1), True
    held = _hold_layout(model)
    prepare_model(model, dev, channels_last)
    options = dict(steps=steps, loss=loss, momentum=float(momentum), input_diversity=float(input_diversity),
                   kernel=kernel, gen=gen, device=dev, fmt=torch.channels_last if channels_last else torch.contiguous_format,
                   autocast_dtype=autocast_dtype, bar=bar or None)
    try:
        return _run_chunks(model, x, spec.to(dev), eps_t, step_t, start, chunks, batch_size, options)
    finally:
        _restore_layout(model, held)
        if own_bar:
            bar.close()


def _run_chunks(model, x, spec, eps_t, step_t, start, chunks: _ChunkPlan | None, batch_size, options) -> torch.Tensor:
    """The attack, chunk after chunk, at the sizes the plan gives (or ``batch_size``)."""
    n, out, lo = x.shape[0], torch.empty_like(x), 0
    while lo < n:
        size = chunks.next_size() if chunks is not None else batch_size
        hi = min(lo + size, n)
        timed = chunks is not None and chunks.timing and hi - lo == size
        adv, rate = _attack_chunk(model, x[lo:hi], spec[lo:hi], eps_t[lo:hi], step_t[lo:hi],
                                  start=None if start is None else start[lo:hi], timed=timed, **options)
        out[lo:hi] = adv.to(x.device, x.dtype)
        if chunks is not None:
            chunks.record(size, rate if timed else None)
        lo = hi
    return out


def _attack_chunk(model, x, spec, eps, step, *, steps, loss, start, momentum, input_diversity, kernel, gen, device,
                  fmt, autocast_dtype, bar, timed: bool = False) -> tuple[torch.Tensor, float | None]:
    """All steps for one chunk; with ``timed``, also its image-steps per second after the first step."""
    x0 = x.to(device, torch.float32).contiguous(memory_format=fmt)
    eps_b = eps.to(device).view(-1, 1, 1, 1)
    step_b = step.to(device).view(-1, 1, 1, 1)
    xa = x0 if start is None else torch.clamp(x0 + start.to(device), 0.0, 1.0)
    velocity = torch.zeros_like(x0) if momentum > 0 else None
    t_first = None
    for k in range(steps):
        if timed and k == 1:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_first = time.perf_counter()
        xa = xa.detach().requires_grad_(True)
        inp = _input_diversity(xa, input_diversity, gen) if input_diversity > 0 else xa
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(inp)
        score = target_scores(logits, spec, loss).sum()
        (grad,) = torch.autograd.grad(score, xa)
        with torch.no_grad():
            if kernel is not None:
                grad = _smooth(grad, kernel)
            if velocity is not None:
                norm = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
                velocity = momentum * velocity + grad / norm
                grad = velocity
            xa = xa.detach() + step_b * grad.sign()
            # foolbox's projection, to the operation: x0 + clip(x - x0, -eps, eps), then clip to bounds.
            xa = x0 + torch.maximum(torch.minimum(xa - x0, eps_b), -eps_b)
            xa = xa.clamp(0.0, 1.0)
        if bar is not None:
            bar.update(x.shape[0])
    rate = None
    if t_first is not None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = x.shape[0] * (steps - 1) / max(time.perf_counter() - t_first, 1e-9)
    return xa.detach(), rate


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
def _batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
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
    return _batched_logits(model, x).softmax(dim=1)


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
