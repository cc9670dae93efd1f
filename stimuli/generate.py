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
* **scale-out**: under ``torchrun`` unit ``k`` goes to rank ``k mod WORLD_SIZE``
  (:mod:`stimuli.dist`); every rank writes its images and unit journals, and rank 0 merges
  the journals into one manifest, sorted by content, so the result equals a single-process
  run byte for byte.

The set's parameters (:mod:`stimuli.params`, everything that changes a pixel or a number in
the manifest) are recorded in ``set.json`` before any work starts; running again into the
same folder with different parameters is refused rather than mixing two designs in one set.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from advbias.errors import InputError, user_error
from advbias.manifest import IMAGE_CONDITIONS, pair_key, read_records, write_manifest
from advbias.setdir import (
    SET_JSON_NAME,
    SetFileError,
    image_file,
    images_dir,
    read_set_json,
    set_json_path,
    write_set_json,
)
from stimuli.dist import Dist, resolve_device
from stimuli.files import save_stimulus
from stimuli.params import (
    SetParams,
    derived_seed,
    make_params,
    sources_digest,
)
from stimuli.scoring import Scorer
from stimuli.sources import Source, load_crop, plan_sources


@dataclass(frozen=True)
class SetSummary:
    """What :func:`generate_set` did. Usable as a path (``Path(summary)``), which is the set folder."""

    path: Path
    counts: dict[str, Any]
    run: dict[str, Any]

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


# --------------------------------------------------------------------------- set folder


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of everything that can change a stimulus's bytes or scores (recorded in set.json)."""
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
        raise InputError(f"--out {setdir} exists and is not a folder")
    meta_path = set_json_path(setdir)
    if meta_path.is_file():
        try:
            meta = read_set_json(meta_path)
        except SetFileError as exc:
            if exc.field == "format":
                raise InputError(f"{setdir} holds a set of another format ({exc}); choose a new --out folder") from None
            raise InputError(f"{meta_path} is unreadable ({exc}); choose a new --out folder") from None
        old = meta["parameters"]
        compared = {k: v for k, v in old.items() if k != "images"}
        if compared != identity:
            diffs = [
                f"{k} {_show(compared.get(k))} -> {_show(identity.get(k))}"
                for k in sorted(set(compared) | set(identity))
                if compared.get(k) != identity.get(k)
            ]
            raise InputError(
                f"{setdir} already holds a set built with other parameters ({'; '.join(diffs)}); "
                "use a new --out folder or the original parameters"
            )
        return meta
    if setdir.is_dir() and any(setdir.iterdir()):
        raise InputError(f"--out {setdir} is not empty and holds no stimulus set (no {SET_JSON_NAME}); choose a new folder")
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
        rows = read_records(path)
    except (ValueError, OSError):
        return False
    return bool(rows) and all((setdir / r["file"]).is_file() for r in rows)


# --------------------------------------------------------------------------- computing a unit


