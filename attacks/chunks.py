"""How the engine runs the work: device, memory layout and chunk sizes (not what the attack does).

* **memory layout**: channels_last, which oneDNN (CPU) and cuDNN (GPU) run faster for the
  depthwise/pointwise convolutions of EfficientNets (:func:`prepare_model`);
* **chunk size**: CPU caches favour small chunks (throughput drops past ~16 images), GPUs favour
  large ones. :class:`ChunkPlan` chooses on the real work, with no pass outside it;
  :func:`choose_chunk` times extra passes (the benchmarks use it to fix one size for every method).

Both remember their choice per model in one :class:`weakref.WeakKeyDictionary`, so a model that
is garbage-collected takes its entries with it, and a new model that happens to reuse a freed
model's memory address never inherits its chunk size (as a cache keyed by ``id(model)`` would).
"""
from __future__ import annotations

import time
import weakref

import torch
from torch import nn

from advbias.errors import InputError

#: model -> {(input shape without N, device, channels_last, autocast dtype): chunk size}
_CHUNK_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]]" = weakref.WeakKeyDictionary()

#: Per device type, the work (image-steps) from which trying chunk sizes on it can pay for the new
#: shapes' first steps; below it the usual best size runs (docs/benchmarks.md, first call).
_CHOOSE_FROM = {"cpu": 2_000, "cuda": 20_000}

#: Up to this many images run as one chunk without any choice (per device type).
_ONE_CHUNK = {"cpu": 16, "cuda": 64}


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; a CUDA request without CUDA is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available")
    return dev


def cached_chunk(model: nn.Module, key: tuple) -> int | None:
    """The chunk size chosen earlier for this model and key, if any."""
    return _CHUNK_CACHE.get(model, {}).get(key)


def remember_chunk(model: nn.Module, key: tuple, size: int) -> None:
    _CHUNK_CACHE.setdefault(model, {})[key] = size


def forget_chunks(model: nn.Module) -> None:
    """Drop every chunk size chosen for ``model`` (tests, or after changing the model in place)."""
    _CHUNK_CACHE.pop(model, None)


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move the model to the device and memory layout the engine runs in (in place, idempotent)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if getattr(model, "_advbias_layout", None) != (str(device), channels_last):
        model.to(device=device, memory_format=fmt)
        model.eval()
        model._advbias_layout = (str(device), channels_last)  # type: ignore[attr-defined]
    return model


def hold_layout(model: nn.Module) -> dict:
    """The model's tensors, training flag and layout tag as they are, to put back after the call."""
    return {
        "params": [(m, name, t) for m in model.modules() for name, t in m._parameters.items() if t is not None],
        "data": [t.data for m in model.modules() for t in m._parameters.values() if t is not None],
        "buffers": [(m, name, t) for m in model.modules() for name, t in m._buffers.items() if t is not None],
        "training": [(m, m.training) for m in model.modules()],
        "layout": getattr(model, "_advbias_layout", None),
    }


def restore_layout(model: nn.Module, held: dict) -> None:
    """Put back what :func:`hold_layout` saw, so the caller's model is left as it was."""
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
    out-of-memory). The answer is remembered per model, input shape, device and layout. Batches of
    up to 16 (CPU) or 64 (CUDA) images run as one chunk without calibration.
    """
    n = shape[0]
    if n <= _ONE_CHUNK.get(device.type, 64):
        return n  # small jobs: one chunk is near the best and calibrating would cost more than it saves
    key = (tuple(shape[1:]), str(device), channels_last, autocast_dtype)
    known = cached_chunk(model, key)
    if known is not None:
        return min(known, n)
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
    remember_chunk(model, key, best)
    return best


class ChunkPlan:
    """Chunk sizes for one call, chosen on the real work rather than by extra passes.

    Choosing costs something even on the real work: every new chunk shape pays for its kernel
    plans on its first step. So small jobs do not choose: up to 16 images (CPU) or 64 (CUDA)
    run as one chunk, and jobs under ``_CHOOSE_FROM`` image-steps run in chunks of the usual
    best size (8 on CPU, 256 on CUDA). Larger jobs run their first chunks at each candidate
    size in turn (CPU 8, 16; CUDA 64 .. 1024), timing every step after a chunk's first; the
    fastest per image-step takes the rest of the work and is remembered for the model and input
    shape for later calls.
    """

    def __init__(self, n: int, steps: int, model: nn.Module, key: tuple, device: torch.device) -> None:
        self.n, self.key, self.model = n, key, weakref.ref(model)
        cpu = device.type == "cpu"
        cands = (8, 16) if cpu else (64, 128, 256, 512, 1024)
        self.rates: dict[int, float] = {}
        self.best: int | None = cached_chunk(model, key)
        if n <= _ONE_CHUNK.get(device.type, 64):
            self.best = n
        elif self.best is None and (n * steps < _CHOOSE_FROM.get(device.type, 20_000) or steps < 3):
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
        model = self.model()
        if self.rates and model is not None:
            remember_chunk(model, self.key, best)
