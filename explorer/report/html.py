"""The report's HTML: one page with its styles inline, tables of escaped cells and Plotly figures
(plotly.js inlined once), so that it opens with no server and no network."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import shlex
from typing import Any, Sequence

import plotly.graph_objects as go
import plotly.io as pio

from explorer.report import figures
from explorer.evaluate.perplexity import PPLResult
from explorer.core.layer_lists import format_layers
from explorer.core.model import LoadedModel
from explorer.measure.damage import DamageMap, block_label
from explorer.measure.measures import get_measure
from explorer.measure.trust import trust_table
from explorer.apply.recipe import Recipe
from explorer.core.variant import Variant
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from explorer.heal.registry import HealResult
    from explorer.report.build import ReportAnalysis, ReportSizes, Subject

HEADROOM = 90                              # px above a figure for its title and "measured on" line
HEATMAP_WIDTH = 820                        # px: the square map, its axes and colour bar together


def step_text(op: dict) -> str:
    """A recipe step for a reader: its own summary, but a healing by its mode and budget (its
    summary names internal slot numbers)."""
    if op.get("op") == "heal":
        steps = op.get("steps")
        return f"heal with {op.get('mode')}" + (f" ({steps} optimiser steps)" if steps else "")
    return str(op.get("summary") or op.get("op"))


# -- HTML ----------------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid
#d0d7de; padding-bottom: 0.2em; } .sub { color: #59636e; }
table { border-collapse: collapse; margin: 0.8em 0; } th, td { border: 1px solid #d0d7de;
padding: 6px 10px; text-align: left; vertical-align: top; } th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.gens { width: 100%; table-layout: fixed; } table.gens td { white-space: pre-wrap; }
table.gens th:first-child { width: 18%; } .figure > div { margin: 0 auto; }
.figure { margin: 1.5em 0; } .figure p { margin: 0.3em 0; color: #59636e; font-size: 0.92em; }
.protocol { font-size: 0.92em; color: #59636e; } pre { background: #f6f8fa; padding: 10px;
overflow-x: auto; font-size: 0.85em; } .warn { color: #b35900; font-weight: 600; }
"""


def escape(x: Any) -> str:
    return html.escape(str(x))


