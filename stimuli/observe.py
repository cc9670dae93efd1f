"""Machine observers: models take the experiment's trials, ``SETDIR/observers.csv``.

For every trial type the set supports, a model answers "which image is more A-like?" the
way :mod:`attacks.judge` defines it (the image it gives the higher probability of A), on
the saved 8-bit files, for both asked categories of every photo, pair and budget:

* ``targets``: perturbed toward A vs perturbed toward B (the study's main trial);
* ``vs_clean``: perturbed toward A vs the clean crop;
* ``vs_flip``: perturbed toward A vs the same perturbation turned upside down;
* ``vs_noise``: perturbed toward A vs random +/-eps noise;
* ``vs_phase``: perturbed toward A vs its phase-randomised control.

``bias`` is the share of judgments that pick the image perturbed toward the asked category.
The attacked models are the ceiling; a held-out model shows what transfers to a network
that was not optimised against. With several model sets every observer answers the trials
of every set, so the file is a transfer matrix (set x observer). Which image each trial type
shows beside the perturbed one is :mod:`advbias.trials`' rule (the experiment's design uses the
same); the file format is owned by :mod:`advbias.observers`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from advbias.errors import InputError
from advbias.manifest import StimulusRow, read_manifest
from advbias.observers import read as read_observers, write as write_observers
from advbias.setdir import image_path, observers_path, read_set_json, require_finished
from advbias.trials import MAIN_TRIAL_TYPES, ImageIndex, order_index
from stimuli.files import read_stimulus
from stimuli.params import recorded_model_sets


def _read_set(setdir: Path) -> tuple[dict[str, Any], list[StimulusRow]]:
    require_finished(setdir)
    return read_set_json(setdir), read_manifest(setdir)


def _model_names(models: Any) -> list[str]:
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else list(models or [])) if m.strip()]
    if not names:
        raise InputError("--models: give at least one model to observe with (e.g. lite2)")
    if len(set(names)) != len(names):
        raise InputError(f"--models: a model is listed twice in {','.join(names)}")
    return names


def role(model: str, meta: dict[str, Any], model_set: str | None = None) -> str:
    """``attacked`` if the model set (by default: any set) was made on the model, ``held_out`` if it is the
    set's holdout, else ``other`` (also a model of another model set)."""
    params = meta["parameters"]
    sets = recorded_model_sets(params)
    attacked = sets.get(model_set, []) if model_set in sets else params.get("models", [])
    if model in attacked:
        return "attacked"
    return "held_out" if model in params.get("holdout", []) else "other"


def by_model_set(rows: Sequence[StimulusRow]) -> dict[str, list[StimulusRow]]:
    """The rows of each model set (in order of appearance), each with the shared clean crops."""
    clean = [r for r in rows if r.condition == "clean"]
    names = list(dict.fromkeys(r.model_set for r in rows if r.condition != "clean"))
    return {name: clean + [r for r in rows if r.condition != "clean" and r.model_set == name] for name in names}


def judgments(rows: Sequence[StimulusRow], prob: dict[tuple[str, str], float]) -> dict[tuple[str, int], list[float]]:
    """Every judgment of every trial type the set supports, keyed by (trial type, budget).

    ``prob[(stimulus_id, category)]`` is the model's probability of the category for that image.
    """
    import torch

    from attacks.judge import choose

    index = ImageIndex(rows)
    present = [t for t in MAIN_TRIAL_TYPES if index.supports(t)]
    toward = sorted({(r.pair_key, r.target): r for r in rows if r.condition == "adversarial"})
    out: dict[tuple[str, int], list[float]] = {}
    for key, asked in toward:
        img = index.toward(key, asked)
        assert img is not None
        for trial in present:
            other = index.other(trial, key, img.source_sha256, img.pair, asked)
            if other is None:
                continue
            pick = choose(torch.tensor(prob[(img.stimulus_id, asked)], dtype=torch.float64),
                          torch.tensor(prob[(other.stimulus_id, asked)], dtype=torch.float64))
            out.setdefault((trial, int(img.eps)), []).append(float(pick))
    return out


def _probabilities(model: Any, setdir: Path, rows: Sequence[StimulusRow], device: str,
                   bar: Any) -> dict[tuple[str, str], float]:
    """The model's probability of each pair category for every image that takes part in a trial."""
    import torch

    import attacks

    attacks.prepare_model(model, torch.device(device), True)
    cats = sorted({c for r in rows if r.pair for c in r.pair.split(":")})
    wanted = list(rows)
    out: dict[tuple[str, str], float] = {}
    for lo in range(0, len(wanted), 64):
        batch = wanted[lo : lo + 64]
        px = np.stack([read_stimulus(image_path(setdir, r.stimulus_id)) for r in batch])
        probs = attacks.class_probabilities(model, torch.from_numpy(px).permute(0, 3, 1, 2).contiguous())
        for c in cats:
            pc = attacks.target_probability(None, None, [c] * len(batch), probs=probs)
            for r, p in zip(batch, pc.tolist()):
                out[(r.stimulus_id, c)] = p
        if bar is not None:
            bar.update(len(batch))
    return out


