"""What an attack does, apart from how it is run: the recipe (torch-free).

A :class:`Recipe` is everything that changes the pixels an attack makes, for a given set of
images, targets, budgets and seed: the loss, the number of steps, the step-size rule, and the
transfer methods layered on PGD. How the work is executed (device, chunk size, precision,
layout, progress) is not part of it. One object serves the engine (:func:`attacks.linf_pgd`),
the stimulus generator, the transfer benchmark that chose the default, and ``set.json``
(:meth:`Recipe.to_dict` / :meth:`Recipe.from_dict`), so the benchmark measures exactly what the
generator makes.

Defaults of the fields are *off*: ``Recipe(steps=10)`` is plain targeted PGD with Madry's step
rule, as foolbox runs it. The recipe the project uses when none is given is
:data:`DEFAULT_RECIPE`, chosen by ``advbias bench transfer`` (docs/benchmarks.md, "Transfer").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from advbias.errors import InputError

LOSSES = ("auto", "ce", "logodds", "logit")

#: Madry et al. (2018): steps of ``2.5 * eps / steps`` cross the eps-ball 2.5 times over the run. It is
#: also the floor under a recipe's step ratio, so that short runs (pilots, tests) still cross the ball.
MADRY_CROSSINGS = 2.5


def _number(value: Any, what: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number != number:
        raise InputError(f"{what} must be a number, got {value!r}")
    return number


def _whole(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InputError(f"{what} must be a whole number, got {value!r}")


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InputError(f"{what} must be true or false, got {value!r}")


@dataclass(frozen=True)
class Recipe:
    """One attack recipe. Values may be given as strings (the CLI's); they are checked and normalised here.

    Attributes:
        steps: gradient steps per image.
        loss: ``auto`` | ``ce`` | ``logodds`` | ``logit`` (see :func:`attacks.target_scores`).
        step_ratio: step size as a fraction of each image's eps, never below ``2.5 / steps``
            (:meth:`step_fraction`); ``None``: Madry's ``2.5 * eps / steps``.
        momentum: MI-FGSM decay (Dong et al. 2018); 0 disables it.
        input_diversity: DI-FGSM probability (Xie et al. 2019) of a random resize-and-pad per step.
        resize_back: RDI (Zou et al. 2020): resize the diversified input back to the image's size, so the
            models see the usual input size (and CFM's stored features keep their shape).
        ti_kernel: TI-FGSM (Dong et al. 2019): smooth the gradient with a Gaussian of this odd size; 0: off.
        cfm_prob: Clean Feature Mixup (Byun et al. 2023): the probability that each eligible layer mixes
            stored clean features into its output on a forward pass; 0 disables CFM.
        cfm_max: CFM's largest mixing weight (weights are uniform in ``[0, cfm_max]`` per image and channel).
        random_start: start from a uniform point in the eps-ball.
        finish_steps: the last this many of the steps attack the models as they are (no DI, TI or CFM),
            so that the image ends where the attacked models themselves are fooled; 0: off.
    """

    steps: int
    loss: str = "auto"
    step_ratio: float | None = None
    momentum: float = 0.0
    input_diversity: float = 0.0
    resize_back: bool = False
    ti_kernel: int = 0
    cfm_prob: float = 0.0
    cfm_max: float = 0.75
    random_start: bool = False
    finish_steps: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        steps = _whole(self.steps, "steps")
        if steps < 1:
            raise InputError(f"steps must be a positive whole number, got {self.steps!r}")
        set_(self, "steps", steps)
        loss = str(self.loss).strip().lower()
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        set_(self, "loss", loss)
        ratio = self.step_ratio
        if isinstance(ratio, str) and ratio.strip().lower() in ("madry", "none", ""):
            ratio = None
        if ratio is not None:
            ratio = _number(ratio, "step_ratio")
            if not 0.0 < ratio <= 1.0:
                raise InputError(f"step_ratio must be 'madry' or a fraction of eps in (0, 1], e.g. 0.125, got {ratio}")
        set_(self, "step_ratio", ratio)
        for name in ("momentum", "input_diversity", "cfm_prob", "cfm_max"):
            value = _number(getattr(self, name), name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {value}")
            set_(self, name, value)
        ti = _whole(self.ti_kernel, "ti_kernel")
        if ti != 0 and (ti < 3 or ti % 2 == 0 or ti > 63):
            raise InputError(f"ti_kernel must be 0 (off) or an odd whole number from 3 to 63, got {self.ti_kernel!r}")
        set_(self, "ti_kernel", ti)
        finish = _whole(self.finish_steps, "finish_steps")
        if not 0 <= finish <= steps:
            raise InputError(f"finish_steps must lie in 0..steps ({steps}), got {self.finish_steps!r}")
        set_(self, "finish_steps", finish)
        set_(self, "resize_back", _flag(self.resize_back, "resize_back"))
        set_(self, "random_start", _flag(self.random_start, "random_start"))

    def step_fraction(self) -> float:
        """The step size as a fraction of eps: the one step-size rule of the project.

        ``max(step_ratio, 2.5 / steps)``, or ``2.5 / steps`` (Madry et al. 2018) without a ratio. The floor
        keeps a short run able to cross the eps-ball; at the default's 200 steps it never binds.
        """
        floor = MADRY_CROSSINGS / self.steps
        return floor if self.step_ratio is None else max(self.step_ratio, floor)

    def describe_step(self) -> str:
        """The step-size rule in words, with its value (for set.json and reports)."""
        if self.step_ratio is None:
            return f"2.5 * eps / steps = {self.step_fraction():g} * eps"
        return f"max({self.step_ratio:g}, 2.5 / steps) * eps = {self.step_fraction():g} * eps"

    def to_dict(self) -> dict[str, Any]:
        """Every field under its stable key (set.json, benchmark results)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        """A recipe from :meth:`to_dict`'s keys. Keys absent in older files read as *off* (those sets were made
        without the option); unknown keys are refused, so a newer file is never read as something else."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown recipe key {unknown[0]!r}; known: {', '.join(sorted(known))}")
        if "steps" not in data:
            raise InputError("a recipe needs 'steps'")
        return cls(**dict(data))

    def but(self, **changes: Any) -> "Recipe":
        """A copy with some fields changed (checked like the original)."""
        return replace(self, **changes)

    @property
    def uses_cfm(self) -> bool:
        return self.cfm_prob > 0


#: Keys of :meth:`Recipe.to_dict`, in order: the recipe's part of set.json's parameters.
RECIPE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Recipe))

#: The recipe used when none is given (``advbias stimuli generate``), chosen by ``advbias bench transfer``
#: on photos it was not tuned on (docs/benchmarks.md, "Transfer"). Defined here once.
DEFAULT_RECIPE = Recipe(steps=200, loss="logit", step_ratio=0.125, momentum=1.0, input_diversity=0.7, ti_kernel=5,
                        cfm_prob=0.1, cfm_max=0.75)