def rho_text(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "",
           numbers: Sequence[int] = ()) -> str:
    """An HTML table; cells are HTML already (escape text with `_e`); the columns in `numbers`
    are right-aligned figures."""
    head = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr></thead>" \
        if headers else ""
    body = "".join("<tr>" + "".join(f"<td{' class=num' if j in numbers else ''}>{c}</td>"
                                    for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table{f' class={cls}' if cls else ''}>{head}<tbody>{body}</tbody></table>"


class Page:
    """The report's HTML, section by section; figures are counted as they are added."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.count = 0

    def h2(self, title: str, intro: str = "") -> None:
        self.parts.append(f"<h2>{escape(title)}</h2>" + (f"<p>{intro}</p>" if intro else ""))

    def figure(self, fig: go.Figure, measured_on: str, caption: str,
               width: int | None = None) -> None:
        """A figure whose title carries what it was measured on; inline JSON drawn by the page's
        one copy of plotly.js. width: a fixed width in pixels (a square heatmap, whose colour
        bar would otherwise sit far off at the page's edge); None follows the page."""
        title = fig.layout.title.text or ""
        fig.update_layout(title=dict(text=f"{title}<br><span style='font-size:12px;color:#59636e'>"
                                          f"{escape(measured_on)}</span>"),
                          margin=dict(t=HEADROOM), height=(fig.layout.height or 450) + 40,
                          width=width)
        self.count += 1
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False,
                          div_id=f"figure-{self.count}",
                          config={"displaylogo": False, "responsive": True})
        self.parts.append(f'<div class="figure">{div}<p>{caption}</p></div>')

    def header(self, title: str, model: str, lm: LoadedModel, variant: Variant,
               source: str) -> None:
        date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        from explorer import __version__
        self.parts.append(
            f"<h1>{escape(title)}</h1><p class=sub>Layer Explorer {escape(__version__)} report, "
            f"{date}. Model <b>{escape(model)}</b> ({escape(lm.arch.family)}, {lm.num_layers} layers, "
            f"{lm.num_parameters:,} parameters, {escape(str(lm.dtype).replace('torch.', ''))}); "
            f"text <b>{escape(source)}</b>. This page works offline: every figure is interactive "
            "(hover for values, drag to zoom, double-click to reset).</p>")

    def perplexity(self, ppl: list[tuple[str, Variant, PPLResult]], lm: LoadedModel,
                   variant: Variant) -> None:
        base = ppl[0][2].ppl
        rows = []
        for name, v, r in ppl:
            lo, hi = r.interval()
            n = v.num_parameters()
            rows.append([escape(name), str(v.num_layers), f"{n:,}",
                         f"−{100 * (1 - n / lm.num_parameters):.1f}%" if n != lm.num_parameters
                         else "", f"<b>{r.ppl:.2f}</b>", f"{lo:.2f}–{hi:.2f}",
                         f"×{r.ppl / base:.2f}"])
        self.h2("Before and after", "Perplexity of the original model and of the variant on "
                "the same text (lower is better); the band is the 95% interval of the figure "
                "over the text's windows.")
        self.parts.append(html_table(["model", "layers", "parameters", "smaller by", "perplexity",
                                  "95% band", "vs original"], rows,
                                 numbers=(1, 2, 3, 4, 5, 6)))
        self.parts.append(f"<p class=protocol><b>Protocol:</b> {escape(ppl[-1][2].protocol())}. "
                          "Perplexity depends on the window length: longer windows give each "
                          "token more context and a lower figure, so compare figures of one "
                          "protocol only.</p>")

    def plan(self, subject: Subject, lm: LoadedModel, removed: list[int],
             merged: list[list[int]]) -> None:
        v = subject.unhealed or subject.variant
        self.h2("The plan", f"From {lm.num_layers} to {v.num_layers} layers, in the steps "
                "below (a step numbers the layers as they are after the steps before it).")
        rows = [["method", escape(subject.method)]]
        if subject.params:
            rows.append(["parameters", escape(", ".join(f"{k}={json.dumps(x)}"
                                                   for k, x in subject.params.items()))])
        rows.append(["layers dropped (original numbering)",
                     escape(format_layers(removed)) if removed else "none"])
        rows.append(["blocks merged into one (original numbering)",
                     escape("; ".join(format_layers(g) for g in merged)) if merged else "none"])
        rows += [[f"step {k + 1}", escape(step_text(op))]
                 for k, op in enumerate(subject.variant.steps)]
        self.parts.append(html_table([], rows))

    def damage(self, dm: DamageMap, analysis: ReportAnalysis, measured_on: str) -> None:
        """The measured damage map and each similarity's rank correlation with it."""
        part = (f" <span class=warn>Partial: {len(dm.done)} of {dm.total} candidates "
                "measured.</span>" if dm.partial else "")
        self.h2("Measured damage", f"Each single layer and each block of up to {dm.max_block} "
                f"layers removed and run on the analysis' {dm.windows} windows of {dm.seqlen} "
                f"tokens, against the dense model (perplexity {dm.dense_ppl:.3f}); cell (a, b) "
                f"is the model without layers a..b-1.{part} Similar is not removable: see "
                '<a href="https://arxiv.org/abs/2605.14075">Rethinking Layer Relevance Beyond '
                'Cosine Similarity</a> and <a href="https://arxiv.org/abs/2604.24938">'
                "Calibration matters more than search</a>.")
        fig = figures.heatmap(dm.matrix("nll").numpy(), f"NLL increase after removal: layer "
                              f"boundaries x0..x{dm.num_layers}", higher_is_similar=False)
        self.figure(fig, measured_on, "Bright = little damage. Blank cells were not measured.",
                    width=HEATMAP_WIDTH)
        rows = [[escape(get_measure(r.measure).title), str(r.size), rho_text(r.spearman),
                 rho_text(r.kendall), escape(block_label(*r.pick)), f"{r.pick_rank} of {r.candidates}",
                 escape(block_label(*r.best))]
                for r in trust_table(dm, analysis.matrices)]
        self.parts.append(html_table(["similarity", "block size", "Spearman", "Kendall",
                                  "its pick (layers)", "pick's measured rank",
                                  "measured best"], rows, numbers=(1, 2, 3)))

    def healing(self, h: HealResult, model: str) -> None:
        took = f"{h.seconds:.0f} s" if h.seconds >= 1 else "under a second"
        self.h2("Healing", f"Healed with <b>{escape(h.mode)}</b> in {took}. The held-out figure "
                "is the perplexity on calibration windows the healing never fitted on (short "
                "windows of the calibration half), so it differs from the evaluation figures "
                "above; it says whether the healing generalised beyond the windows it saw.")
        rows = [["held-out calibration perplexity before healing", f"{h.held_out_before:.2f}"],
                ["after healing", f"{h.held_out_after:.2f}"],
                ["optimiser steps", str(h.steps) if h.steps else "none (a closed-form fit)"]]
        self.parts.append(html_table([], rows, numbers=(1,)))
        if h.made_worse:
            self.parts.append("<p class=warn>Healing made the held-out perplexity worse: the "
                              "unhealed variant is better on text it was not fitted on.</p>")
        if h.curve:
            fig = figures.heal_curve(list(h.curve))
            self.figure(fig, f"{model}, {h.mode}: loss on the fitted windows, perplexity on the "
                             "held-out windows", "The training loss (left axis) and the held-out "
                        "perplexity (right axis) as the optimiser steps go.")

    def generations(self, gens: list[tuple[str, list[str]]], sizes: ReportSizes) -> None:
        self.h2("Greedy generations", f"Each model continues each prompt with {sizes.gen_tokens} "
                "new tokens, no sampling: perplexity alone can hide what removing layers "
                "changes.")
        rows = [[f"<b>{escape(p)}</b>"] + [escape(texts[i]) for _, texts in gens]
                for i, p in enumerate(sizes.prompts)]
        self.parts.append(html_table(["prompt"] + [escape(n) for n, _ in gens], rows, cls="gens"))

    def reproduce(self, subject: Subject, model: str) -> None:
        recipe = Recipe.of(subject.variant, subject.method, subject.params)
        recipe.model = model
        data = recipe.to_json()
        link = "data:application/json;base64," + base64.b64encode(data.encode()).decode()
        m = shlex.quote(model)
        self.h2("Make it again", "The recipe is the variant's exact record: <code>python -m "
                f"explorer export --model {escape(m)} --recipe recipe.json --out my-model</code> "
                "rebuilds it as a transformers folder, and <code>python -m explorer report "
                f"--model {escape(m)} --recipe recipe.json --out report.html</code> this page.")
        self.parts.append(f'<p><a download="recipe.json" href="{link}">Save recipe.json</a></p>'
                          f"<details><summary>recipe.json</summary><pre>{escape(data)}</pre>"
                          "</details>")

    def render(self, title: str) -> str:
        from plotly.offline import get_plotlyjs

        return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
                f"<meta name=viewport content='width=device-width, initial-scale=1'>"
                f"<title>{escape(title)}</title><style>{CSS}</style>"
                f"<script>{get_plotlyjs()}</script></head><body>"
                + "\n".join(self.parts) + "</body></html>")