def observe_set(setdir: str | Path, models: Any, *, device: str = "auto", progress: bool = True) -> Path:
    """Let each model take every trial of the set; write ``SETDIR/observers.csv`` and return its path."""
    import attacks
    from attacks.judge import wilson_interval

    setdir = Path(setdir).expanduser()
    meta, rows = _read_set(setdir)
    names = _model_names(models)
    dev = "cuda" if device == "auto" and _cuda() else ("cpu" if device == "auto" else device)
    loaded = [attacks.load_model(n, device=dev) for n in names]  # every name checked before any work
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows) * len(names), unit="img", desc="observers")
    out_rows: list[dict[str, Any]] = []
    try:
        for name, model in zip(names, loaded):
            prob = _probabilities(model, setdir, rows, dev, bar)
            for model_set, set_rows in by_model_set(rows).items():
                for (trial, eps), picks in sorted(judgments(set_rows, prob).items(),
                                                  key=lambda kv: (order_index(kv[0][0]), kv[0][1])):
                    lo, hi = wilson_interval(sum(picks), len(picks))
                    out_rows.append({"model_set": model_set, "model": name, "role": role(name, meta, model_set),
                                     "condition": trial, "eps": eps, "n_judgments": len(picks),
                                     "bias": sum(picks) / len(picks), "ci_low": lo, "ci_high": hi})
    finally:
        if bar is not None:
            bar.close()
    return write_observers(setdir, out_rows)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def observers_figure(setdir: Path) -> str | None:
    """A PNG (base64) of bias against budget, one panel per trial type, one line per model; None without observers.csv."""
    path = observers_path(setdir)
    if not path.is_file():
        return None
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_observers(path)
    trials = [t for t in MAIN_TRIAL_TYPES if any(r["condition"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(trials), figsize=(3.6 * len(trials), 3.2), sharey=True, squeeze=False)
    models = list(dict.fromkeys((r["model_set"], r["model"]) for r in rows))
    several = len({ms for ms, _ in models}) > 1
    budgets = sorted({int(r["eps"]) for r in rows})
    for ax, trial in zip(axes[0], trials):
        for k, (model_set, model) in enumerate(models):
            pts = sorted((int(r["eps"]), float(r["bias"]), float(r["ci_low"]), float(r["ci_high"]), r["role"])
                         for r in rows if (r["model_set"], r["model"]) == (model_set, model) and r["condition"] == trial)
            if not pts:
                continue
            e, b, lo, hi = (np.array([p[i] for p in pts]) for i in range(4))
            shift = 2 ** (0.06 * (k - (len(models) - 1) / 2))  # side by side, so that equal curves stay visible
            label = f"{model} on {model_set} ({pts[0][4]})" if several else f"{model} ({pts[0][4]})"
            ax.errorbar(e * shift, b, yerr=[b - lo, hi - b], marker="o", capsize=3, label=label)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(e) for e in budgets])
        ax.minorticks_off()
        ax.set_xlabel("budget (8-bit levels)")
        ax.set_title(trial)
        ax.set_ylim(0, 1.03)
    axes[0][0].set_ylabel("share picking the perturbed image")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def transfer_matrix(rows: Sequence[dict[str, Any]], trial: str = "targets") -> dict[int, tuple[list, list, np.ndarray]]:
    """Per budget: (model sets, observer models, bias matrix set x observer) for one trial type (NaN: not observed)."""
    chosen = [r for r in rows if r["condition"] == trial]
    sets = list(dict.fromkeys(r["model_set"] for r in chosen))
    models = list(dict.fromkeys(r["model"] for r in chosen))
    out: dict[int, tuple[list, list, np.ndarray]] = {}
    for eps in sorted({int(r["eps"]) for r in chosen}):
        matrix = np.full((len(sets), len(models)), np.nan)
        for r in chosen:
            if int(r["eps"]) == eps:
                matrix[sets.index(r["model_set"]), models.index(r["model"])] = float(r["bias"])
        out[eps] = (sets, models, matrix)
    return out


def transfer_figure(setdir: Path) -> str | None:
    """A PNG (base64) heatmap per budget of the ``targets`` bias: model set (rows) x observer (columns).

    The diagonal-like cells where an observer is one of the set's attacked models are the ceiling,
    the others show how far each set's images transfer; None without observers.csv.
    """
    path = observers_path(setdir)
    if not path.is_file():
        return None
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_observers(path)
    panels = transfer_matrix(rows)
    if not panels:
        return None
    roles = {(r["model_set"], r["model"]): r["role"] for r in rows}
    sets, models, _ = next(iter(panels.values()))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + (0.9 * len(models) + 0.6) * len(panels),
                                                      1.0 + 0.55 * len(sets)), squeeze=False)
    for ax, (eps, (sets, models, matrix)) in zip(axes[0], panels.items()):
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for i, model_set in enumerate(sets):
            for j, model in enumerate(models):
                if np.isfinite(matrix[i, j]):
                    mark = "*" if roles.get((model_set, model)) == "attacked" else ""
                    ax.text(j, i, f"{matrix[i, j]:.2f}{mark}", ha="center", va="center", fontsize=8,
                            color="black" if matrix[i, j] > 0.6 else "white")
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(sets)), [s or "(the set)" for s in sets], fontsize=8)
        ax.set_title(f"eps {eps}", fontsize=9)
    axes[0][0].set_ylabel("images made on")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="targets bias")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
