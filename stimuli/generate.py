"""Building a stimulus set: photos -> clean crops -> targeted perturbations -> PNGs + manifest.

The work is cut into *work units* of a fixed number of consecutive source photos (sorted
by name). A unit is the grain of everything that must be reproducible or restartable:

* **batching**: every (photo, pair, target, budget) of a unit goes through one call of the
  batched PGD engine, in chunks of ``batch_size``, and its scoring through fixed batches,
  so the numbers do not depend on how many processes share the work (floating-point
  results depend on which images share a batch, so the batch size is a set parameter);
* **resume**: when a unit is finished its rows are written to ``SETDIR/units/`` (a small
  manifest of its own). A re-run skips every unit that has its journal and images, so
  finished work is never recomputed, and a crash loses at most the units in flight;
* **scale-out**: under ``torchrun`` unit ``k`` goes to rank ``k mod WORLD_SIZE``; every
  rank writes its images and unit journals, and rank 0 merges the journals into one
  manifest, sorted by content, so the result equals a single-process run byte for byte.

The set's parameters (everything that changes a pixel or a number in the manifest) are
recorded in ``set.json`` before any work starts; running again into the same folder with
different parameters is refused rather than mixing two designs in one set.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stimuli.files import (
    CONDITIONS,
    atomic_write_json,
    read_rows,
    save_stimulus,
    sort_key,
    write_rows,
)
from advbias.manifest import pair_key
from stimuli.sources import Source, load_crop, plan_sources

#: Format tag written to set.json; bump when the layout changes incompatibly.
SET_FORMAT = "advbias-stimulus-set/1"

CONTROLS: tuple[str, ...] = ("flip", "noise")

#: ``--batch-size auto``: attack items (photo x pair x target x budget) per engine batch and
#: work unit. Fixed per device type rather than timed, because a timed choice would make
#: the pixels depend on the machine's load. CPUs run best at small batches (throughput
#: drops past ~16 images in cache); GPUs want large ones.
AUTO_BATCH = {"cpu": 16, "cuda": 256, "mps": 64}

#: Images per forward pass when scoring the saved files.
EVAL_BATCH = 32


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class SetParams:
    """Everything that determines the contents of a set (and nothing that does not)."""

    images: str
    pairs: tuple[tuple[str, str], ...]
    eps: tuple[int, ...]
    steps: int
    models: tuple[str, ...]
    holdout: tuple[str, ...]
    controls: tuple[str, ...]
    size: int
    seed: int
    limit: int | None
    batch_size: int

    @property
    def unit_images(self) -> int:
        """Photos per work unit: as many as fill one batch of attack items (at least one)."""
        return max(1, self.batch_size // self.targets_per_image)

    @property
    def targets_per_image(self) -> int:
        return len(self.pairs) * 2 * len(self.eps)

    def identity(self) -> dict[str, Any]:
        """The parameters compared on resume. ``images`` is left out on purpose: the sources
        themselves are compared by content (``sources_sha256``), so a moved photo folder
        still resumes while a changed one is refused."""
        d = asdict(self)
        d.pop("images")
        d["pairs"] = [f"{a}:{b}" for a, b in self.pairs]
        d["eps"] = list(self.eps)
        d["models"] = list(self.models)
        d["holdout"] = list(self.holdout)
        d["controls"] = list(self.controls)
        return d


def _as_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [str(v).strip() for v in value if str(v).strip()]
    except TypeError:
        raise ValueError(f"{what} must be a list or a comma-separated string, got {value!r}") from None


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
                    raise ValueError(f"--pairs: {chunk.strip()!r} is not of the form A:B (e.g. cat:truck)")
                items.append((parts[0], parts[1]))
        else:
            p = tuple(p)
            if len(p) != 2:
                raise ValueError(f"--pairs: {p!r} is not a pair (A, B)")
            items.append((str(p[0]), str(p[1])))
    if not items:
        raise ValueError("--pairs: give at least one pair A:B (e.g. cat:truck)")
    out: list[tuple[str, str]] = []
    seen: set[frozenset[str]] = set()
    for a, b in items:
        a, b = a.strip().lower(), b.strip().lower()
        if a == b:
            raise ValueError(f"--pairs: {a}:{b} names the same category twice; A and B must differ")
        try:
            ca, cb = set(resolve_target(a)), set(resolve_target(b))
        except ValueError as exc:
            raise ValueError(f"--pairs: {exc}") from None
        if ca & cb:
            raise ValueError(f"--pairs: {a} and {b} share ImageNet classes {sorted(ca & cb)}; A and B must not overlap")
        if frozenset((a, b)) in seen:
            raise ValueError(f"--pairs: the pair {a}:{b} is listed twice")
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
            raise ValueError(f"--eps: {text!r} is not a whole number of 8-bit levels (1..255)")
        if not 1 <= value <= 255:
            raise ValueError(f"--eps: {value} is outside 1..255 (budgets are in 8-bit levels)")
        values.append(value)
    if not values:
        raise ValueError("--eps: give at least one budget in 8-bit levels, e.g. 2,4,8,16")
    return tuple(sorted(set(values)))


def make_params(
    images: str | os.PathLike,
    pairs: Any,
    eps: Any,
    *,
    steps: int,
    models: Any,
    holdout: Any,
    controls: Any,
    size: int,
    seed: int,
    limit: int | None,
    batch_size: int | str,
    device: str,
) -> SetParams:
    """Validate every user-facing parameter, before anything is read or written."""
    pairs_t = parse_pairs(pairs)
    eps_t = parse_eps(eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be a positive whole number, got {steps!r}")
    models_l = _as_list(models, "--models")
    if not models_l:
        raise ValueError("--models: give at least one model to attack")
    if len(set(models_l)) != len(models_l):
        raise ValueError(f"--models: a model is listed twice in {','.join(models_l)}")
    holdout_l = _as_list(holdout, "--holdout")
    overlap = sorted(set(models_l) & set(holdout_l))
    if overlap:
        raise ValueError(f"--holdout: {','.join(overlap)} is also attacked; a held-out model must not be in --models")
    if len(set(holdout_l)) != len(holdout_l):
        raise ValueError(f"--holdout: a model is listed twice in {','.join(holdout_l)}")
    controls_l = [c.lower() for c in _as_list(controls, "--controls")]
    unknown = [c for c in controls_l if c not in CONTROLS]
    if unknown:
        raise ValueError(f"--controls: unknown control {unknown[0]!r}; choose from {', '.join(CONTROLS)}")
    controls_t = tuple(c for c in CONTROLS if c in controls_l)
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
        raise ValueError(f"--size must be a whole number of pixels between 16 and 4096, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative whole number, got {seed!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit must be a positive whole number, got {limit!r}")
    if batch_size == "auto":
        batch_size = AUTO_BATCH.get(device.split(":")[0], 16)
    if isinstance(batch_size, str) and batch_size.strip().isdigit():
        batch_size = int(batch_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be 'auto' or a positive whole number, got {batch_size!r}")
    images_s = str(images)
    if images_s != "builtin":
        images_s = str(Path(images_s).expanduser().resolve())
    return SetParams(
        images=images_s, pairs=pairs_t, eps=eps_t, steps=steps, models=tuple(models_l), holdout=tuple(holdout_l),
        controls=controls_t, size=size, seed=seed, limit=limit, batch_size=batch_size,
    )


def sources_digest(sources: Sequence[Source]) -> str:
    """One hash for the ordered list of (name, content hash) of the sources."""
    h = hashlib.sha256()
    for s in sources:
        h.update(f"{s.name}\t{s.sha256}\t{'' if s.label is None else s.label}\n".encode())
    return h.hexdigest()


def _derived_seed(*parts: Any) -> int:
    """A 63-bit seed from the set seed and an item's identity (independent of batching and rank)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- distributed


