"""Attack-engine benchmark: foolbox vs the batched engine vs the forward+backward floor.

All methods do the same work, side by side in one process: ``images`` foolbox ImageNet
photos x ``targets`` classes x ``eps`` budgets, ``steps`` PGD steps each, no random start.
Throughput is in image-steps per second (one forward and one input-gradient of one
image). Each method gets a warm-up, then ``rounds`` timed runs interleaved with the others
(so that load on the machine hits all alike); the best round counts.

* ``foolbox``: ``LinfPGD`` + ``TargetedMisclassification`` on the model as a user loads it
  from timm (BatchNorm unfolded, NCHW), one epsilon after another.
* ``foolbox+folded``: the same on the engine's model (BatchNorm folded): shows what the
  engine gains beyond the model preparation.
* ``engine``: :func:`attacks.linf_pgd`, one call for all budgets, auto layout and chunk.
* ``engine, default recipe``: the same call with :data:`attacks.DEFAULT_RECIPE`'s methods (its loss, momentum,
  DI, TI, CFM) at the same number of steps: what the recipe costs per step beyond plain PGD;
* ``floor``: forward + input-gradient alone, at the engine's chunk size and layout.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass

import torch

from .foolbox_backend import imagenet_samples, linf_pgd_foolbox
from .models import Ensemble, load_ensemble, load_model
from .chunks import choose_chunk, prepare_model, resolve_device
from .pgd import linf_pgd
from .recipe import DEFAULT_RECIPE, Recipe


@dataclass
class Row:
    models: str
    method: str
    seconds: float
    image_steps_per_s: float
    chunk: int | None = None
    layout: str = "NCHW"


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def bench_models(names: list[str], *, images: int, eps_levels: list[int], targets: list[int], steps: int,
                 device: torch.device, rounds: int) -> list[Row]:
    u8, _ = imagenet_samples(224)
    reps = -(-images // u8.shape[0])
    u8 = u8.repeat(reps, 1, 1, 1)[:images]
    combos = [(e, t) for e in eps_levels for t in targets]
    x = u8.repeat(len(combos), 1, 1, 1).float() / 255
    eps = torch.tensor([e for e, _ in combos for _ in range(images)], dtype=torch.float32) / 255
    tgt = torch.tensor([t for _, t in combos for _ in range(images)])
    work = x.shape[0] * steps
    label = "+".join(names)
    plain_recipe = Recipe(steps=steps)  # what foolbox runs: plain PGD, Madry's step rule

    # foolbox gets the models as a user loads them from timm: BatchNorm left in place.
    plain = Ensemble([load_model(n, fold_bn=False, device=device) for n in names]).to(device).eval()
    folded_fb = load_ensemble(names, device=device)
    engine_model = load_ensemble(names, device=device)

    autocast = torch.bfloat16 if device.type == "cuda" else None
    prepare_model(engine_model, device, True)
    chunk = choose_chunk(engine_model, tuple(x.shape), device, channels_last=True, autocast_dtype=autocast)

    def run_fb(model):
        return lambda: linf_pgd_foolbox(model, x, tgt, eps, recipe=plain_recipe, device=device)

    def run_engine():
        linf_pgd(engine_model, x, tgt, eps, recipe=plain_recipe, device=device, batch_size=chunk)

    def run_default():
        linf_pgd(engine_model, x, tgt, eps, recipe=DEFAULT_RECIPE.but(steps=steps, finish_steps=round(DEFAULT_RECIPE.finish_steps * steps / DEFAULT_RECIPE.steps)), device=device,
                 batch_size=chunk, seed=0)

    xs = x[:chunk].to(device).contiguous(memory_format=torch.channels_last)
    n_chunks = -(-x.shape[0] // chunk)

    def run_floor():
        for _ in range(n_chunks):
            for _ in range(steps):
                xi = xs.detach().requires_grad_(True)
                with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                    z = engine_model(xi)
                torch.autograd.grad(z.float()[:, 0].sum(), xi)

    methods = {
        "foolbox": run_fb(plain),
        "foolbox+folded": run_fb(folded_fb),
        "engine": run_engine,
        "engine, default recipe": run_default,
        "floor (fwd+bwd)": run_floor,
    }
    # Warm-up: one step of each on the full batch (allocator, oneDNN/cuDNN plans).
    one = Recipe(steps=1)
    linf_pgd_foolbox(plain, x, tgt, eps, recipe=one, device=device)
    linf_pgd_foolbox(folded_fb, x, tgt, eps, recipe=one, device=device)
    linf_pgd(engine_model, x, tgt, eps, recipe=one, device=device, batch_size=chunk)
    best = {k: float("inf") for k in methods}
    for _ in range(rounds):
        for key, fn in methods.items():
            best[key] = min(best[key], _timed(fn, device))
    rows = []
    for key, seconds in best.items():
        is_engine = key in ("engine", "engine, default recipe", "floor (fwd+bwd)")
        rows.append(Row(label, key, seconds, work / seconds, chunk if is_engine else x.shape[0] // len(eps_levels),
                        "channels_last" if is_engine else "NCHW"))
    return rows


def run(*, device: str = "auto", images: int = 8, steps: int = 10, eps_levels=(2, 4, 8, 16), targets=(281, 867),
        ensemble=("lite0", "lite1"), single="lite0", rounds: int = 2, threads: int | None = None) -> dict:
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    rows: list[Row] = []
    for names in ([single], list(ensemble)):
        rows += bench_models(list(names), images=images, eps_levels=list(eps_levels), targets=list(targets),
                             steps=steps, device=dev, rounds=rounds)
    env = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "work": f"{images} images x {len(targets)} targets x {len(eps_levels)} budgets x {steps} steps",
    }
    return {"env": env, "rows": [asdict(r) for r in rows]}


def to_markdown(result: dict) -> str:
    env, rows = result["env"], result["rows"]
    lines = [
        f"Work: {env['work']}; device: {env['device']}; torch {env['torch']}, {env['threads']} threads.",
        "",
        "| models | method | layout | chunk | seconds | image-steps/s | engine speed-up | engine time / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_models: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_models.setdefault(r["models"], {})[r["method"]] = r
    for models, methods in by_models.items():
        eng = methods["engine"]
        for method, r in methods.items():
            speed = eng["image_steps_per_s"] / r["image_steps_per_s"]
            ratio = f"{eng['seconds'] / r['seconds']:.2f}" if method == "floor (fwd+bwd)" else ""
            lines.append(
                f"| {models} | {method} | {r['layout']} | {r['chunk']} | {r['seconds']:.2f} | "
                f"{r['image_steps_per_s']:.1f} | {speed:.2f}x | {ratio} |"
            )
    return "\n".join(lines)


def main(args) -> int:
    result = run(device=args.device, images=args.images, steps=args.steps,
                 eps_levels=[int(e) for e in args.eps.split(",")], targets=[int(t) for t in args.targets.split(",")],
                 ensemble=args.ensemble.split(","), single=args.model, rounds=args.rounds, threads=args.threads)
    return publish(result, to_markdown(result), args.out)


def publish(result: dict, text: str, out: str | None) -> int:
    """Print a benchmark's table (or summary) and, with ``--out``, write the results and the text as JSON."""
    print(text)
    if out:
        with open(out, "w") as f:
            json.dump({**result, "markdown": text}, f, indent=2)
    return 0