def _save_workers() -> int:
    """Threads for PNG encoding: the cores this process may use, at most 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


def _attack_items(unit: Sequence[Source], params: SetParams) -> list[tuple[int, tuple[str, str], int, str]]:
    """One attack item per (photo, pair, budget, target), in a fixed order."""
    return [(i, pair, e, target) for i in range(len(unit)) for pair in params.pairs for e in params.eps
            for target in pair]


def _attack(clean: "torch.Tensor", items, k: int, params: SetParams, scorer: Scorer, device: str,  # noqa: F821
            ticker: Any, tag: tuple[str, ...] = ()) -> "torch.Tensor":  # noqa: F821
    """The unit's adversarial images on one model set, rounded to uint8 within each item's budget."""
    import torch

    import attacks

    index = torch.tensor([it[0] for it in items], dtype=torch.long)
    levels = torch.tensor([it[2] for it in items], dtype=torch.long)
    x0 = clean[index]
    eps = levels.float() / 255.0
    torch.manual_seed(derived_seed(params.seed, "unit", k, *tag))
    x_adv = attacks.linf_pgd(
        scorer.ensemble, x0.float() / 255.0, [it[3] for it in items], eps,
        recipe=params.recipe,
        seed=derived_seed(params.seed, "attack", k, *tag), device=device,
        batch_size=params.batch_size, progress=ticker if ticker is not None else False,
    )
    adv = attacks.quantize(x_adv.cpu(), x0, levels).cpu()
    if adv.dtype != torch.uint8:
        raise RuntimeError("attacks.quantize must return uint8 images")
    return adv


def _set_images(unit: Sequence[Source], clean, adv, items, params: SetParams, name: str) -> tuple[list, list[dict[str, Any]]]:
    """One model set's images of the unit (adversarial and controls) with their manifest fields before scoring."""
    import torch

    from stimuli.controls import flip_control, noise_control, phase_control

    images: list[torch.Tensor] = []
    meta: list[dict[str, Any]] = []
    tag = params.set_tag(name)

    def add(img: Any, i: int, cond: str, pair: str, target: str | None, e: int, steps: int) -> None:
        images.append(torch.as_tensor(np.ascontiguousarray(img)))
        meta.append({"_i": i, "condition": cond, "pair": pair, "target": target, "eps": e, "steps": steps,
                     "model_set": name})

    for j, (i, (a, b), e, target) in enumerate(items):
        add(adv[j], i, "adversarial", f"{a}:{b}", target, e, params.steps)
    if "flip" in params.controls:  # the same perturbation, upside down
        for j, (i, (a, b), e, target) in enumerate(items):
            add(flip_control(clean[i].numpy(), adv[j].numpy()), i, "flip", f"{a}:{b}", target, e, 0)
    if "noise" in params.controls:  # random +/-eps per pixel
        for i, src in enumerate(unit):
            for a, b in params.pairs:
                for e in params.eps:
                    gen = torch.Generator().manual_seed(derived_seed(params.seed, "noise", src.sha256, a, b, e, *tag))
                    signs = torch.randint(0, 2, clean[i].shape, generator=gen, dtype=torch.int16) * 2 - 1
                    add(noise_control(clean[i].numpy(), e, signs.numpy()), i, "noise", f"{a}:{b}", None, e, 0)
    if "phase" in params.controls:  # the perturbation's amplitude spectrum with random phases
        for j, (i, (a, b), e, target) in enumerate(items):
            seed = derived_seed(params.seed, "phase", unit[i].sha256, a, b, e, target, name)
            add(phase_control(clean[i].numpy(), adv[j].numpy(), e, seed), i, "phase", f"{a}:{b}", target, e, 0)
    return images, meta


