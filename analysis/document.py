"""The report as a document: Markdown and self-contained HTML built side by side, and number formatting."""
from __future__ import annotations

import base64
import hashlib
import html
import math
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if abs(value) < 1e-12:  # float noise around zero (e.g. -1.5e-18) is zero to a reader
            return "0"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        if float(value).is_integer() and abs(value) < 1e5:
            return str(int(value))
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.{max(digits - 2, 1)}f}"
    try:
        import pandas as pd

        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


#: Reader-facing names of the tables' columns (the CSV files keep the short names).
LABELS = {
    "condition": "trial type", "eps": "budget", "n_participants": "participants", "n_trials": "trials",
    "n_obs": "trials", "n_images": "images", "bias": "bias", "t": "t", "dof": "df", "p": "p", "p_holm": "p (Holm)",
    "cohen_d": "Cohen's d", "cohen_dz": "Cohen's d_z", "bf10": "BF10", "wilcoxon_p": "Wilcoxon p",
    "wilcoxon_p_holm": "Wilcoxon p (Holm)", "estimate": "estimate", "std_err": "SE", "z": "z",
    "odds_ratio": "odds ratio", "prob": "probability", "statistic": "statistic", "alternative": "alternative",
    "scale": "scale", "test": "test", "baseline": "minus", "diff": "difference", "method": "method",
    "chi2": "chi²", "chi2_df": "chi² df", "slope": "slope per doubling", "n_eps": "budgets", "monotone": "monotone",
    "n_decreases": "decreases", "sd_slope": "SD of slope", "model": "model", "term": "term", "source": "image",
    "question_target": "asked category", "half": "half", "p_left": "share 'left'", "median_rt_ms": "median RT (ms)",
    "sd_participant": "SD participants", "sd_source": "SD images", "deviance": "deviance", "aic": "AIC",
    "wald_chi2_equal_eps": "Wald chi² (equal budgets)", "wald_df": "Wald df", "wald_p": "Wald p",
    "singular": "singular", "converged": "converged", "reason": "reason", "successes": "chosen",
    "participant": "participant", "prolific_pid": "Prolific id", "participant_status": "status",
    "n_main_trials": "main trials", "catch_accuracy": "catch accuracy", "fast_fraction": "fast share",
    "not_fullscreen_fraction": "not fullscreen", "blurred_fraction": "blurred", "pair_key": "pair",
}
#: Interval columns shown as one ``[low, high]`` cell.
INTERVALS = (("ci_low", "ci_high", "CI"), ("boot_ci_low", "boot_ci_high", "bootstrap CI"),
             ("cohen_d_ci_low", "cohen_d_ci_high", "d CI"), ("dz_ci_low", "dz_ci_high", "d_z CI"),
             ("bias_ci_low", "bias_ci_high", "bias CI"), ("or_ci_low", "or_ci_high", "odds ratio CI"),
             ("prob_ci_low", "prob_ci_high", "probability CI"))
_P_COLUMNS = ("p", "p_holm", "wilcoxon_p", "wilcoxon_p_holm", "wald_p")


def _p_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def readable(frame: "pd.DataFrame") -> "pd.DataFrame":
    """The table a reader sees: text cells, intervals as ``[low, high]``, p-values as p, labelled columns."""
    import pandas as pd

    out: dict[str, list[str]] = {}
    columns = list(frame.columns)
    pairs = {low: (high, label) for low, high, label in INTERVALS if low in columns and high in columns}
    skip = {high for high, _ in pairs.values()}
    for column in columns:
        if column in skip:
            continue
        values = frame[column].tolist()
        if column in pairs:
            high, label = pairs[column]
            out[label] = ["" if fmt(lo) == "" else f"[{fmt(lo)}, {fmt(hi)}]" for lo, hi in zip(values, frame[high])]
        elif column in _P_COLUMNS:
            out[LABELS.get(column, column)] = [_p_cell(v) for v in values]
        elif column == "dof":  # an infinite df is a normal (z) reference: say so
            out["df"] = ["z" if isinstance(v, float) and math.isinf(v) else fmt(v) for v in values]
        else:
            out[LABELS.get(column, column)] = [fmt(v) for v in values]
    return pd.DataFrame(out, index=range(len(frame)), dtype="object")


def _markdown_table(frame: "pd.DataFrame") -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _html_table(frame: "pd.DataFrame") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("advbias", "numpy", "pandas", "scipy", "pingouin", "matplotlib"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45} table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em;display:block;
overflow-x:auto} th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left} img{max-width:100%}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.8em}
.note{color:#555;font-size:0.92em} code{background:#f4f4f4;padding:0 3px}
"""


class Doc:
    """Builds the Markdown and HTML versions of the report side by side."""

    def __init__(self, out: Path):
        self.out = out
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str, note: bool = False) -> None:
        self.md.append(text + "\n")
        rendered = html.escape(text)
        # **bold** and `code` for the HTML side.
        rendered = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", rendered)
        rendered = re.sub(r"`(.+?)`", r"<code>\1</code>", rendered)
        self.html.append(f'<p class="note">{rendered}</p>' if note else f"<p>{rendered}</p>")

    def bullets(self, items: list[str]) -> None:
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")
        rendered = [re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(i)) for i in items]
        self.html.append("<ul>" + "".join(f"<li>{i}</li>" for i in rendered) + "</ul>")

    def table(self, frame: "pd.DataFrame", csv_name: str | None = None) -> None:
        """A readable view of ``frame`` (:func:`readable`), with a link to the full CSV."""
        frame = readable(frame)
        self.md.append(_markdown_table(frame) + "\n")
        self.html.append(_html_table(frame))
        if csv_name:
            self.md.append(f"Full table: [{csv_name}]({csv_name})\n")
            self.html.append(f'<p class="note">Full table: <a href="{csv_name}">{csv_name}</a></p>')

    def figure(self, paths: Mapping[str, Path], caption: str) -> None:
        png = paths["png"].relative_to(self.out).as_posix()
        svg = paths["svg"].relative_to(self.out).as_posix()
        self.md.append(f"![{caption}]({png})\n\n*{caption}* ([SVG]({svg}))\n")
        data = base64.b64encode(paths["png"].read_bytes()).decode("ascii")
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                         f'<figcaption class="note">{html.escape(caption)} (<a href="{svg}">SVG</a>, '
                         f'<a href="{png}">PNG</a>)</figcaption></figure>')

    def write(self, title: str) -> None:
        (self.out / "report.md").write_text(f"# {title}\n\n" + "\n".join(self.md), encoding="utf-8")
        page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>" + "\n".join(self.html)
                + "</body></html>")
        (self.out / "report.html").write_text(page, encoding="utf-8")
