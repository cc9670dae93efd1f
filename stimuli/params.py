"""A stimulus set's parameters: what they are, their defaults, and their validation (done once, here).

Everything that changes a pixel or a number in the manifest is a parameter of the set,
recorded in ``set.json`` and compared on resume. Values may come as Python values (the
library) or as the strings typed on the command line (the CLI passes them through
untouched), so that every check lives in :func:`make_params` alone.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from advbias.errors import InputError
from advbias.manifest import MODEL_SET_NAME, model_set_name
from attacks.recipe import DEFAULT_RECIPE, Recipe
from stimuli.sources import Source

CONTROLS: tuple[str, ...] = ("flip", "noise", "phase")

#: ``--batch-size auto``: attack items (photo x pair x target x budget) per engine batch and
#: work unit. Fixed per device type rather than timed, because a timed choice would make
#: the pixels depend on the machine's load. CPUs run best at small batches (throughput
#: drops past ~16 images in cache); GPUs want large ones.
AUTO_BATCH = {"cpu": 16, "cuda": 256, "mps": 64}

#: The recipe options a set may change, as the CLI names them; the rest are the default recipe's
#: (:data:`attacks.DEFAULT_RECIPE`, chosen by ``advbias bench transfer``: docs/benchmarks.md, "Transfer").
RECIPE_OPTIONS: tuple[str, ...] = ("steps", "loss", "momentum", "input_diversity", "ti_kernel", "step_ratio",
                                   "cfm_prob", "finish_steps")


@dataclass(frozen=True)
class SetParams:
    """Everything that determines the contents of a set (and nothing that does not)."""

    images: str
    pairs: tuple[tuple[str, str], ...]
    eps: tuple[int, ...]
    models: tuple[str, ...]
    holdout: tuple[str, ...]
    controls: tuple[str, ...]
    size: int
    seed: int
    limit: int | None
    batch_size: int
    #: what the attack does (:class:`attacks.Recipe`): the default recipe with the options given replaced
    recipe: Recipe = DEFAULT_RECIPE
    #: the model sets, ``(name, models)`` in the order given; ``models`` is then every attacked model, each once.
    #: Empty means one set of ``models`` named after them (``--models`` alone).
    model_sets: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def sets(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Every model set as ``(name, models)``: the given ones, or the one set that ``--models`` names."""
        return self.model_sets or ((model_set_name(self.models), self.models),)

    @property
    def several_sets(self) -> bool:
        """Whether the set holds more than one model set (then keys and seeds carry the set's name)."""
        return len(self.sets) > 1

    def set_tag(self, name: str) -> tuple[str, ...]:
        """What a model set adds to a seed: nothing with one set (so its pixels are those of a set without
        model sets), its name with several (so that no two sets share an image)."""
        return (name,) if self.several_sets else ()

    @property
    def unit_images(self) -> int:
        """Photos per work unit: as many as fill one batch of attack items (at least one)."""
        return max(1, self.batch_size // self.targets_per_image)

    @property
    def targets_per_image(self) -> int:
        return len(self.pairs) * 2 * len(self.eps)

    @property
    def steps(self) -> int:
        return self.recipe.steps

    def identity(self) -> dict[str, Any]:
        """The parameters compared on resume. ``images`` is left out on purpose: the sources
        themselves are compared by content (``sources_sha256``), so a moved photo folder
        still resumes while a changed one is refused."""
        d = asdict(self)
        d.pop("images")
        d.pop("recipe")
        d.update(self.recipe.to_dict())
        d["pairs"] = [f"{a}:{b}" for a, b in self.pairs]
        d["eps"] = list(self.eps)
        d["models"] = list(self.models)
        d["holdout"] = list(self.holdout)
        d["controls"] = list(self.controls)
        d.pop("model_sets")
        if self.model_sets and self.model_sets != ((model_set_name(self.models), self.models),):
            d["model_sets"] = {name: list(models) for name, models in self.model_sets}
        return d


def _as_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [str(v).strip() for v in value if str(v).strip()]
    except TypeError:
        raise InputError(f"{what} must be a list or a comma-separated string, got {value!r}") from None


def parse_pairs(pairs: Any) -> tuple[tuple[str, str], ...]:
    """``"cat:truck,sheep:chair"`` or ``[("cat", "truck")]`` -> validated, normalised pairs."""
    from attacks import resolve_target

    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, str) and ":" not in p for p in pairs):
        pairs = [pairs]  # a single ("cat", "truck") tuple
    items: list[tuple[str, str]] = []
    for p in [pairs] if isinstance(pairs, str) else list(pairs or []):
        if isinstance(p, str):
            for chunk in [c for c in p.split(",") if c.strip()]:
                parts = chunk.split(":")
                if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                    raise InputError(f"--pairs: {chunk.strip()!r} is not of the form A:B (e.g. cat:truck)")
                items.append((parts[0], parts[1]))
        else:
            p = tuple(p)
            if len(p) != 2:
                raise InputError(f"--pairs: {p!r} is not a pair (A, B)")
            items.append((str(p[0]), str(p[1])))
    if not items:
        raise InputError("--pairs: give at least one pair A:B (e.g. cat:truck)")
    out: list[tuple[str, str]] = []
    seen: set[frozenset[str]] = set()
    for a, b in items:
        a, b = a.strip().lower(), b.strip().lower()
        if a == b:
            raise InputError(f"--pairs: {a}:{b} names the same category twice; A and B must differ")
        try:
            ca, cb = set(resolve_target(a)), set(resolve_target(b))
        except ValueError as exc:
            raise InputError(f"--pairs: {exc}") from None
        if ca & cb:
            raise InputError(f"--pairs: {a} and {b} share ImageNet classes {sorted(ca & cb)}; A and B must not overlap")
        if frozenset((a, b)) in seen:
            raise InputError(f"--pairs: the pair {a}:{b} is listed twice")
        seen.add(frozenset((a, b)))
        out.append((a, b))
    return tuple(out)


