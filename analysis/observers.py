"""Machine observers beside people: ``advbias analyze --observers SETDIR/observers.csv``.

The file (columns owned by :mod:`advbias.observers`) gives, per model, trial type and
budget, how often the model picks the image perturbed toward the asked category when
it answers the experiment's question. ``human_vs_machine.csv`` puts each model's rate
beside the people's (the mean of participant means, ``bias_by_eps.csv``); with several model
sets the people there are pooled over sets, and :mod:`analysis.model_sets` puts each set's
observers beside the people on that set.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from advbias.observers import COLUMNS, read

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

HUMAN_VS_MACHINE_COLUMNS = ("condition", "eps", "model_set", "model", "role", "machine_bias", "machine_ci_low", "machine_ci_high",
                            "n_judgments", "human_bias", "human_ci_low", "human_ci_high", "n_participants",
                            "machine_minus_human")


def read_observers(path: str | Path) -> "pd.DataFrame":
    """An ``observers.csv`` (checked by :func:`advbias.observers.read`) as a tidy DataFrame."""
    import pandas as pd

    frame = pd.DataFrame(read(path), columns=list(COLUMNS))
    for column in ("model_set", "model", "role", "condition"):
        frame[column] = frame[column].astype("string")
    return frame


def human_vs_machine(bias_by_eps: "pd.DataFrame", observers: "pd.DataFrame") -> "pd.DataFrame":
    """One row per (trial type, budget, model) that both people and the model answered."""
    humans = bias_by_eps[["condition", "eps", "bias", "ci_low", "ci_high", "n_participants"]].rename(
        columns={"bias": "human_bias", "ci_low": "human_ci_low", "ci_high": "human_ci_high"})
    machines = observers.rename(columns={"bias": "machine_bias", "ci_low": "machine_ci_low",
                                         "ci_high": "machine_ci_high"})
    out = machines.merge(humans.astype({"eps": int}), on=["condition", "eps"], how="inner")
    out["machine_minus_human"] = out["machine_bias"] - out["human_bias"]
    order = {r: i for i, r in enumerate(("held_out", "other", "attacked"))}
    out = out.assign(_r=out["role"].map(order)).sort_values(["condition", "eps", "model_set", "_r", "model"], kind="stable")
    return out[list(HUMAN_VS_MACHINE_COLUMNS)].reset_index(drop=True)
