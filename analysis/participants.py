"""Synthetic participants with a known bias, taking a served study over HTTP (``advbias simulate``).

They take part through :mod:`advbias.client` (the one participant client, shared with
the load benchmark); this module only decides each answer. The browser is never told
which image carries the target, so a synthetic participant looks both images up in the
stimulus set's manifest (read with :func:`advbias.manifest.read_manifest`) and chooses
the target with probability ``logistic(beta[condition, eps] + u_participant + w_image)``
(the generative model of :mod:`analysis.simulation`).
"""
from __future__ import annotations

import math
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from advbias.client import HttpClient, Participant, ProtocolError
from advbias.errors import CLIError, InputError, InputFileNotFound
from advbias.manifest import StimulusRow, read_manifest
from advbias.trials import BY_OTHER

from .simulation import BiasSpec, bias_for, conditional_logit, logistic


def load_stimuli(set_dir: str | Path) -> dict[str, StimulusRow]:
    """stimulus_id -> its manifest row (what the image is)."""
    return {row.stimulus_id: row for row in read_manifest(set_dir)}


def pixel_key(png: bytes) -> str:
    """A name for an image's pixels, whatever its file encoding (the server re-encodes what it delivers)."""
    import hashlib
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def pixel_index(set_dir: str | Path, stimuli: Mapping[str, StimulusRow]) -> dict[str, str]:
    """pixel key -> stimulus id for every image of the set.

    Image URLs are keyed aliases that only the server can map to manifest rows, so a
    synthetic participant, like a person, recognises an image by what it shows: it
    holds the set, and matches the delivered pixels against it.
    """
    index: dict[str, str] = {}
    for stimulus_id in stimuli:
        path = Path(set_dir) / "images" / f"{stimulus_id}.png"
        if not path.is_file():
            raise InputFileNotFound(f"image {path} listed in the manifest is missing")
        index.setdefault(pixel_key(path.read_bytes()), stimulus_id)
    return index


def _mentions(question: str, category: str) -> bool:
    return bool(category) and re.search(rf"(?<![A-Za-z]){re.escape(category)}(?![A-Za-z])", question,
                                        re.IGNORECASE) is not None


def classify(trial: Mapping[str, Any], stimuli: Mapping[str, StimulusRow]) -> tuple[str, str, str, int, str]:
    """(kind, condition, target_side, eps, source) of a trial as the browser sees it, via the manifest."""
    shown = []
    for side in ("left", "right"):
        name = str(trial[side]).rsplit("/", 1)[-1].removesuffix(".png")
        if name not in stimuli:
            raise InputError(f"image {name} of trial {trial['index']} is not in the stimulus set's manifest: "
                             f"is --set the set this experiment was created from?")
        shown.append(stimuli[name])
    left, right = shown
    question = str(trial["question"])
    practice = bool(trial.get("practice"))
    if left.condition == "clean" and right.condition == "clean":
        asked_left = _mentions(question, left.ensemble_category) and not _mentions(question, right.ensemble_category)
        return ("practice" if practice else "catch", "catch", "left" if asked_left else "right", 0, left.source)
    adversarial = [side for side, s in (("left", left), ("right", right)) if s.condition == "adversarial"]
    if len(adversarial) == 2:
        side = "left" if _mentions(question, left.target) and not _mentions(question, right.target) else "right"
        condition = "targets"
    elif len(adversarial) == 1:
        side = adversarial[0]
        condition = BY_OTHER[(right if side == "left" else left).condition]
    else:
        raise InputError(f"trial {trial['index']} shows no adversarial image: cannot tell the target side")
    chosen = left if side == "left" else right
    return ("practice" if practice else "main", condition, side, chosen.eps, chosen.source)


class Chooser:
    """One synthetic participant's answers: a ``choose`` callable for :class:`advbias.client.Participant`."""

    def __init__(self, model: "_Model", index: int, client: HttpClient) -> None:
        self.model = model
        self.client = client
        self.rng = np.random.default_rng([model.seed, 2, index])
        sd = model.participant_sd
        self.u = float(self.rng.normal(0.0, sd)) if sd > 0 else 0.0

    def identify(self, image_url: str) -> str:
        """The stimulus id of a delivered image, recognised by its pixels (cached per URL)."""
        seen = self.model.seen
        if image_url not in seen:
            key = pixel_key(self.client.fetch(image_url))
            if key not in self.model.by_pixels:
                raise CLIError(f"image {image_url} is not in the stimulus set: is --set the set this experiment "
                               "was created from?")
            seen[image_url] = self.model.by_pixels[key]
        return seen[image_url]

    def __call__(self, trial: dict[str, Any]) -> tuple[str, float]:
        named = {**trial, "left": self.identify(trial["left"]), "right": self.identify(trial["right"])}
        _, condition, target_side, eps, source = classify(named, self.model.stimuli)
        if condition == "catch":
            p_target = self.model.catch_accuracy
        else:
            p_target = float(logistic(self.model.beta(condition, eps) + self.u + self.model.image_effect[source]))
        chose_target = self.rng.random() < p_target
        side = target_side if chose_target else ("left" if target_side == "right" else "right")
        return side, float(850.0 * math.exp(self.rng.normal(0.0, 0.35)))


