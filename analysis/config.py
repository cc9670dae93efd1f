"""Analysis settings: the exclusion rules and statistical choices, fixed before looking at data.

A study states its exclusions in advance; ``analysis.toml`` is where they are
written down, and the report repeats them. Every key is optional (defaults
below); an unknown key is an error, so a typo cannot silently disable a rule::

    [analysis]
    chance = 0.5          # the no-bias rate the tests compare against
    ci_level = 0.95
    alpha = 0.05          # for the "significant" marks in the report
    n_boot = 2000         # bootstrap resamples of participants
    seed = 0              # bootstrap seed
    mixed_model = true    # fit the logistic mixed models
    nagq = 1              # 1: Laplace (as lme4's default); 0: faster joint-mode fit
    primary = "mixed_model"       # the declared primary test: "mixed_model" (GLMM intercept) or "ttest"
    alternative = "two-sided"     # or "greater": one-sided primary test (bias above chance)
    random_slope = false  # trend model: add an uncorrelated random slope of log2(eps) by participant

    [exclusions]
    min_catch_accuracy = 0.5            # exclude participants below (0 disables); the experiment screens out the same
    min_rt_ms = 150                     # responses faster than this are dropped (0 disables)
    max_rt_ms = 0                       # responses slower than this are dropped (0 disables)
    max_fast_fraction = 0.10            # exclude participants with more fast responses (1 disables)
    require_completed = true            # exclude participants who did not finish
    max_not_fullscreen_fraction = 0.10  # exclude participants outside fullscreen more often, where the page required it (1 disables)
    max_blurred_fraction = 0.10         # exclude participants who blurred the window more often (1 disables)
    min_median_server_rt_ms = 300       # exclude participants whose answers reach the server faster (0 disables)
    max_rt_over_server_fraction = 0.10  # exclude participants claiming more RT than the server saw (1 disables)
    server_rt_slack_ms = 100            # how much longer rt_ms may be than server_rt_ms before it is implausible
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from advbias.errors import InputError, InputFileNotFound
from advbias.export import MIN_CATCH_ACCURACY


#: The declared primary test: the mixed model's intercept (generalises over participants and images) or the
#: one-sample t-test of participant means (generalises over participants only).
PRIMARY_TESTS = ("mixed_model", "ttest")
ALTERNATIVES = ("two-sided", "greater")


@dataclass(frozen=True)
class ExclusionRules:
    """Participant- and trial-level exclusion rules (see the module docstring)."""

    min_catch_accuracy: float = MIN_CATCH_ACCURACY  # the experiment's default screen-out rule too
    min_rt_ms: float = 150.0
    max_rt_ms: float = 0.0
    max_fast_fraction: float = 0.10
    require_completed: bool = True
    max_not_fullscreen_fraction: float = 0.10
    max_blurred_fraction: float = 0.10
    min_median_server_rt_ms: float = 300.0
    max_rt_over_server_fraction: float = 0.10
    server_rt_slack_ms: float = 100.0

    def __post_init__(self) -> None:
        for name in ("min_catch_accuracy", "max_fast_fraction", "max_not_fullscreen_fraction", "max_blurred_fraction",
                     "max_rt_over_server_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"exclusions.{name} must be between 0 and 1, got {value}")
        for name in ("min_rt_ms", "max_rt_ms", "min_median_server_rt_ms", "server_rt_slack_ms"):
            if getattr(self, name) < 0:
                raise InputError(f"exclusions.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_rt_ms and self.max_rt_ms <= self.min_rt_ms:
            raise InputError("exclusions.max_rt_ms must be larger than min_rt_ms (or 0 to disable)")


@dataclass(frozen=True)
class AnalysisConfig:
    """Statistical choices and exclusion rules for one analysis."""

    chance: float = 0.5
    ci_level: float = 0.95
    alpha: float = 0.05
    n_boot: int = 2000
    seed: int = 0
    mixed_model: bool = True
    nagq: int = 1
    primary: str = "mixed_model"
    alternative: str = "two-sided"
    random_slope: bool = False
    exclusions: ExclusionRules = field(default_factory=ExclusionRules)

    def __post_init__(self) -> None:
        if not 0.0 < self.chance < 1.0:
            raise InputError(f"analysis.chance must be strictly between 0 and 1, got {self.chance}")
        if not 0.5 <= self.ci_level < 1.0:
            raise InputError(f"analysis.ci_level must be in [0.5, 1), got {self.ci_level}")
        if not 0.0 < self.alpha < 1.0:
            raise InputError(f"analysis.alpha must be strictly between 0 and 1, got {self.alpha}")
        if self.n_boot < 0:
            raise InputError(f"analysis.n_boot must be >= 0, got {self.n_boot}")
        if self.nagq not in (0, 1):
            raise InputError(f"analysis.nagq must be 0 or 1, got {self.nagq}")
        if self.primary not in PRIMARY_TESTS:
            raise InputError(f"analysis.primary must be one of {', '.join(PRIMARY_TESTS)}, got {self.primary!r}")
        if self.alternative not in ALTERNATIVES:
            raise InputError(f"analysis.alternative must be one of {', '.join(ALTERNATIVES)}, got {self.alternative!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as nested plain values (written into the report)."""
        return dataclasses.asdict(self)


def _typed(section: str, cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "exclusions"}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise InputError(f"unknown setting [{section}] {key} (known: {', '.join(sorted(fields))})")
        default = fields[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"[{section}] {key} must be true or false, got {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise InputError(f"[{section}] {key} must be a quoted string, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"[{section}] {key} must be a whole number, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"[{section}] {key} must be a number, got {value!r}")
            value = float(value)
        out[key] = value
    return out


def config_from_dict(values: Mapping[str, Any]) -> AnalysisConfig:
    """Build a config from ``{"analysis": {...}, "exclusions": {...}}`` (the TOML layout)."""
    unknown = set(values) - {"analysis", "exclusions"}
    if unknown:
        raise InputError(f"unknown section(s) {', '.join(sorted(unknown))}: expected [analysis] and [exclusions]")
    for section in ("analysis", "exclusions"):
        if section in values and not isinstance(values[section], Mapping):
            raise InputError(f"[{section}] must be a table of settings")
    rules = ExclusionRules(**_typed("exclusions", ExclusionRules, values.get("exclusions", {})))
    return AnalysisConfig(exclusions=rules, **_typed("analysis", AnalysisConfig, values.get("analysis", {})))


def load_config(path: str | Path | None = None) -> AnalysisConfig:
    """Read ``analysis.toml``; ``None`` gives the defaults."""
    if path is None:
        return AnalysisConfig()
    path = Path(path)
    if not path.exists():
        raise InputFileNotFound(f"config file not found: {path}")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from None
    try:
        return config_from_dict(values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {exc}") from None


def as_config(config: AnalysisConfig | Mapping[str, Any] | str | Path | None) -> AnalysisConfig:
    """Accept a config object, a TOML-shaped dict, a path, or ``None`` (defaults)."""
    if isinstance(config, AnalysisConfig):
        return config
    if config is None or isinstance(config, (str, Path)):
        return load_config(config)
    return config_from_dict(config)
