"""``advbias stimuli report``: one HTML page that describes a stimulus set.

What a Methods section and a sanity check need: the parameters and models (with weight
hashes), per-budget attack success on the attacked ensemble and transfer to the held-out
models, and a gallery showing, for each photo, pair and budget, the clean crop, the two
halves of the trial pair and their perturbations amplified to be visible.

The page is self-contained: stimuli are linked relatively (``images/<id>.png``, so the
page works wherever the folder is copied) and the amplified perturbations, which are not
stimuli, are embedded as base64 JPEGs. Reads only the manifest, set.json and the PNGs.
"""
from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any, Iterable

import numpy as np

from advbias.errors import InputError
from advbias.manifest import read_records
from advbias.setdir import atomic_write_text, read_set_json, require_finished
from stimuli.files import read_stimulus

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.gallery { display: flex; flex-direction: column; gap: 14px; }
.row { display: flex; gap: 10px; align-items: flex-start; }
figure { margin: 0; width: 180px; } figure img { width: 180px; height: 180px; image-rendering: pixelated; }
figcaption { font-size: 12px; line-height: 1.3; }
.warn { background: #fff3cd; padding: 6px 10px; border-left: 4px solid #e0a800; }
.ok { color: #080; } .no { color: #b00; } .muted { color: #666; font-size: 13px; }
code { font-size: 12px; }
"""


def _pct(values: list[int]) -> str:
    return f"{100.0 * mean(values):.1f}%" if values else "&ndash;"


def _avg(values: list[float]) -> str:
    return f"{mean(values):.3f}" if values else "&ndash;"


def _amplified_jpeg(adv: np.ndarray, clean: np.ndarray, eps: int) -> str:
    """The perturbation mapped to mid grey +/- 127 at +/-eps, as a base64 JPEG data URI."""
    from PIL import Image

    delta = adv.astype(np.int16) - clean.astype(np.int16)
    shown = np.clip(128 + delta.astype(np.float64) * (127.0 / max(eps, 1)), 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(shown, mode="RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _rates_table(rows: list[dict[str, str]], has_holdout: bool, controls: Iterable[str]) -> str:
    groups: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    flips: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    several = len({r["model_set"] for r in rows if r["model_set"]}) > 1

    def label(r: dict[str, str]) -> str:  # with several model sets, one line per pair and set
        return f"{r['pair']} on {r['model_set']}" if several else r["pair"]

    pairs = sorted({label(r) for r in rows if r["pair"]})
    for r in rows:
        if r["condition"] == "adversarial":
            for key in {("all pairs", int(r["eps"])), (label(r), int(r["eps"]))}:
                groups[key].append(r)
        elif r["condition"] == "flip":
            for key in {("all pairs", int(r["eps"])), (label(r), int(r["eps"]))}:
                flips[key].append(r)
    show_flip = "flip" in controls
    head = ["pair", "eps (levels)", "images", "ensemble success", "mean P(target), ensemble"]
    if has_holdout:
        head += ["held-out transfer", "mean P(target), held-out"]
    if show_flip:
        head += ["flip control: ensemble success"]
    out = ["<table><tr>" + "".join(f"<th{' class=l' if i == 0 else ''}>{h}</th>" for i, h in enumerate(head)) + "</tr>"]
    keys = sorted(k for k in groups if k[0] == "all pairs") if len(pairs) > 1 else []
    keys += sorted(k for k in groups if k[0] != "all pairs")
    for key in keys:
        g = groups[key]
        cells = [
            html.escape(key[0]),
            str(key[1]),
            str(len(g)),
            _pct([int(r["ensemble_success"]) for r in g]),
            _avg([float(r["ensemble_target_prob"]) for r in g]),
        ]
        if has_holdout:
            cells += [
                _pct([int(r["holdout_success"]) for r in g]),
                _avg([float(r["holdout_target_prob"]) for r in g]),
            ]
        if show_flip:
            cells += [_pct([int(r["ensemble_success"]) for r in flips.get(key, [])])]
        out.append("<tr>" + "".join(f"<td{' class=l' if i == 0 else ''}>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _caption_adv(r: dict[str, str], has_holdout: bool) -> str:
    ok = r["ensemble_success"] == "1"
    parts = [
        f"<b>toward {html.escape(r['target'])}</b> (eps {r['eps']}, linf {r['linf']}"
        + (f", model set {html.escape(r['model_set'])})" if r.get("model_set") else ")"),
        f"ensemble P({html.escape(r['target'])}) = {float(r['ensemble_target_prob']):.3f} "
        f"<span class={'ok' if ok else 'no'}>{'&#10003;' if ok else '&#10007;'}</span>",
    ]
    if has_holdout:
        hok = r["holdout_success"] == "1"
        parts.append(
            f"held-out P({html.escape(r['target'])}) = {float(r['holdout_target_prob']):.3f} "
            f"<span class={'ok' if hok else 'no'}>{'&#10003;' if hok else '&#10007;'}</span>"
        )
    parts.append(f"top-1: {html.escape(r['ensemble_top1_name'])} ({float(r['ensemble_top1_prob']):.2f})")
    return "<br>".join(parts)


def _figure(src: str, caption: str, title: str = "") -> str:
    t = f' title="{html.escape(title)}"' if title else ""
    return f'<figure><img src="{src}" alt=""{t}><figcaption>{caption}</figcaption></figure>'


def _gallery(setdir: Path, rows: list[dict[str, str]], n_sources: int, has_holdout: bool) -> str:
    by_source: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_source[r["source_sha256"]].append(r)
    pixels: dict[str, np.ndarray] = {}

    def px(r: dict[str, str]) -> np.ndarray:
        if r["stimulus_id"] not in pixels:
            pixels[r["stimulus_id"]] = read_stimulus(setdir / r["file"])
        return pixels[r["stimulus_id"]]

    blocks = []
    for sha in list(by_source)[:n_sources]:
        items = by_source[sha]
        clean = next((r for r in items if r["condition"] == "clean"), None)
        if clean is None:
            continue
        clean_cap = (
            f"<b>clean</b> {html.escape(clean['source'])}<br>top-1: {html.escape(clean['ensemble_top1_name'])} "
            f"({float(clean['ensemble_top1_prob']):.2f})<br>category: {html.escape(clean['ensemble_category'])} "
            f"({float(clean['ensemble_category_prob']):.2f})"
        )
        keys: dict[str, list[dict[str, str]]] = defaultdict(list)
        for r in items:
            if r["condition"] == "adversarial":
                keys[r["pair_key"]].append(r)
        pixels.clear()
        for key, adv in sorted(keys.items(), key=lambda kv: (kv[1][0]["pair"], int(kv[1][0]["eps"]))):
            a, _, b = adv[0]["pair"].partition(":")
            ordered = sorted(adv, key=lambda r: 0 if r["target"] == a else 1)
            figs = [_figure(clean["file"], clean_cap)]
            figs += [_figure(r["file"], _caption_adv(r, has_holdout), r["stimulus_id"]) for r in ordered]
            for r in ordered:
                eps = int(r["eps"])
                figs.append(_figure(
                    _amplified_jpeg(px(r), px(clean), eps),
                    f"perturbation toward {html.escape(r['target'])}, amplified x{127 / eps:.1f}"
                    "<br><span class=muted>grey = unchanged (JPEG preview)</span>",
                ))
            blocks.append(f'<div class="row">{"".join(figs)}</div>')
    return '<div class="gallery">' + "\n".join(blocks) + "</div>"


def _models_html(models: list[dict[str, Any]]) -> str:
    if not models:
        return "none"
    return ", ".join(
        f"{html.escape(str(m.get('name')))} (<code>{html.escape(str(m.get('weights_file')))}</code>, "
        f"sha256 <code>{html.escape(str(m.get('weights_sha256'))[:16])}&hellip;</code>)"
        for m in models
    )


def _facts(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The parameter table: (label, HTML) rows."""
    esc, p = html.escape, meta["parameters"]
    counts, settings = meta.get("counts") or {}, meta.get("attack", {})
    recipe = (f"{settings.get('method', 'PGD')}, {p['steps']} steps, step size "
              f"{settings.get('step_size') or '2.5 eps / steps'}, loss {settings.get('loss', 'auto')}, "
              f"momentum {settings.get('momentum', 0)}, input diversity {settings.get('input_diversity', 0)}, "
              f"TI kernel {settings.get('ti_kernel', 0) or 'none'}")
    return [
        ("photos", f"{counts.get('sources', '?')} from {esc(str(p.get('images')))}"
                   + (f" (first {p['limit']})" if p.get("limit") else "")),
        ("pairs", esc(", ".join(p["pairs"]))),
        ("budgets (8-bit levels)", esc(", ".join(str(e) for e in p["eps"]))),
        ("attack", esc(recipe)),
        ("attacked models (ensemble)", _models_html(meta.get("models", []))),
        ("held-out models", _models_html(meta.get("holdout_models", []))),
        ("model sets", "; ".join(f"{esc(str(m.get('name')))}: {esc('+'.join(str(x.get('name')) for x in m['models']))}"
                                 for m in meta.get("model_sets", [])) or "one (the attacked models)"),
        ("controls", esc(", ".join(p["controls"]) or "none")),
        ("crop", f"{p['size']} &times; {p['size']} px"),
        ("seed, batch size", f"{p['seed']}, {p['batch_size']}"),
        ("files", esc(", ".join(f"{k} {v}" for k, v in counts.items()))),
        ("built", esc(f"{meta.get('started_at')} to {meta.get('finished_at')}")),
        ("versions", esc(", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()))),
    ]


def _transfer_warning(rows: list[dict[str, str]], has_holdout: bool) -> str:
    """A visible warning when the largest budget does not transfer to the held-out models."""
    adv = [r for r in rows if r["condition"] == "adversarial" and r.get("holdout_success") not in (None, "")]
    if not has_holdout or not adv:
        return ""
    top = max(int(r["eps"]) for r in adv)
    at_top = [int(r["holdout_success"]) for r in adv if int(r["eps"]) == top]
    rate = sum(at_top) / len(at_top)
    if rate >= 0.25:
        return ""
    return (f"<p class=warn><b>Warning:</b> at the largest budget ({top}) only {rate:.0%} of the images make the "
            "held-out model see the target category: these stimuli are tuned to the attacked models. "
            "See docs/stimuli.md (attack recipe) for settings that transfer.</p>")


def _observers_html(setdir: Path) -> str:
    """Machine observers (SETDIR/observers.csv, from ``advbias stimuli observe``): the plot, when present."""
    from stimuli.observe import observers_figure, transfer_figure

    png = observers_figure(setdir)
    if png is None:
        return ("<h2>Machine observers</h2><p class=muted>None yet: <code>advbias stimuli observe SETDIR "
                "--models lite2</code> lets models take the trials.</p>")
    return ("<h2>Machine observers</h2><p class=muted>Each model answers every trial as a participant would "
            "(it picks the image it finds more like the asked category); bias is the share of picks of the image "
            "perturbed toward it, with 95% Wilson intervals. 0.5: no effect.</p>"
            f"<img alt='machine observer bias per budget' src='data:image/png;base64,{png}'>"
            "<h3>Transfer matrix</h3><p class=muted>The <code>targets</code> bias of every observer (columns) on the "
            "images of every model set (rows), per budget; * marks an observer the set attacked (the ceiling).</p>"
            f"<img alt='transfer matrix: model set x observer' src='data:image/png;base64,{transfer_figure(setdir)}'>")


def write_report(setdir: Path, gallery: int | str = 12) -> Path:
    """Write ``setdir/report.html`` atomically and return its path (``gallery``: photos shown, 0 for none)."""
    setdir = Path(setdir)
    require_finished(setdir)
    try:
        gallery = int(str(gallery).strip())
    except ValueError:
        raise InputError(f"--gallery must be a whole number, got {gallery!r}") from None
    if gallery < 0:
        raise InputError(f"--gallery must be 0 or more, got {gallery}")
    meta = read_set_json(setdir)
    p = meta["parameters"]
    rows = read_records(setdir)
    has_holdout = bool(p.get("holdout"))
    counts = meta.get("counts") or {}
    skipped = meta.get("sources", {}).get("skipped", [])
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>Stimulus set {esc(setdir.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Stimulus set <code>{esc(setdir.name)}</code></h1>",
        "<h2>Parameters</h2><table>",
    ]
    parts += [f"<tr><th class=l>{k}</th><td class=l>{v}</td></tr>" for k, v in _facts(meta)]
    parts.append("</table>")
    if skipped:
        parts.append("<p>Skipped input files:</p><ul>")
        parts += [f"<li><code>{esc(s['name'])}</code>: {esc(s['reason'])}</li>" for s in skipped]
        parts.append("</ul>")
    parts += [
        "<h2>Attack success and transfer per budget</h2>",
        "<p class=muted>Success: the model's top-1 ImageNet class belongs to the target category, "
        "measured on the saved 8-bit files. Transfer: the same for the held-out models, which the "
        "attack never saw.</p>",
        _rates_table(rows, has_holdout, p.get("controls", [])),
        _transfer_warning(rows, has_holdout),
        _observers_html(setdir),
    ]
    if gallery:
        parts += [
            f"<h2>Gallery (first {min(gallery, counts.get('sources', gallery))} photos)</h2>",
            "<p class=muted>Each row: clean crop, the two halves of a trial pair, and their perturbations "
            "scaled so that &plusmn;eps spans the full grey range.</p>",
            _gallery(setdir, rows, gallery, has_holdout),
        ]
    parts.append("</body></html>\n")
    out = setdir / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out