class _Dist:
    """The torchrun process group, when there is one (``WORLD_SIZE`` > 1)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.owned = False
        self.backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    def start(self, device: str) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        self.backend = "nccl" if device.startswith("cuda") else "gloo"
        if self.backend == "nccl":
            import torch

            torch.cuda.set_device(torch.device(device))  # NCCL collectives use the current device
        if not dist.is_initialized():
            # Ranks wait for each other at the end of generation; allow for long, uneven runs.
            dist.init_process_group(backend=self.backend, timeout=_dt.timedelta(hours=48))
            self.owned = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False


def resolve_device(device: str, local_rank: int) -> str:
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here")
    elif device != "cpu" and not device.startswith("mps"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


# --------------------------------------------------------------------------- set folder


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    from importlib import metadata
    import zlib

    out = {"python": platform.python_version(), "zlib": zlib.ZLIB_VERSION}
    for dist in ("advbias", "torch", "timm", "numpy", "pillow", "foolbox", "scikit-image"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _unit_path(setdir: Path, k: int) -> Path:
    return setdir / "units" / f"unit-{k:06d}.csv"


def check_setdir(setdir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse a folder that holds something else; return the existing set.json when resuming."""
    if setdir.exists() and not setdir.is_dir():
        raise ValueError(f"--out {setdir} exists and is not a folder")
    meta_path = setdir / "set.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            old = meta["parameters"]
        except (ValueError, KeyError):
            raise ValueError(f"{meta_path} is unreadable; choose a new --out folder") from None
        if meta.get("format") != SET_FORMAT:
            raise ValueError(f"{setdir} holds a set of another format ({meta.get('format')}); choose a new --out folder")
        compared = {k: v for k, v in old.items() if k != "images"}
        if compared != identity:
            diffs = [
                f"{k} {_show(compared.get(k))} -> {_show(identity.get(k))}"
                for k in sorted(set(compared) | set(identity))
                if compared.get(k) != identity.get(k)
            ]
            raise ValueError(
                f"{setdir} already holds a set built with other parameters ({'; '.join(diffs)}); "
                "use a new --out folder or the original parameters"
            )
        return meta
    if setdir.is_dir() and any(setdir.iterdir()):
        raise ValueError(f"--out {setdir} is not empty and holds no stimulus set (no set.json); choose a new folder")
    return None


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(str(x) for x in v) or "none"
    return "none" if v is None else str(v)


