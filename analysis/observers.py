"""Machine observers beside people: ``advbias analyze --observers SETDIR/observers.csv``.

The file (columns owned by :mod:`advbias.observers`) gives, per model, trial type and
budget, how often the model picks the image perturbed toward the asked category when
it answers the experiment's question. ``human_vs_machine.csv`` puts each model's rate
beside the people's (the mean of participant means, ``bias_by_eps.csv``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from advbias.observers import COLUMNS, ROLES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

HUMAN_VS_MACHINE_COLUMNS = ("condition", "eps", "model", "role", "machine_bias", "machine_ci_low", "machine_ci_high",
                            "n_judgments", "human_bias", "human_ci_low", "human_ci_high", "n_participants",
                            "machine_minus_human")


def read_observers(path: str | Path) -> "pd.DataFrame":
    """Read and check an ``observers.csv``; a :class:`ValueError` names the first problem."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "observers.csv"
    if not path.is_file():
        raise FileNotFoundError(f"observers file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={"model": "string", "role": "string", "condition": "string"})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable observers CSV: {str(exc).splitlines()[0]}") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
    if frame.empty:
        raise ValueError(f"{path} has a header but no rows")
    bad_role = ~frame["role"].isin(list(ROLES))
    if bad_role.any():
        raise ValueError(f"{path}: role {frame.loc[bad_role, 'role'].iloc[0]!r} is not one of {', '.join(ROLES)}")
    for column in ("eps", "n_judgments", "bias", "ci_low", "ci_high"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            first = frame.loc[values.isna(), column].iloc[0]
            raise ValueError(f"{path}: column '{column}' must be numeric, found {first!r}")
        frame[column] = values
    if ((frame["bias"] < 0) | (frame["bias"] > 1)).any():
        raise ValueError(f"{path}: column 'bias' must lie between 0 and 1")
    frame["eps"] = frame["eps"].astype(int)
    return frame[list(COLUMNS)]


def human_vs_machine(bias_by_eps: "pd.DataFrame", observers: "pd.DataFrame") -> "pd.DataFrame":
    """One row per (trial type, budget, model) that both people and the model answered."""
    humans = bias_by_eps[["condition", "eps", "bias", "ci_low", "ci_high", "n_participants"]].rename(
        columns={"bias": "human_bias", "ci_low": "human_ci_low", "ci_high": "human_ci_high"})
    machines = observers.rename(columns={"bias": "machine_bias", "ci_low": "machine_ci_low",
                                         "ci_high": "machine_ci_high"})
    out = machines.merge(humans.astype({"eps": int}), on=["condition", "eps"], how="inner")
    out["machine_minus_human"] = out["machine_bias"] - out["human_bias"]
    order = {r: i for i, r in enumerate(("held_out", "other", "attacked"))}
    out = out.assign(_r=out["role"].map(order)).sort_values(["condition", "eps", "_r", "model"], kind="stable")
    return out[list(HUMAN_VS_MACHINE_COLUMNS)].reset_index(drop=True)
