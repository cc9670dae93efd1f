"""Scoring saved stimuli: what the attacked ensemble and the held-out models see in each 8-bit image.

The numbers go into the manifest (``ensemble_*`` and ``holdout_*`` columns), so they are
computed on the rounded uint8 pixels that participants see, in fixed batches (the
probabilities then do not depend on how the work was split across processes).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np


def entry_level_names() -> list[str]:
    """The 16 entry-level categories, in the order of the bundled category file."""
    from importlib import resources

    text = resources.files("attacks").joinpath("data/imagenet16_categories.json").read_text()
    return list(json.loads(text)["categories"])


class Scorer:
    """Scores saved 8-bit images under the attacked ensemble and the held-out models."""

    def __init__(self, ensemble: Any, holdout: Any | None, device: str) -> None:
        import attacks
        import torch

        self.ensemble, self.holdout, self.device = ensemble, holdout, device
        for model in (ensemble, holdout):
            if model is not None:  # the engine's device and layout: several times faster on CPU than NCHW
                attacks.prepare_model(model, torch.device(device), True)
        # ensemble_category is chosen among the 16 entry-level categories only (the manifest
        # contract), whatever extra categories a user has defined.
        known = attacks.categories()
        self.categories = {name: known[name] for name in entry_level_names()}
        self.class_names = [attacks.class_name(i) for i in range(1000)]

    def score(self, images: "torch.Tensor", targets: Sequence[str | None]) -> list[dict[str, Any]]:  # noqa: F821
        """Manifest score columns for uint8 NCHW ``images``, one dict per image (``None`` target: no target columns)."""
        import attacks

        probs = attacks.class_probabilities(self.ensemble, images)
        hold = attacks.class_probabilities(self.holdout, images) if self.holdout is not None else None
        cat_probs = np.stack([attacks.target_probability(None, None, [c] * len(targets), probs=probs).numpy()
                              for c in self.categories], axis=1) if len(targets) else np.zeros((0, 16))
        names = list(self.categories)
        have = [i for i, t in enumerate(targets) if t]
        tnames = [targets[i] for i in have]
        ens_t = attacks.target_probability(None, None, tnames, probs=probs[have]) if have else None
        hold_t = attacks.target_probability(None, None, tnames, probs=hold[have]) if have and hold is not None else None
        where = {i: k for k, i in enumerate(have)}
        rows = []
        for i, target in enumerate(targets):
            top1, best = int(probs[i].argmax()), int(cat_probs[i].argmax())
            row: dict[str, Any] = {
                "ensemble_top1": top1,
                "ensemble_top1_name": self.class_names[top1],
                "ensemble_top1_prob": float(probs[i, top1]),
                "ensemble_category": names[best],
                "ensemble_category_prob": float(cat_probs[i, best]),
            }
            if target:
                row["ensemble_target_prob"] = float(ens_t[where[i]])
                row["ensemble_success"] = int(top1 in attacks.resolve_target(target))
            if hold is not None:
                htop = int(hold[i].argmax())
                row["holdout_top1"] = htop
                row["holdout_top1_name"] = self.class_names[htop]
                if target:
                    row["holdout_target_prob"] = float(hold_t[where[i]])
                    row["holdout_success"] = int(htop in attacks.resolve_target(target))
            rows.append(row)
        return rows