def _save(setdir: Path, unit: Sequence[Source], stack, clean, meta: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
    """Check every budget, then write the PNGs; returns their ids and measured L-inf distances."""
    import torch

    linfs = (stack.to(torch.int16) - clean[[m["_i"] for m in meta]].to(torch.int16)).abs().amax(dim=(1, 2, 3))
    for m, linf in zip(meta, linfs.tolist()):
        if linf > m["eps"]:  # the engine's quantize guarantees this; never save a violation
            raise RuntimeError(f"budget violated for {unit[m['_i']].name}: linf {linf} > eps {m['eps']}")
    # PNG encoding (zlib) costs as much as the attack itself on a GPU; Pillow releases the
    # GIL while encoding, so a thread pool spreads it over the cores. Bytes do not depend on it.
    hwc = stack.permute(0, 2, 3, 1).contiguous().numpy()
    with ThreadPoolExecutor(max_workers=_save_workers()) as pool:
        ids = list(pool.map(lambda px: save_stimulus(setdir, px), hwc))
    return ids, linfs.tolist()


def _compute_unit(unit: Sequence[Source], k: int, params: SetParams, setdir: Path, scorers: dict[str, Scorer],
                  device: str, ticker: Any = None) -> list[dict[str, Any]]:
    """Attack on every model set, quantise, add controls, score and save one unit; returns its manifest rows.

    The clean crops are shared by every model set (scored by the first set's ensemble, which is
    what catch trials rely on); every other image is made and scored on its own set.
    """
    import torch

    crops = [load_crop(s, params.size) for s in unit]
    clean = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()  # (n, 3, H, W) uint8
    items = _attack_items(unit, params)
    images: list[Any] = []
    meta: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    for n, (name, _models) in enumerate(params.sets):
        adv = _attack(clean, items, k, params, scorers[name], device, ticker, params.set_tag(name))
        set_images, set_meta = _set_images(unit, clean, adv, items, params, name)
        if n == 0:  # the clean crops, scored in one batch with the first set's images
            set_images = [clean[i] for i in range(len(unit))] + set_images
            set_meta = [{"_i": i, "condition": "clean", "pair": None, "target": None, "eps": 0, "steps": 0,
                         "model_set": ""} for i in range(len(unit))] + set_meta
        scores += scorers[name].score(torch.stack(set_images), [m["target"] for m in set_meta])
        images += set_images
        meta += set_meta
    stack = torch.stack(images)
    ids, linfs = _save(setdir, unit, stack, clean, meta)
    rows = []
    for stimulus_id, linf, m, s in zip(ids, linfs, meta, scores):
        src, pair = unit[m["_i"]], m["pair"]
        key_set = m["model_set"] if params.several_sets else ""
        rows.append({
            "stimulus_id": stimulus_id,
            "file": image_file(stimulus_id),
            "source": src.name,
            "source_sha256": src.sha256,
            "source_label": src.label,
            "condition": m["condition"],
            "pair": pair,
            "target": m["target"],
            "eps": m["eps"],
            "linf": linf,
            "steps": m["steps"],
            "pair_key": pair_key(src.sha256, *pair.split(":"), m["eps"], key_set) if pair else None,
            "model_set": m["model_set"],
            **s,
        })
    return rows


# --------------------------------------------------------------------------- the whole set


def _count(rows: Sequence[dict[str, str]]) -> dict[str, Any]:
    counts: dict[str, Any] = {"stimuli": len(rows), "sources": len({r["source_sha256"] for r in rows})}
    for c in IMAGE_CONDITIONS:
        counts[c] = sum(1 for r in rows if r["condition"] == c)
    counts["pair_keys"] = len({r["pair_key"] for r in rows if r["pair_key"]})
    counts["model_sets"] = len({r["model_set"] for r in rows if r["model_set"]})
    return counts


def generate_set(
    images: str | os.PathLike = "builtin",
    pairs: Any = (("cat", "truck"),),
    eps: Any = (2, 16),
    *,
    out: str | os.PathLike,
    models: Any = ("lite0",),
    model_sets: Any = None,
    holdout: Any = None,
    controls: Any = (),
    size: Any = 224,
    seed: Any = 0,
    limit: Any = None,
    device: str = "auto",
    batch_size: Any = "auto",
    progress: bool = True,
    **recipe: Any,
) -> SetSummary:
    """Build (or finish) the stimulus set in ``out``; returns its summary (a path-like of the folder).

    Mirrors ``advbias stimuli generate``; see ``docs/stimuli.md``. ``model_sets`` (``["conv=lite0,lite1",
    "b=lite2"]`` or ``{"conv": ["lite0", "lite1"]}``) takes the place of ``models``: every photo, target and
    budget is then made once per set. ``recipe`` holds the attack options of ``stimuli.params.RECIPE_OPTIONS``
    (``steps``, ``loss``, ``momentum``, ``input_diversity``, ``ti_kernel``, ``step_ratio``, ``cfm_prob``,
    ``finish_steps``; each left out or ``None`` is the default recipe's). Every parameter is checked
    here (numbers may be given as strings); bad input raises ``ValueError`` /
    ``FileNotFoundError`` with a one-line message, before anything is written.
    """
    dist = Dist()
    dev = resolve_device(device, dist.local_rank)
    params = make_params(
        images, pairs, eps, models=models, model_sets=model_sets, holdout=holdout, controls=controls, size=size,
        seed=seed, limit=limit, batch_size=batch_size, device=dev, **recipe,
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
        # Float steps can add up to a hair past the total; the bar is set exactly after each unit.
        self.bar.update(max(0.0, min(n / self.per_photo, self.bar.total - self.bar.n)))


def _plan(params: SetParams, setdir: Path, dist: Dist) -> tuple:
    """Rank 0 reads the photos and checks the folder; the other ranks get its plan (or its error)."""
    plan: Any = None
    failed: Exception | None = None
    if dist.rank == 0:
        try:
            sources, skipped, ignored = plan_sources(params.images, params.limit)
            identity = {**params.identity(), "sources_sha256": sources_digest(sources)}
            plan = ("ok", sources, skipped, ignored, identity, check_setdir(setdir, identity))
        except (ValueError, FileNotFoundError) as exc:  # every rank reports it, not only rank 0
            failed = exc
            plan = ("error", user_error(exc), str(exc))
    plan = dist.broadcast(plan)
    if plan[0] == "error":
        if failed is not None:
            raise failed  # rank 0: the exception itself, with its traceback
        raise (InputError if plan[1] else RuntimeError)(plan[2])
    if dist.rank == 0:
        for s in plan[2]:
            print(f"advbias: skipped {s.name}: {s.reason}", file=sys.stderr)
    return plan[1:]


def _prepare_torch(params: SetParams, device: str) -> None:
    """Seed torch and make CUDA deterministic.

    cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` from the environment when CUDA initialises, and
    deterministic matrix products need it set; there is no other way to pass it. So this is one
    of the two documented places where product code writes the environment
    (docs/architecture.md): it sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless already set)
    before the first CUDA call.
    """
    import torch

    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.cuda.set_device(torch.device(device))
    torch.manual_seed(params.seed)


def _start_folder(setdir: Path, params: SetParams, plan: tuple, scorers: dict[str, Scorer] | None,
                  started: str) -> None:
    """Rank 0: create the folders, clear temporary files of a killed run, write set.json for a new set."""
    sources, skipped, ignored, identity, existing = plan
    images_dir(setdir).mkdir(parents=True, exist_ok=True)
    (setdir / "units").mkdir(exist_ok=True)
    for folder in (setdir, images_dir(setdir), setdir / "units"):  # no rank is writing yet
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    if existing is not None:
        return
    meta = {
        "parameters": {"images": params.images, **identity},
        "attack": _attack_settings(params),
        "models": _describe(params.models, scorers[params.sets[0][0]].ensemble
                            if scorers and not params.several_sets else None),
        "model_sets": _describe_sets(params, scorers),
        "holdout_models": _describe(params.holdout, next(iter(scorers.values())).holdout if scorers else None),
        "sources": {
            "count": len(sources),
            "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
            "ignored_non_images": ignored,
        },
        "versions": versions(),
        "started_at": started,
        "finished_at": None,
        "counts": None,
        "run": None,
    }
    write_set_json(setdir, meta)


def _progress_bar(units: list, mine: list[int], pending: list[int], dist: Dist) -> Any:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=sum(len(units[k]) for k in mine),
        initial=sum(len(units[k]) for k in mine if k not in pending),
        unit="img",
        desc="stimuli" if dist.world == 1 else f"stimuli (rank 0 of {dist.world})",
        dynamic_ncols=True,
        file=sys.stderr,
        smoothing=0.1,
        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )
    if len(mine) > len(pending):
        bar.write(f"advbias: resuming: {len(mine) - len(pending)} of {len(mine)} work units already done")
    return bar


def _work(units: list, pending: list[int], params: SetParams, setdir: Path, scorers: dict[str, Scorer],
          device: str, bar: Any) -> None:
    """Compute and journal this rank's pending units."""
    done = float(bar.n) if bar is not None else 0.0
    for k in pending:
        per_photo = params.targets_per_image * params.steps * len(params.sets)
        ticker = _StepsToImages(bar, per_photo) if bar is not None else None
        rows = _compute_unit(units[k], k, params, setdir, scorers, device, ticker)
        write_manifest(_unit_path(setdir, k), rows)
        if bar is not None:
            done += len(units[k])
            bar.n = done  # exact count after the fractional per-step updates
            bar.refresh()


def _finish(setdir: Path, units: list, computed: int, started: str, device: str, dist: Dist,
            params: SetParams) -> SetSummary:
    """Rank 0: merge the unit journals into the manifest and complete set.json."""
    import torch

    rows: list[dict[str, str]] = []
    for k in range(len(units)):
        if not _unit_done(setdir, k):
            raise RuntimeError(f"work unit {k} is missing after generation; run the command again to finish it")
        rows.extend(read_records(_unit_path(setdir, k)))
    for row in rows:  # journals written before model sets: their images are the one set's
        if not row["model_set"] and row["condition"] != "clean" and not params.several_sets:
            row["model_set"] = params.sets[0][0]
    write_manifest(setdir, rows)
    meta = read_set_json(setdir)
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
    write_set_json(setdir, meta)
    return SetSummary(setdir, meta["counts"], meta["run"])


def _generate(params: SetParams, setdir: Path, dist: Dist, device: str, progress: bool) -> SetSummary:
    started = _now()
    plan = _plan(params, setdir, dist)
    sources = plan[0]
    units = [sources[i : i + params.unit_images] for i in range(0, len(sources), params.unit_images)]
    mine = [k for k in range(len(units)) if k % dist.world == dist.rank]
    pending = [k for k in mine if not _unit_done(setdir, k)]
    _prepare_torch(params, device)

    # Load the models before creating anything, so that a bad model name writes nothing.
    scorers = None
    if pending:
        import attacks

        held = attacks.load_ensemble(list(params.holdout), device=device) if params.holdout else None
        scorers = {name: Scorer(attacks.load_ensemble(list(models), device=device), held, device)
                   for name, models in params.sets}
    if dist.rank == 0:
        _start_folder(setdir, params, plan, scorers, started)
    dist.barrier()

    bar = _progress_bar(units, mine, pending, dist) if progress and dist.rank == 0 else None
    try:
        _work(units, pending, params, setdir, scorers, device, bar)
    finally:
        if bar is not None:
            bar.close()
    computed = dist.sum(len(pending))
    dist.barrier()
    summary = _finish(setdir, units, computed, started, device, dist, params) if dist.rank == 0 else None
    dist.barrier()
    return dist.broadcast(summary)


def _describe(names: Sequence[str], ensemble: Any) -> list[dict[str, Any]]:
    if ensemble is not None:
        return list(ensemble.describe())
    if not names:
        return []
    import attacks

    return list(attacks.load_ensemble(list(names)).describe())


def _describe_sets(params: SetParams, scorers: dict[str, Scorer] | None) -> list[dict[str, Any]]:
    """Each model set as set.json records it: its name, its models (with weight hashes) and its recipe."""
    return [{"name": name, "models": _describe(models, scorers[name].ensemble if scorers else None),
             "recipe": _attack_settings(params)} for name, models in params.sets]


def _attack_settings(params: SetParams) -> dict[str, Any]:
    """The attack recipe used for every image (the set's method section needs it)."""
    return {"method": "targeted L-infinity PGD (attacks.linf_pgd)", "step_size": params.recipe.describe_step(),
            **params.recipe.to_dict()}
