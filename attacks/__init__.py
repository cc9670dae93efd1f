"""Models, targets and the batched targeted L-infinity PGD engine.

>>> import attacks
>>> ens = attacks.load_ensemble(["lite0", "lite1"])
>>> x_adv = attacks.linf_pgd(ens, x, ["cat"] * len(x), eps=8 / 255, steps=40)
>>> u8 = attacks.quantize(x_adv, x_uint8, 8)   # saved images keep |delta| <= 8 levels
"""
from .models import BUNDLED, Ensemble, ImageNetClassifier, fold_batchnorm, load_ensemble, load_model
from .pgd import (
    category_probabilities,
    choose_chunk,
    linf_pgd,
    quantization_check,
    quantize,
    target_probability,
    target_scores,
)
from .targets import NUM_CLASSES, TargetSpec, categories, class_name, is_category, load_user_categories, resolve_target, target_spec

__all__ = [
    "BUNDLED", "Ensemble", "ImageNetClassifier", "NUM_CLASSES", "TargetSpec", "categories", "category_probabilities",
    "choose_chunk", "class_name", "fold_batchnorm", "is_category", "linf_pgd", "load_ensemble", "load_model",
    "load_user_categories", "quantization_check", "quantize", "resolve_target", "target_probability",
    "target_scores", "target_spec",
]
