"""Machine observers, ``SETDIR/observers.csv``: models answering the experiment's trials.

Written by ``advbias stimuli observe`` and read by ``advbias analyze --observers`` and
``advbias stimuli report``; this module owns the format (``docs/manifest.md``, section
"Machine observers"). One row per model, trial type and budget:

- ``model``: the model's name as ``--models`` takes it (``lite2``, a torchvision name, ...);
- ``role``: ``attacked`` (in the ensemble the set was made on: the ceiling), ``held_out``
  (the set's held-out model) or ``other`` (any further model);
- ``condition``: the trial type (``targets``, ``vs_clean``, ``vs_flip``, ``vs_noise``), as in the export;
- ``eps``: the budget in 8-bit levels;
- ``n_judgments``: two per image pair (one for each asked category);
- ``bias``: the share of judgments that pick the image perturbed toward the asked category;
- ``ci_low``, ``ci_high``: its 95% interval.
"""
from __future__ import annotations

COLUMNS: tuple[str, ...] = ("model", "role", "condition", "eps", "n_judgments", "bias", "ci_low", "ci_high")
ROLES: tuple[str, ...] = ("attacked", "held_out", "other")
FILENAME = "observers.csv"