def _unit_done(setdir: Path, k: int) -> bool:
    path = _unit_path(setdir, k)
    if not path.is_file():
        return False
    try:
        rows = read_rows(path)
    except (ValueError, OSError):
        return False
    return bool(rows) and all((setdir / r["file"]).is_file() for r in rows)


# --------------------------------------------------------------------------- computing a unit


@dataclass
class _Scorer:
    """Scores saved 8-bit images under the attacked ensemble and the held-out models."""

    ensemble: Any
    holdout: Any | None
    device: str
    class_sets: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import attacks

        # ensemble_category is chosen among the 16 entry-level categories only (the manifest
        # contract), whatever extra categories a user has defined.
        known = attacks.categories()
        self.categories = {name: known[name] for name in _entry_level_names()}
        self.category_names = list(self.categories)
        self.class_names = [attacks.class_name(i) for i in range(1000)]

    def target_classes(self, target: str) -> list[int]:
        if target not in self.class_sets:
            import attacks

            self.class_sets[target] = attacks.resolve_target(target)
        return self.class_sets[target]

    def probabilities(self, model: Any, images: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """Softmax of the (ensemble-averaged) logits for uint8 NCHW images, on the CPU, float64."""
        import torch
        from attacks.pgd import prepare_model

        # Same device and channels_last layout as the attack engine uses (several times
        # faster on CPU than feeding NCHW-contiguous images to a channels_last model).
        prepare_model(model, torch.device(self.device), True)
        out = []
        with torch.no_grad():
            for start in range(0, images.shape[0], EVAL_BATCH):
                x = images[start : start + EVAL_BATCH].to(self.device, torch.float32) / 255.0
                x = x.contiguous(memory_format=torch.channels_last)
                out.append(torch.softmax(model(x).float(), dim=1).double().cpu())
        return torch.cat(out)

    def score(self, images: "torch.Tensor", targets: Sequence[str | None]) -> list[dict[str, Any]]:  # noqa: F821
        probs = self.probabilities(self.ensemble, images)
        hold = self.probabilities(self.holdout, images) if self.holdout is not None else None
        cat_index = {name: idx for name, idx in self.categories.items()}
        cat_probs = np.stack([probs[:, idx].sum(dim=1).numpy() for idx in cat_index.values()], axis=1)
        rows = []
        for i, target in enumerate(targets):
            p = probs[i]
            top1 = int(p.argmax())
            best_cat = int(cat_probs[i].argmax())
            row: dict[str, Any] = {
                "ensemble_top1": top1,
                "ensemble_top1_name": self.class_names[top1],
                "ensemble_top1_prob": float(p[top1]),
                "ensemble_category": self.category_names[best_cat],
                "ensemble_category_prob": float(cat_probs[i, best_cat]),
            }
            if target:
                classes = self.target_classes(target)
                row["ensemble_target_prob"] = float(p[classes].sum())
                row["ensemble_success"] = int(top1 in classes)
            if hold is not None:
                h = hold[i]
                htop = int(h.argmax())
                row["holdout_top1"] = htop
                row["holdout_top1_name"] = self.class_names[htop]
                if target:
                    classes = self.target_classes(target)
                    row["holdout_target_prob"] = float(h[classes].sum())
                    row["holdout_success"] = int(htop in classes)
            rows.append(row)
        return rows


def _save_workers() -> int:
    """Threads for PNG encoding: the cores this process may use, at most 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


def _entry_level_names() -> list[str]:
    from importlib import resources

    text = resources.files("attacks").joinpath("data/imagenet16_categories.json").read_text()
    return list(json.loads(text)["categories"])


def _compute_unit(
    unit: Sequence[Source],
    k: int,
    params: SetParams,
    setdir: Path,
    scorer: _Scorer,
    device: str,
    ticker: Any = None,
) -> list[dict[str, Any]]:
    """Attack, quantise, add controls, score and save one unit; returns its manifest rows."""
    import torch

    import attacks

    crops = [load_crop(s, params.size) for s in unit]
    clean = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()  # (n, 3, H, W) uint8

    # One attack item per (photo, pair, budget, target), in a fixed order.
    items: list[tuple[int, tuple[str, str], int, str]] = [
        (i, pair, e, target)
        for i in range(len(unit))
        for pair in params.pairs
        for e in params.eps
        for target in pair
    ]
    index = torch.tensor([it[0] for it in items], dtype=torch.long)
    levels = torch.tensor([it[2] for it in items], dtype=torch.long)
    x0 = clean[index]
    torch.manual_seed(_derived_seed(params.seed, "unit", k))
    x_adv = attacks.linf_pgd(
        scorer.ensemble,
        x0.float() / 255.0,
        [it[3] for it in items],
        levels.float() / 255.0,
        steps=params.steps,
        seed=_derived_seed(params.seed, "attack", k),
        device=device,
        batch_size=params.batch_size,
        progress=ticker if ticker is not None else False,
    )
    adv = attacks.quantize(x_adv.cpu(), x0, levels).cpu()
    if adv.dtype != torch.uint8:
        raise RuntimeError("attacks.quantize must return uint8 images")

    # Every image of the unit, with its manifest fields before scoring.
    images: list[torch.Tensor] = []
    meta: list[dict[str, Any]] = []
    for i, src in enumerate(unit):
        images.append(clean[i])
        meta.append({"_i": i, "condition": "clean", "pair": None, "target": None, "eps": 0, "steps": 0})
    for j, (i, (a, b), e, target) in enumerate(items):
        images.append(adv[j])
        meta.append(
            {"_i": i, "condition": "adversarial", "pair": f"{a}:{b}", "target": target, "eps": e, "steps": params.steps}
        )
    if "flip" in params.controls:
        for j, (i, (a, b), e, target) in enumerate(items):
            delta = adv[j].to(torch.int16) - clean[i].to(torch.int16)
            flipped = (clean[i].to(torch.int16) + torch.flip(delta, dims=[1])).clamp(0, 255).to(torch.uint8)
            images.append(flipped)
            meta.append({"_i": i, "condition": "flip", "pair": f"{a}:{b}", "target": target, "eps": e, "steps": 0})
    if "noise" in params.controls:
        for i, src in enumerate(unit):
            for a, b in params.pairs:
                for e in params.eps:
                    gen = torch.Generator().manual_seed(_derived_seed(params.seed, "noise", src.sha256, a, b, e))
                    signs = torch.randint(0, 2, clean[i].shape, generator=gen, dtype=torch.int16) * 2 - 1
                    noisy = (clean[i].to(torch.int16) + signs * e).clamp(0, 255).to(torch.uint8)
                    images.append(noisy)
                    meta.append({"_i": i, "condition": "noise", "pair": f"{a}:{b}", "target": None, "eps": e, "steps": 0})

    stack = torch.stack(images)
    scores = scorer.score(stack, [m["target"] for m in meta])
    images_dir = setdir / "images"
    linfs = (stack.to(torch.int16) - clean[[m["_i"] for m in meta]].to(torch.int16)).abs().amax(dim=(1, 2, 3))
    for m, linf in zip(meta, linfs.tolist()):
        if linf > m["eps"]:  # the engine's quantize guarantees this; never save a violation
            raise RuntimeError(f"budget violated for {unit[m['_i']].name}: linf {linf} > eps {m['eps']}")
    # PNG encoding (zlib) costs as much as the attack itself on a GPU; Pillow releases the
    # GIL while encoding, so a thread pool spreads it over the cores. Bytes do not depend on it.
    hwc = stack.permute(0, 2, 3, 1).contiguous().numpy()
    with ThreadPoolExecutor(max_workers=_save_workers()) as pool:
        ids = list(pool.map(lambda px: save_stimulus(images_dir, px), hwc))
    rows = []
    for stimulus_id, linf, m, s in zip(ids, linfs.tolist(), meta, scores):
        src = unit[m["_i"]]
        pair = m["pair"]
        row = {
            "stimulus_id": stimulus_id,
            "file": f"images/{stimulus_id}.png",
            "source": src.name,
            "source_sha256": src.sha256,
            "source_label": src.label,
            "condition": m["condition"],
            "pair": pair,
            "target": m["target"],
            "eps": m["eps"],
            "linf": linf,
            "steps": m["steps"],
            "pair_key": pair_key(src.sha256, *pair.split(":"), m["eps"]) if pair else None,
            **s,
        }
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the whole set


def _count(rows: Sequence[dict[str, str]]) -> dict[str, Any]:
    counts: dict[str, Any] = {"stimuli": len(rows), "sources": len({r["source_sha256"] for r in rows})}
    for c in CONDITIONS:
        counts[c] = sum(1 for r in rows if r["condition"] == c)
    counts["pair_keys"] = len({r["pair_key"] for r in rows if r["pair_key"]})
    return counts


def generate_set(
    images: str | os.PathLike = "builtin",
    pairs: Any = (("cat", "truck"),),
    eps: Any = (2, 16),
    *,
    out: str | os.PathLike,
    steps: int = 100,
    models: Any = ("lite0",),
    holdout: Any = None,
    controls: Any = (),
    size: int = 224,
    seed: int = 0,
    limit: int | None = None,
    device: str = "auto",
    batch_size: int | str = "auto",
    progress: bool = True,
) -> Path:
    """Build (or finish) the stimulus set in ``out`` and return its path.

    Mirrors ``advbias stimuli generate``; see ``docs/stimuli.md``. Raises ``ValueError`` /
    ``FileNotFoundError`` with a one-line message for bad input, before writing anything.
    """
    dist = _Dist()
    dev = resolve_device(device, dist.local_rank)
    params = make_params(
        images, pairs, eps, steps=steps, models=models, holdout=holdout, controls=controls, size=size,
        seed=seed, limit=limit, batch_size=batch_size, device=dev,
    )
    setdir = Path(out).expanduser()
    dist.start(dev)
    try:
        return _generate(params, setdir, dist, dev, progress)
    finally:
        dist.close()


class _StepsToImages:
    """Adapts the engine's progress (image-steps) to the outer bar's unit (source photos)."""

    def __init__(self, bar: Any, per_photo: int) -> None:
        self.bar, self.per_photo = bar, per_photo

    def update(self, n: int) -> None:
        self.bar.update(n / self.per_photo)


def _generate(params: SetParams, setdir: Path, dist: _Dist, device: str, progress: bool) -> Path:
    import torch

    started = _now()
    # Rank 0 reads the photos and checks the folder; the others get its plan (or its error).
    plan: Any
    if dist.rank == 0:
        try:
            sources, skipped, ignored = plan_sources(params.images, params.limit)
            identity = {**params.identity(), "sources_sha256": sources_digest(sources)}
            existing = check_setdir(setdir, identity)
            plan = ("ok", sources, skipped, ignored, identity, existing)
        except (ValueError, FileNotFoundError) as exc:
            plan = ("error", type(exc).__name__, str(exc))
    else:
        plan = None
    plan = dist.broadcast(plan)
    if plan[0] == "error":
        raise (FileNotFoundError if plan[1] == "FileNotFoundError" else ValueError)(plan[2])
    _, sources, skipped, ignored, identity, existing = plan
    if dist.rank == 0:
        for s in skipped:
            print(f"advbias: skipped {s.name}: {s.reason}", file=sys.stderr)

    units = [sources[i : i + params.unit_images] for i in range(0, len(sources), params.unit_images)]
    mine = [k for k in range(len(units)) if k % dist.world == dist.rank]
    pending = [k for k in mine if not _unit_done(setdir, k)]

    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.cuda.set_device(torch.device(device))
    torch.manual_seed(params.seed)

    # Load the models before creating anything, so that a bad model name writes nothing.
    scorer = None
    if pending:
        import attacks

        ensemble = attacks.load_ensemble(list(params.models), device=device)
        held = attacks.load_ensemble(list(params.holdout), device=device) if params.holdout else None
        scorer = _Scorer(ensemble, held, device)

    meta_path = setdir / "set.json"
    if dist.rank == 0:
        (setdir / "images").mkdir(parents=True, exist_ok=True)
        (setdir / "units").mkdir(exist_ok=True)
        # Temporary files left by a run that was killed mid-write (no rank is writing yet).
        for folder in (setdir, setdir / "images", setdir / "units"):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        if existing is None:
            models_desc = _describe(params.models, scorer.ensemble if scorer else None)
            holdout_desc = _describe(params.holdout, scorer.holdout if scorer else None)
            meta = {
                "format": SET_FORMAT,
                "parameters": {"images": params.images, **identity},
                "attack": _attack_settings(),
                "models": models_desc,
                "holdout_models": holdout_desc,
                "sources": {
                    "count": len(sources),
                    "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
                    "ignored_non_images": ignored,
                },
                "versions": _versions(),
                "started_at": started,
                "finished_at": None,
                "counts": None,
                "run": None,
            }
            atomic_write_json(meta_path, meta)
    dist.barrier()

    done_before = len(mine) - len(pending)
    bar = None
    if progress and dist.rank == 0:
        from tqdm.auto import tqdm

        total = sum(len(units[k]) for k in mine)
        bar = tqdm(
            total=total,
            initial=sum(len(units[k]) for k in mine if k not in pending),
            unit="img",
            desc="stimuli" if dist.world == 1 else f"stimuli (rank 0 of {dist.world})",
            dynamic_ncols=True,
            file=sys.stderr,
            smoothing=0.1,
            bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
        )
        if done_before:
            bar.write(f"advbias: resuming: {done_before} of {len(mine)} work units already done")
    try:
        done = float(bar.n) if bar is not None else 0.0
        for k in pending:
            ticker = _StepsToImages(bar, params.targets_per_image * params.steps) if bar is not None else None
            rows = _compute_unit(units[k], k, params, setdir, scorer, device, ticker)
            write_rows(_unit_path(setdir, k), sorted(rows, key=sort_key))
            if bar is not None:
                done += len(units[k])
                bar.n = done  # exact count after the fractional per-step updates
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()

    computed = dist_sum(dist, len(pending))
    dist.barrier()
    if dist.rank == 0:
        rows: list[dict[str, str]] = []
        for k in range(len(units)):
            if not _unit_done(setdir, k):
                raise RuntimeError(f"work unit {k} is missing after generation; run the command again to finish it")
            rows.extend(read_rows(_unit_path(setdir, k)))
        rows.sort(key=sort_key)
        write_rows(setdir / "manifest.csv", rows)
        meta = json.loads(meta_path.read_text())
        meta["finished_at"] = _now()
        meta["counts"] = _count(rows)
        meta["run"] = {
            "started_at": started,
            "finished_at": meta["finished_at"],
            "device": device,
            "world_size": dist.world,
            "torch_threads": torch.get_num_threads(),
            "units": len(units),
            "units_computed": computed,
            "units_reused": len(units) - computed,
        }
        atomic_write_json(meta_path, meta)
    dist.barrier()
    return setdir


def dist_sum(dist: _Dist, value: int) -> int:
    if not dist.active:
        return value
    import torch
    import torch.distributed as tdist

    t = torch.tensor([value], dtype=torch.long, device="cuda" if dist.backend == "nccl" else "cpu")
    tdist.all_reduce(t)
    return int(t.item())


def _describe(names: Sequence[str], ensemble: Any) -> list[dict[str, Any]]:
    if ensemble is not None:
        return list(ensemble.describe())
    if not names:
        return []
    import attacks

    return list(attacks.load_ensemble(list(names)).describe())


def _attack_settings() -> dict[str, Any]:
    """The engine's defaults used for every attack (the set's method section needs them)."""
    import inspect

    import attacks

    sig = inspect.signature(attacks.linf_pgd)
    keep = ("step_size", "loss", "random_start", "momentum", "input_diversity")
    settings: dict[str, Any] = {"method": "targeted L-infinity PGD (attacks.linf_pgd)"}
    settings.update({k: sig.parameters[k].default for k in keep if k in sig.parameters})
    if settings.get("step_size", 0) is None:
        settings["step_size"] = "2.5 * eps / steps"
    return settings
