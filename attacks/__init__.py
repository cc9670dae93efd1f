"""Models, targets and the batched targeted L-infinity PGD engine.

>>> import attacks
>>> ens = attacks.load_ensemble(["lite0", "lite1"])
>>> x_adv = attacks.linf_pgd(ens, x, ["cat"] * len(x), eps=8 / 255, recipe=attacks.DEFAULT_RECIPE)
>>> u8 = attacks.quantize(x_adv, x_uint8, 8)   # saved images keep |delta| <= 8 levels

Names are imported on first use (PEP 562), so that ``import attacks.cli`` (done by the
``advbias`` command for its ``--help``) does not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "models": ("BUNDLED", "Ensemble", "ImageNetClassifier", "fold_batchnorm", "load_ensemble", "load_model"),
    "recipe": ("DEFAULT_RECIPE", "LOSSES", "Recipe"),
    "pgd": ("linf_pgd", "target_scores"),
    "chunks": ("choose_chunk", "prepare_model", "resolve_device"),
    "methods": ("gaussian_kernel",),
    "scoring": ("batched_logits", "category_probabilities", "class_probabilities", "quantization_check", "quantize",
                "target_probability"),
    "judge": ("choose", "wilson_interval"),
    "targets": ("NUM_CLASSES", "TargetSpec", "categories", "class_name", "is_category", "load_user_categories",
                "resolve_target", "target_spec"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'attacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