# --------------------------------------------------------------------------- cold calls


def cold_child(method: str, model: str, images: int, eps_levels: list[int], targets: list[int], steps: int,
               threads: int | None) -> dict:
    """One attack call in this (fresh) process: the model and photos are loaded untimed, the call is timed."""
    if threads:
        torch.set_num_threads(threads)
    u8, _ = imagenet_samples(224)  # imports foolbox for both methods, untimed
    combos = [(e, t) for e in eps_levels for t in targets]
    x = u8[:images].repeat(len(combos), 1, 1, 1).float() / 255
    eps = torch.tensor([e for e, _ in combos for _ in range(images)], dtype=torch.float32) / 255
    tgt = torch.tensor([t for _, t in combos for _ in range(images)])
    net = load_model(model)
    recipe = Recipe(steps=steps)
    t0 = time.perf_counter()
    if method == "engine":
        linf_pgd(net, x, tgt, eps, recipe=recipe, device="cpu")
    elif method == "calibrated":  # the engine as it chose chunks before: timed extra passes first
        prepare_model(net, torch.device("cpu"), True)
        chunk = choose_chunk(net, tuple(x.shape), torch.device("cpu"))
        linf_pgd(net, x, tgt, eps, recipe=recipe, device="cpu", batch_size=chunk)
    else:
        linf_pgd_foolbox(net, x, tgt, eps, recipe=recipe, device="cpu")
    return {"method": method, "seconds": time.perf_counter() - t0, "image_steps": x.shape[0] * steps}


_COLD_METHODS = {"engine": "engine", "engine, calibrating first": "calibrated", "foolbox+folded": "foolbox"}


def cold(*, model: str = "lite0", images: int = 4, eps_levels=(2, 4, 8, 16), targets=(281, 867), steps: int = 5,
         rounds: int = 3, threads: int | None = None) -> dict:
    """The first call in a fresh process, engine (defaults: chunk chosen on the work) vs foolbox on the same
    folded model, each method in its own new process, alternating, ``rounds`` times; the median counts."""
    import os
    import statistics
    import subprocess
    import sys

    env = {**os.environ, "GIT_PYTHON_REFRESH": "quiet"}
    runs: dict[str, list[float]] = {"engine": [], "engine, calibrating first": [], "foolbox+folded": []}
    for _ in range(rounds):
        for method in runs:
            code = ("import json; from attacks.bench import cold_child; print(json.dumps(cold_child("
                    f"{_COLD_METHODS[method]!r}, {model!r}, {images}, {list(eps_levels)}, {list(targets)}, {steps}, "
                    f"{threads!r})))")
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            runs[method].append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"work": f"{images} images x {len(targets)} targets x {len(eps_levels)} budgets x {steps} steps, {model}",
            "runs": runs, "median_seconds": med, "engine_speedup": med["foolbox+folded"] / med["engine"]}


def main_cold(args) -> int:
    result = cold(model=args.model, images=args.images, eps_levels=[int(e) for e in args.eps.split(",")],
                  targets=[int(t) for t in args.targets.split(",")], steps=args.steps, rounds=args.rounds,
                  threads=args.threads)
    lines = [f"Cold (fresh process) first call, {result['work']}:"]
    for method, secs in result["runs"].items():
        lines.append(f"  {method}: " + ", ".join(f"{s:.2f} s" for s in secs)
                     + f"  (median {result['median_seconds'][method]:.2f} s)")
    lines.append(f"  engine speed-up: {result['engine_speedup']:.2f}x")
    return publish(result, "\n".join(lines), args.out)