def parse_eps(eps: Any) -> tuple[int, ...]:
    """Budgets in 8-bit levels: whole numbers 1..255, returned sorted and without repeats."""
    raw = [e for e in (eps.split(",") if isinstance(eps, str) else ([eps] if isinstance(eps, int) else list(eps or [])))]
    values: list[int] = []
    for e in raw:
        text = str(e).strip()
        if not text:
            continue
        try:
            value = int(text) if not isinstance(e, float) else (int(e) if float(e).is_integer() else None)
        except ValueError:
            value = None
        if value is None or isinstance(e, bool):
            raise InputError(f"--eps: {text!r} is not a whole number of 8-bit levels (1..255)")
        if not 1 <= value <= 255:
            raise InputError(f"--eps: {value} is outside 1..255 (budgets are in 8-bit levels)")
        values.append(value)
    if not values:
        raise InputError("--eps: give at least one budget in 8-bit levels, e.g. 2,4,8,16")
    return tuple(sorted(set(values)))


def _whole(value: Any, option: str, minimum: int, maximum: int | None = None) -> int:
    """A whole number from an int or its decimal string, within [minimum, maximum]."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    if number is None:
        raise InputError(f"{option} must be a whole number, got {value!r}")
    if number < minimum:
        raise InputError(f"{option} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise InputError(f"{option} must be at most {maximum}, got {number}")
    return number


def _models(models: Any, holdout: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    models_l = _as_list(models, "--models")
    if not models_l:
        raise InputError("--models: give at least one model to attack")
    if len(set(models_l)) != len(models_l):
        raise InputError(f"--models: a model is listed twice in {','.join(models_l)}")
    holdout_l = _as_list(holdout, "--holdout")
    overlap = sorted(set(models_l) & set(holdout_l))
    if overlap:
        raise InputError(f"--holdout: {','.join(overlap)} is also attacked; a held-out model must not be in --models")
    if len(set(holdout_l)) != len(holdout_l):
        raise InputError(f"--holdout: a model is listed twice in {','.join(holdout_l)}")
    return tuple(models_l), tuple(holdout_l)


def parse_model_sets(model_sets: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``["conv=lite0,lite1", "b=lite2"]``, ``{"conv": ["lite0"]}`` or ``[("conv", ["lite0"])]`` -> checked sets."""
    if isinstance(model_sets, str):
        model_sets = [model_sets]
    items: list[tuple[str, Any]] = []
    for entry in (model_sets.items() if isinstance(model_sets, dict) else list(model_sets or [])):
        if isinstance(entry, str):
            name, sep, models = entry.partition("=")
            if not sep:
                raise InputError(f"--model-set: {entry!r} is not of the form NAME=M1[,M2...] (e.g. conv=lite0,lite1)")
            items.append((name.strip(), models))
        else:
            name, models = entry
            items.append((str(name).strip(), models))
    out: list[tuple[str, tuple[str, ...]]] = []
    for name, models in items:
        if not MODEL_SET_NAME.match(name):
            raise InputError(f"--model-set: {name!r} is not a model-set name (1-64 letters, digits, '.', '_', '+', '-')")
        models_l = _as_list(models, f"--model-set {name}")
        if not models_l:
            raise InputError(f"--model-set {name}: give at least one model to attack")
        if len(set(models_l)) != len(models_l):
            raise InputError(f"--model-set {name}: a model is listed twice in {','.join(models_l)}")
        for other, other_models in out:
            if other == name:
                raise InputError(f"--model-set: the name {name} is given twice")
            if set(other_models) == set(models_l):
                raise InputError(f"--model-set: {other} and {name} attack the same models; each set needs its own")
        out.append((name, tuple(models_l)))
    return tuple(out)


