"""The transfer methods layered on PGD: input diversity (DI, RDI), gradient smoothing (TI), Clean Feature Mixup.

Each is an option of :class:`attacks.recipe.Recipe`; the engine (:mod:`attacks.pgd`) calls them.
They exist to make a perturbation found on some models move other models too:

* **DI** (Xie et al. 2019): each step, with probability p, the models see the image randomly resized
  and padded to 110%, so the perturbation cannot rely on exact pixel positions. **RDI** (Zou et al.
  2020) resizes that back to the image's size, so the models see their usual scale.
* **TI** (Dong et al. 2019): the gradient is smoothed with a Gaussian before momentum and sign, which
  favours smooth, translation-tolerant patterns.
* **CFM**, Clean Feature Mixup (Byun et al., "Introducing Competition to Boost the Transferability of
  Targeted Adversarial Examples through Clean Feature Mixup", CVPR 2023): forward hooks on the attacked
  models' convolutions and linear layers mix, at random layers of each forward pass, the current
  features with stored features of clean images (shuffled across the chunk), so the perturbation must
  win against competing clean evidence, as it must on a model it was not made on. Settings follow the
  authors' released configuration: each eligible layer mixes with probability ``cfm_prob`` (0.1), with
  weights uniform in ``[0, cfm_max]`` (0.75) per image and channel, on layers whose output side is at
  most a quarter of the input's (and on linear layers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def input_diversity(x: torch.Tensor, p: float, gen: torch.Generator, resize_back: bool = False) -> torch.Tensor:
    """DI-FGSM: with probability p, random resize then random pad to 110%; RDI also resizes back."""
    if p <= 0 or torch.rand((), generator=gen).item() >= p:
        return x
    h, w = x.shape[-2:]
    out_h, out_w = int(h * 1.1), int(w * 1.1)
    rnd = int(torch.randint(h, out_h, (), generator=gen))
    rnd_w = int(round(rnd * w / h))
    resized = F.interpolate(x, size=(rnd, rnd_w), mode="nearest")
    top = int(torch.randint(0, out_h - rnd + 1, (), generator=gen))
    left = int(torch.randint(0, max(out_w - rnd_w, 0) + 1, (), generator=gen))
    padded = F.pad(resized, (left, max(out_w - rnd_w - left, 0), top, out_h - rnd - top))
    return F.interpolate(padded, size=(h, w), mode="nearest") if resize_back else padded


def gaussian_kernel(size: int) -> torch.Tensor:
    """TI-FGSM's smoothing kernel: a ``size`` x ``size`` Gaussian over +/-3 sigma, sum 1.

    Returned as a depthwise (3, 1, size, size) convolution weight.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise ValueError(f"ti_kernel must be 0 (off) or an odd whole number >= 3, got {size!r}")
    x = torch.linspace(-3.0, 3.0, size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * x * x)
    k2 = torch.outer(k1, k1)
    k2 = (k2 / k2.sum()).to(torch.float32)
    return k2.expand(3, 1, size, size).contiguous()


def smooth(grad: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of the gradient with the TI kernel (translation-invariant attack)."""
    pad = kernel.shape[-1] // 2
    return F.conv2d(grad, kernel.to(grad.device, grad.dtype), padding=pad, groups=3)


class CleanFeatureMixup:
    """CFM's forward hooks on one model, for one chunk: ``record`` the clean features, then attack.

    Use as a context manager; the hooks are removed on exit, leaving the model as it was. Random
    draws come from the engine's generator, so a seeded attack stays reproducible.
    """

    def __init__(self, model: nn.Module, prob: float, max_mix: float, gen: torch.Generator) -> None:
        self.model, self.prob, self.max_mix, self.gen = model, float(prob), float(max_mix), gen
        self.layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.clean: dict[int, torch.Tensor] = {}
        self.recording = False
        self.active = True  #: False: the hooks leave every output as it is
        self.handles: list = []

    def __enter__(self) -> "CleanFeatureMixup":
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.clean = [], {}

    @torch.no_grad()
    def record(self, x: torch.Tensor, autocast_dtype: torch.dtype | None) -> None:
        """One forward pass of the clean chunk; keeps the outputs of the layers that will mix."""
        self.recording, self.clean = True, {}
        try:
            with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                self.model(x)
        finally:
            self.recording = False
        sides = [t.shape[-1] for t in self.clean.values() if t.dim() == 4]
        widest = max(sides, default=0)  # the stem's output: half the input's side
        # Layers at most a quarter of the input's side (the stem's half), as the reference's divisor of 4.
        self.clean = {i: t for i, t in self.clean.items() if t.dim() != 4 or 2 * t.shape[-1] <= widest}

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs, output):
            if self.recording:
                self.clean[index] = output.detach()
                return None
            clean = self.clean.get(index)
            if clean is None or not self.active or torch.rand((), generator=self.gen).item() >= self.prob:
                return None
            return self._mix(output, clean)
        return hook

    def _mix(self, output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        n, c = output.shape[0], output.shape[1]
        if clean.shape[0] != n:
            return output
        if clean.dim() == 4 and clean.shape[-2:] != output.shape[-2:]:  # DI without resizing back
            clean = F.interpolate(clean, size=output.shape[-2:], mode="nearest")
        perm = torch.randperm(n, generator=self.gen).to(output.device)
        weight = (torch.rand((n, c), generator=self.gen) * self.max_mix).to(output.device, output.dtype)
        weight = weight.view(n, c, *([1] * (output.dim() - 2)))
        return (1 - weight) * output + weight * clean[perm]