class _Model:
    """The study-wide part of the truth: per-cell log-odds and the image effects."""

    def __init__(self, stimuli: dict[str, StimulusRow], by_pixels: dict[str, str], bias: BiasSpec,
                 participant_sd: float, image_sd: float, catch_accuracy: float, seed: int) -> None:
        self.stimuli, self.bias, self.seed = stimuli, bias, seed
        self.by_pixels = by_pixels
        self.seen: dict[str, str] = {}  # image URL -> stimulus id, shared by the participants
        self.participant_sd, self.image_sd, self.catch_accuracy = participant_sd, image_sd, catch_accuracy
        self.total_sd = math.hypot(participant_sd, image_sd)
        sources = sorted({s.source for s in stimuli.values()})
        drawn = np.random.default_rng([seed, 1]).normal(0.0, image_sd, len(sources)) if image_sd > 0 else \
            np.zeros(len(sources))
        self.image_effect = dict(zip(sources, drawn.tolist()))
        self.cache: dict[tuple[str, int], float] = {}

    def beta(self, condition: str, eps: int) -> float:
        key = (condition, eps)
        if key not in self.cache:
            self.cache[key] = conditional_logit(bias_for(self.bias, condition, eps), self.total_sd)
        return self.cache[key]

    def truth(self) -> dict[str, Any]:
        return {
            "bias": {f"{c}:{e}": bias_for(self.bias, c, e) for c, e in sorted(self.cache)},
            "logit": {f"{c}:{e}": b for (c, e), b in sorted(self.cache.items())},
            "participant_sd": self.participant_sd, "image_sd": self.image_sd,
            "catch_accuracy": self.catch_accuracy, "seed": self.seed,
        }


def _take_part(slug: str, index: int, model: _Model, url: str, timeout: float) -> dict[str, Any]:
    """One participant, start to finish, on its own connection (resumes a participant already started)."""
    client = HttpClient(url, timeout=timeout, retry_for=2.0)
    participant = Participant(slug, f"sim-{model.seed}-{index}", study_id="advbias-simulate",
                              session_id=f"sim{model.seed}x{index}", choose=Chooser(model, index, client),
                              debrief="synthetic participant (advbias simulate)")
    try:
        participant.run(client)
    except ProtocolError as exc:
        raise CLIError(f"experiment {slug!r} at {client.url}: {exc}") from None
    finally:
        client.close()
    return {"status": participant.status, "answered": len(participant.acks)}


def simulate_study(
    slug: str,
    n_participants: int,
    bias: BiasSpec,
    *,
    set_dir: str | Path,
    url: str = "http://127.0.0.1:5000",
    participant_sd: float = 0.3,
    image_sd: float = 0.3,
    catch_accuracy: float = 0.97,
    seed: int = 0,
    concurrency: int = 4,
    timeout: float = 30.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Synthetic participants take study ``slug`` through the participant HTTP API.

    Each participant starts (PROLIFIC_PID ``sim-<seed>-<i>``, so re-running with the
    same seed resumes rather than duplicates), consents, passes the browser check,
    answers every trial in order with an idempotency key, and finishes. ``beta`` is
    solved so that the population-average rate is ``bias``; catch trials are answered
    correctly with ``catch_accuracy``. Returns counts, timing and the truth.
    """
    from tqdm.auto import tqdm

    if n_participants < 1:
        raise InputError("--participants must be at least 1")
    HttpClient(url)  # a malformed --url is a one-line error before anything starts
    stimuli = load_stimuli(set_dir)
    model = _Model(stimuli, pixel_index(set_dir, stimuli), bias, participant_sd, image_sd, catch_accuracy, seed)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=n_participants, desc="participants", disable=not progress, unit="participant")
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(_take_part, slug, i, model, url, timeout) for i in range(n_participants)]
        try:
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            bar.close()
    seconds = time.perf_counter() - started
    answered = sum(r["answered"] for r in results)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "experiment": slug, "participants": n_participants, "statuses": statuses, "trials_answered": answered,
        "seconds": round(seconds, 3),
        "responses_per_second": round(answered / seconds, 1) if seconds > 0 else math.nan,
        "truth": model.truth(),
    }