def _sets_and_models(models: Any, model_sets: Any, holdout: Any) -> tuple[tuple, tuple[str, ...], tuple[str, ...]]:
    """(model sets, every attacked model once, held-out models); ``--model-set`` takes the place of ``--models``."""
    sets = parse_model_sets(model_sets)
    if not sets:
        models_t, holdout_t = _models(models, holdout)
        return (), models_t, holdout_t
    union = tuple(dict.fromkeys(m for _, ms in sets for m in ms))
    _, holdout_t = _models(list(union), holdout)
    return sets, union, holdout_t


def _controls(controls: Any) -> tuple[str, ...]:
    controls_l = [c.lower() for c in _as_list(controls, "--controls")]
    unknown = [c for c in controls_l if c not in CONTROLS]
    if unknown:
        raise InputError(f"--controls: unknown control {unknown[0]!r}; choose from {', '.join(CONTROLS)}")
    return tuple(c for c in CONTROLS if c in controls_l)


def _recipe(options: dict[str, Any]) -> Recipe:
    """The default recipe with the options given (``None``: the default's) replaced, checked by the recipe
    itself; its messages name the CLI's flag (``--step-ratio must ...``)."""
    given = {k: v for k, v in options.items() if v is not None}
    if "steps" in given:
        given["steps"] = _whole(given["steps"], "--steps", 1)
    try:
        return DEFAULT_RECIPE.but(**given)
    except ValueError as exc:
        message = str(exc)
        field = next((f for f in RECIPE_OPTIONS if message.startswith(f + " ")), None)
        raise InputError(f"--{field.replace('_', '-')}{message[len(field):]}" if field else message) from None


def _batch_size(batch_size: Any, device: str) -> int:
    if isinstance(batch_size, str) and batch_size.strip().lower() == "auto":
        return AUTO_BATCH.get(device.split(":")[0], 16)
    try:
        return _whole(batch_size, "--batch-size", 1)
    except ValueError:
        raise InputError(f"--batch-size must be 'auto' or a positive whole number, got {batch_size!r}") from None


def make_params(
    images: str | os.PathLike,
    pairs: Any,
    eps: Any,
    *,
    models: Any,
    holdout: Any,
    controls: Any,
    model_sets: Any = None,
    size: Any,
    seed: Any,
    limit: Any,
    batch_size: Any,
    device: str,
    **recipe: Any,
) -> SetParams:
    """Validate every user-facing parameter, before anything is read or written (one-line errors).

    ``recipe`` holds any of :data:`RECIPE_OPTIONS` (``None``: the default recipe's value)."""
    unknown = sorted(set(recipe) - set(RECIPE_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}; the recipe options are {', '.join(RECIPE_OPTIONS)}")
    pairs_t = parse_pairs(pairs)
    eps_t = parse_eps(eps)
    sets_t, models_t, holdout_t = _sets_and_models(models, model_sets, holdout)
    images_s = str(images)
    if images_s != "builtin":
        images_s = str(Path(images_s).expanduser().resolve())
    return SetParams(
        images=images_s, pairs=pairs_t, eps=eps_t, models=models_t,
        holdout=holdout_t, controls=_controls(controls), size=_whole(size, "--size", 16, 4096),
        seed=_whole(seed, "--seed", 0), limit=None if limit is None else _whole(limit, "--limit", 1),
        batch_size=_batch_size(batch_size, device), model_sets=sets_t,
        recipe=_recipe(recipe),
    )


def recorded_model_sets(parameters: dict[str, Any]) -> dict[str, list[str]]:
    """The model sets of a set from its set.json ``parameters``: name -> models, in order.

    A set made with ``--models`` alone records no ``model_sets``: its one set is named after its models.
    """
    recorded = parameters.get("model_sets")
    if recorded:
        return {str(k): list(v) for k, v in recorded.items()}
    models = list(parameters.get("models") or [])
    return {model_set_name(models): models}


def sources_digest(sources: Sequence[Source]) -> str:
    """One hash for the ordered list of (name, content hash) of the sources."""
    h = hashlib.sha256()
    for s in sources:
        h.update(f"{s.name}\t{s.sha256}\t{'' if s.label is None else s.label}\n".encode())
    return h.hexdigest()


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from the set seed and an item's identity (independent of batching and rank)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
