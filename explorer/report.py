"""A report to take away: one self-contained HTML file of an analysis and a variant.

Teachers and authors share a result without a running server: the file holds the similarity
heatmaps of the analysis (with the plan drawn on them), the adjacent-layer profiles, the layer
map, the plan and its recipe, perplexity before and after with the protocol line, the healing
(when the variant was healed) and greedy generations of the original model next to the variant.
Plotly's JavaScript is inlined from the installed plotly package, so the file opens offline, in
any browser, years later; nothing in it names a path of the machine that wrote it.

It reuses the pipeline: `probe` + `measure` for the analysis, `manifold.layer_map`, `evaluate`
(perplexity through the dense cache, greedy generations) and the figure builders of
`explorer.figures`, the same ones the app draws. Made by `python -m explorer report` and by the
app's Export tab ("Download report").

Example:
    >>> lm, texts = load_model("smollm2-135m"), load_texts("wiki")
    >>> r = build_report(lm, texts, Subject(Variant.identity(lm).drop([14, 15])))
    >>> r.write("report.html")
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch

from . import figures, manifold
from .errors import ExplorerError, one_line
from explorer.generate import DEFAULT_PROMPTS, generate
from explorer.evaluate import PPLResult, perplexity
from .layer_lists import format_layers
from explorer.model import LoadedModel
from .damage import DamageMap, block_label, damage_map
from .measure import MEASURES, adjacent, get_measure, similarity
from .trust import trust_table
from .methods.layout import Layout
from .probe import ProbeResult, probe
from .progress import Event, Progress, scaled
from .recipe import Recipe, replay
from .text import Texts
from .variant import Variant

DEFAULT_MEASURES = ("cosine", "angular")   # the drop methods' measures: ShortGPT's and Gromov's
HEADROOM = 90                              # px above a figure for its title and "measured on" line
HEATMAP_WIDTH = 820                        # px: the square map, its axes and colour bar together


@dataclass(frozen=True)
class ReportSizes:
    """How much text each part of the report runs on (the app passes its own settings)."""

    probe_seqlen: int = 128          # tokens per calibration window of the analysis
    probe_samples: int = 32          # calibration windows
    probe_max_tokens: int = 4096     # recorded tokens kept per boundary
    seqlen: int = 256                # tokens per perplexity window
    max_tokens: int | None = 8192    # evaluation tokens (None: the whole evaluation text)
    bos: str = "auto"
    gen_tokens: int = 24             # new tokens per greedy generation (0: no generations)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    layer_map: str = "mds"           # manifold.LAYER_METHODS


@dataclass
class ReportAnalysis:
    """The analysis the figures show: a probe of the calibration text and what was measured on
    it (CPU values). The app hands over its cached one; `analyse` makes one."""

    probe: ProbeResult
    source: str                                   # the calibration text's name
    matrices: dict[str, np.ndarray]               # measure -> (L+1, L+1), in heatmap order
    adjacent: dict[str, np.ndarray]               # measure -> (L,) adjacent-layer profile


@dataclass(frozen=True)
class Healing:
    """A healing's figures: the one record of a healing that the report and the app read (the
    app's session keeps it in `ui.state.Healed`, beside the ops it replays). Made from a
    `explorer.heal.HealResult` or its `to_dict()` (what the app's job returns)."""

    mode: str
    held_out_before: float           # perplexity on held-out calibration windows
    held_out_after: float
    steps: int                       # optimiser steps (0: closed form)
    seconds: float
    curve: tuple[tuple[int, float, float | None], ...] = ()   # (step, loss, held-out ppl)
    held_out: int = 0                # held-out calibration windows ...
    seqlen: int = 0                  # ... of this many tokens, after ...
    fitted: int = 0                  # ... the windows fitted on

    @staticmethod
    def of(result: Any) -> "Healing":
        """From a `HealResult` or its `to_dict()`."""
        get = result.get if isinstance(result, dict) else \
            (lambda k, default=None: getattr(result, k, default))
        params = get("params") or {}
        curve = tuple((h["step"], h["loss"], h.get("held_out_ppl")) for h in get("history"))
        return Healing(mode=get("mode"), held_out_before=get("held_out_before"),
                       held_out_after=get("held_out_after"), steps=get("steps"),
                       seconds=get("seconds"), curve=curve,
                       held_out=int(params.get("held_out", 0)),
                       seqlen=int(params.get("seqlen", 0)), fitted=int(params.get("windows", 0)))

    @property
    def made_worse(self) -> bool:
        return not self.held_out_after <= self.held_out_before


@dataclass
class Subject:
    """What the report is about: a variant, how it was planned, and its healing if the last step
    of the variant healed it (`unhealed` is then the variant before that step)."""

    variant: Variant
    method: str = "manual"
    params: dict = field(default_factory=dict)
    unhealed: Variant | None = None
    healing: Healing | None = None


@dataclass
class Report:
    """The HTML and the figures it shows (the CLI prints `summary`)."""

    html: str
    figures: int                      # Plotly figures in the page
    summary: dict

    def write(self, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the file atomically (a temporary file beside it, renamed into place)."""
        target = check_output(out, overwrite)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "x", encoding="utf-8") as f:      # created with the umask's mode
                f.write(self.html)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ExplorerError(f"could not write the report '{target}': "
                                f"{exc.strerror or one_line(exc)}") from None
        return target


def check_output(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """The report's path, refused in one line before any work when it cannot be written: a
    folder, an existing file without overwrite, a missing or read-only folder."""
    if not str(out).strip() or "\x00" in str(out):
        raise ExplorerError(f"report path {str(out)!r} is not a valid file name")
    target = Path(out).expanduser().resolve()
    if target.is_dir():
        raise ExplorerError(f"'{out}' is a folder: give the report's file name, e.g. "
                            f"{Path(out) / 'report.html'}")
    if target.exists() and not overwrite:
        raise ExplorerError(f"'{out}' already exists; choose another name or allow overwrite")
    folder = target.parent
    if not folder.is_dir():
        raise ExplorerError(f"the folder of '{out}' does not exist: create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExplorerError(f"cannot write into the folder of '{out}' (permission denied): "
                            "choose a writable folder")
    return target


def display_name(spec: str) -> str:
    """The model's name as a reader should see it: a folder or file's own name, never the path
    of the machine that loaded it."""
    p = Path(spec).expanduser()
    return p.name if (os.sep in spec or p.exists()) and p.name else spec


# -- building the subject ------------------------------------------------------------------------
def subject_of_recipe(lm: LoadedModel, recipe: Recipe) -> Subject:
    """Replay a recipe; when its last op heals, the healing is redone through `replay_heal` so
    that its figures (held-out perplexity, training curve) go into the report."""
    from .heal.registry import replay_heal

    if lm.num_layers != recipe.num_layers:
        recipe.build(lm)            # raises the one-line size mismatch
    ops = list(recipe.ops)
    if ops and ops[-1].get("op") == "heal":
        unhealed = replay(lm, ops[:-1])
        r = replay_heal(unhealed, ops[-1])
        return Subject(r.variant, recipe.method, recipe.params, unhealed, Healing.of(r))
    return Subject(replay(lm, ops), recipe.method, recipe.params)


def plan_layers(variant: Variant) -> tuple[list[int], list[list[int]]]:
    """(original layers dropped, groups of original layers made into one) by the variant's
    steps: what the heatmaps draw. A drop removes its slots' layers; any other op that names
    several slots (merge, come, streamline) makes them one; the rest keep the layout."""
    lay, dropped = Layout.identity(variant.lm.num_layers), []
    for op in variant.steps:
        slots = op.get("layers") or []
        if op.get("op") == "drop":
            dropped += [o for s in slots for o in lay.groups[s]]
            lay = lay.drop(slots)
        elif len(slots) > 1:
            lay = lay.merge(slots)
    return sorted(dropped), lay.merged()


def step_text(op: dict) -> str:
    """A recipe step for a reader: its own summary, but a healing by its mode and budget (its
    summary names internal slot numbers)."""
    if op.get("op") == "heal":
        steps = op.get("steps")
        return f"heal with {op.get('mode')}" + (f" ({steps} optimiser steps)" if steps else "")
    return str(op.get("summary") or op.get("op"))


def change_words(variant: Variant) -> str:
    """The variant in words, original layer numbers, for the report's title: "drop layer 12;
    merge layers 14-15; healed with Closed-form linear map ..." (not the recipe's op summaries,
    which count slots)."""
    from .heal import get_mode

    removed, merged = plan_layers(variant)
    parts = [f"drop layer{'s' if len(removed) > 1 else ''} "
             f"{format_layers(removed).replace(',', ', ')}"] if removed else []
    parts += [f"merge layers {format_layers(g)}" for g in merged]
    for op in variant.steps:
        if op.get("op") == "heal":
            steps = op.get("steps")
            parts.append(f"healed with {get_mode(op['mode']).title}" +
                         (f" ({steps} steps)" if steps else ""))
    return "; ".join(parts) or ("; ".join(step_text(op) for op in variant.steps) or
                                "the original model")


# -- analysis ------------------------------------------------------------------------------------
def analyse(lm: LoadedModel, texts: Texts, measures: Sequence[str] = DEFAULT_MEASURES,
            sizes: ReportSizes = ReportSizes(), progress: Progress | None = None
            ) -> ReportAnalysis:
    """Probe the calibration half of `texts` and measure it: the matrices of `measures` and
    every registered measure's adjacent-layer profile (as the app's Analyse tab does)."""
    pr = probe(lm, texts.calibration, seqlen=sizes.probe_seqlen, num_samples=sizes.probe_samples,
               max_tokens=sizes.probe_max_tokens, bos=sizes.bos,
               progress=scaled(progress, 0.0, 0.6))
    out = ReportAnalysis(pr, texts.source, {}, {})
    for k, name in enumerate(MEASURES):
        if progress:
            progress(Event("analysis", 0.6 + 0.4 * k / len(MEASURES),
                           note=f"adjacent-layer profile: {name}"))
        out.adjacent[name] = _numpy(adjacent(pr, name))
    for name in measures:
        out.matrices[name] = _numpy(similarity(pr, name))
    return out


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


# -- the report ----------------------------------------------------------------------------------
def build_report(lm: LoadedModel, texts: Texts, subject: Subject, *,
                 sizes: ReportSizes = ReportSizes(),
                 measures: Sequence[str] = DEFAULT_MEASURES,
                 analysis: ReportAnalysis | None = None,
                 damage: int | DamageMap | None = None,
                 progress: Progress | None = None) -> Report:
    """Measure what the report shows and write it as one HTML page.

    analysis: a ready analysis (the app's); None probes `texts`' calibration half with `sizes`.
    measures: the heatmaps, in order (each must be in `analysis.matrices` when one is given).
    damage: a measured damage map of the analysis' windows (explorer.damage), or the largest
        block to measure one with; the report then shows it and each similarity's rank
        correlation with it (explorer.trust).
    Perplexity runs on the evaluation half of `texts` (the other half calibrates).
    """
    for name in measures:
        get_measure(name)                                     # unknown names refused first
    if not measures:
        raise ExplorerError("the report needs at least one measure for its heatmaps")
    def say(fraction: float, note: str) -> None:
        if progress:
            progress(Event("report", fraction, note=note))

    if analysis is None:
        analysis = analyse(lm, texts, measures, sizes, scaled(progress, 0.0, 0.3))
    missing = [m for m in measures if m not in analysis.matrices]
    if missing:
        raise ExplorerError(f"the analysis has no matrix for {', '.join(missing)}")
    variant = subject.variant
    model = display_name(lm.spec)
    page = _Page()

    # perplexity: original, variant (unhealed), healed
    text, source = texts.for_evaluation(calibrated=True)
    runs = [("original", Variant.identity(lm))]
    runs += [("variant", subject.unhealed), (f"healed ({subject.healing.mode})", variant)] \
        if subject.unhealed is not None else [("variant", variant)]
    ppl: list[tuple[str, Variant, PPLResult]] = []
    for k, (name, v) in enumerate(runs):
        # the running figure says which model it is of: "variant model: perplexity: ..."
        part = scaled(progress, 0.3 + 0.4 * k / len(runs), 0.3 + 0.4 * (k + 1) / len(runs),
                      prefix=f"{name} model")
        ppl.append((name, v, perplexity(lm, text, variant=v, seqlen=sizes.seqlen,
                                        max_tokens=sizes.max_tokens, bos=sizes.bos,
                                        source=source, progress=part)))
    gens: list[tuple[str, list[str]]] = []
    if sizes.gen_tokens > 0 and sizes.prompts:
        for k, (name, v, _) in enumerate(ppl):
            say(0.7 + 0.25 * k / len(ppl), f"greedy generations of the {name} model")
            gens.append((name, generate(lm, list(sizes.prompts), variant=v,
                                        max_new_tokens=sizes.gen_tokens)))

    pr = analysis.probe
    windows, window_len = tuple(pr.input_ids.shape)
    measured_on = (f"{model}, {analysis.source} calibration half: {windows} windows of "
                   f"{window_len} tokens, {pr.num_tokens} tokens recorded per boundary")
    removed, merged = plan_layers(variant)
    change = change_words(variant)
    title = f"{model}: {change}"

    page.header(title, model, lm, variant, texts.source)
    page.perplexity(ppl, lm, variant)
    page.plan(subject, lm, removed, merged)
    page.h2("Analysis", f"Measured on {measured_on}. Boundary x<sub>k</sub> is the input of "
            "layer k (x<sub>0</sub> the embeddings, the last one the output of the last layer "
            "before the final norm); bright cells are alike for every measure. The plan is drawn "
            "on each heatmap: dropped layers in red, merged blocks in orange.")
    for name in measures:
        mi = get_measure(name)
        m = analysis.matrices[name]
        fig = figures.heatmap(m, f"{mi.title}: layer boundaries x0..x{m.shape[0] - 1}",
                              higher_is_similar=mi.higher_is_similar, removed=removed,
                              merged=merged)
        page.figure(fig, measured_on, f"{mi.paper}. {mi.description}", width=HEATMAP_WIDTH)
    fig = figures.profiles(analysis.adjacent, {k: v.title for k, v in MEASURES.items()},
                           {k: v.higher_is_similar for k, v in MEASURES.items()})
    page.figure(fig, measured_on, "For each layer k, how much it changes the residual stream "
                "(x<sub>k</sub> against x<sub>k+1</sub>), per measure: similarities near 1 and "
                "distances near 0 mark layers that do little.")
    first = get_measure(measures[0])
    say(0.95, "layer map")
    coords = manifold.layer_map(analysis.matrices[first.name],
                                first.higher_is_similar, method=sizes.layer_map, seed=0)
    fig = figures.layer_map(coords, f"Map of the layer boundaries ({sizes.layer_map.upper()} on "
                                    f"{first.title})")
    page.figure(fig, measured_on, "Each point is a layer boundary placed so that distances "
                "follow the measure's dissimilarities; boundaries that sit together change "
                "little between them.")
    if damage is not None:
        if not isinstance(damage, DamageMap):
            say(0.95, "damage map")
            damage = damage_map(lm, pr.input_ids, max_block=int(damage),
                                progress=scaled(progress, 0.95, 0.99))
        page.damage(damage, analysis, measured_on)
    if subject.healing is not None:
        page.healing(subject.healing, model)
    if gens:
        page.generations(gens, sizes)
    page.reproduce(subject, model)
    say(1.0, "done")
    summary = {"model": model, "change": change, "num_layers": variant.num_layers,
               "ppl": {name: round(r.ppl, 4) for name, _, r in ppl},
               "protocol": ppl[-1][2].protocol(), "analysis": measured_on,
               "measures": list(measures), "figures": page.count,
               "healed": subject.healing is not None}
    return Report(html=page.render(title), figures=page.count, summary=summary)


# -- HTML ----------------------------------------------------------------------------------------
_CSS = """
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


def _e(x: Any) -> str:
    return html.escape(str(x))


def _rho(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "",
           numbers: Sequence[int] = ()) -> str:
    """An HTML table; cells are HTML already (escape text with `_e`); the columns in `numbers`
    are right-aligned figures."""
    head = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr></thead>" \
        if headers else ""
    body = "".join("<tr>" + "".join(f"<td{' class=num' if j in numbers else ''}>{c}</td>"
                                    for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table{f' class={cls}' if cls else ''}>{head}<tbody>{body}</tbody></table>"


class _Page:
    """The report's HTML, section by section; figures are counted as they are added."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.count = 0

    def h2(self, title: str, intro: str = "") -> None:
        self.parts.append(f"<h2>{_e(title)}</h2>" + (f"<p>{intro}</p>" if intro else ""))

    def figure(self, fig: go.Figure, measured_on: str, caption: str,
               width: int | None = None) -> None:
        """A figure whose title carries what it was measured on; inline JSON drawn by the page's
        one copy of plotly.js. width: a fixed width in pixels (a square heatmap, whose colour
        bar would otherwise sit far off at the page's edge); None follows the page."""
        title = fig.layout.title.text or ""
        fig.update_layout(title=dict(text=f"{title}<br><span style='font-size:12px;color:#59636e'>"
                                          f"{_e(measured_on)}</span>"),
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
        from . import __version__
        self.parts.append(
            f"<h1>{_e(title)}</h1><p class=sub>Layer Explorer {_e(__version__)} report, "
            f"{date}. Model <b>{_e(model)}</b> ({_e(lm.arch.family)}, {lm.num_layers} layers, "
            f"{lm.num_parameters:,} parameters, {_e(str(lm.dtype).replace('torch.', ''))}); "
            f"text <b>{_e(source)}</b>. This page works offline: every figure is interactive "
            "(hover for values, drag to zoom, double-click to reset).</p>")

    def perplexity(self, ppl: list[tuple[str, Variant, PPLResult]], lm: LoadedModel,
                   variant: Variant) -> None:
        base = ppl[0][2].ppl
        rows = []
        for name, v, r in ppl:
            lo, hi = r.interval()
            n = v.num_parameters()
            rows.append([_e(name), str(v.num_layers), f"{n:,}",
                         f"−{100 * (1 - n / lm.num_parameters):.1f}%" if n != lm.num_parameters
                         else "", f"<b>{r.ppl:.2f}</b>", f"{lo:.2f}–{hi:.2f}",
                         f"×{r.ppl / base:.2f}"])
        self.h2("Before and after", "Perplexity of the original model and of the variant on "
                "the same text (lower is better); the band is the 95% interval of the figure "
                "over the text's windows.")
        self.parts.append(_table(["model", "layers", "parameters", "smaller by", "perplexity",
                                  "95% band", "vs original"], rows,
                                 numbers=(1, 2, 3, 4, 5, 6)))
        self.parts.append(f"<p class=protocol><b>Protocol:</b> {_e(ppl[-1][2].protocol())}. "
                          "Perplexity depends on the window length: longer windows give each "
                          "token more context and a lower figure, so compare figures of one "
                          "protocol only.</p>")

    def plan(self, subject: Subject, lm: LoadedModel, removed: list[int],
             merged: list[list[int]]) -> None:
        v = subject.unhealed or subject.variant
        self.h2("The plan", f"From {lm.num_layers} to {v.num_layers} layers, in the steps "
                "below (a step numbers the layers as they are after the steps before it).")
        rows = [["method", _e(subject.method)]]
        if subject.params:
            rows.append(["parameters", _e(", ".join(f"{k}={json.dumps(x)}"
                                                   for k, x in subject.params.items()))])
        rows.append(["layers dropped (original numbering)",
                     _e(format_layers(removed)) if removed else "none"])
        rows.append(["blocks merged into one (original numbering)",
                     _e("; ".join(format_layers(g) for g in merged)) if merged else "none"])
        rows += [[f"step {k + 1}", _e(step_text(op))]
                 for k, op in enumerate(subject.variant.steps)]
        self.parts.append(_table([], rows))

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
        rows = [[_e(get_measure(r.measure).title), str(r.size), _rho(r.spearman),
                 _rho(r.kendall), _e(block_label(*r.pick)), f"{r.pick_rank} of {r.candidates}",
                 _e(block_label(*r.best))]
                for r in trust_table(dm, analysis.matrices)]
        self.parts.append(_table(["similarity", "block size", "Spearman", "Kendall",
                                  "its pick (layers)", "pick's measured rank",
                                  "measured best"], rows, numbers=(1, 2, 3)))

    def healing(self, h: Healing, model: str) -> None:
        took = f"{h.seconds:.0f} s" if h.seconds >= 1 else "under a second"
        self.h2("Healing", f"Healed with <b>{_e(h.mode)}</b> in {took}. The held-out figure "
                "is the perplexity on calibration windows the healing never fitted on (short "
                "windows of the calibration half), so it differs from the evaluation figures "
                "above; it says whether the healing generalised beyond the windows it saw.")
        rows = [["held-out calibration perplexity before healing", f"{h.held_out_before:.2f}"],
                ["after healing", f"{h.held_out_after:.2f}"],
                ["optimiser steps", str(h.steps) if h.steps else "none (a closed-form fit)"]]
        self.parts.append(_table([], rows, numbers=(1,)))
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
        rows = [[f"<b>{_e(p)}</b>"] + [_e(texts[i]) for _, texts in gens]
                for i, p in enumerate(sizes.prompts)]
        self.parts.append(_table(["prompt"] + [_e(n) for n, _ in gens], rows, cls="gens"))

    def reproduce(self, subject: Subject, model: str) -> None:
        recipe = Recipe.of(subject.variant, subject.method, subject.params)
        recipe.model = model
        data = recipe.to_json()
        link = "data:application/json;base64," + base64.b64encode(data.encode()).decode()
        m = shlex.quote(model)
        self.h2("Make it again", "The recipe is the variant's exact record: <code>python -m "
                f"explorer export --model {_e(m)} --recipe recipe.json --out my-model</code> "
                "rebuilds it as a transformers folder, and <code>python -m explorer report "
                f"--model {_e(m)} --recipe recipe.json --out report.html</code> this page.")
        self.parts.append(f'<p><a download="recipe.json" href="{link}">Save recipe.json</a></p>'
                          f"<details><summary>recipe.json</summary><pre>{_e(data)}</pre>"
                          "</details>")

    def render(self, title: str) -> str:
        from plotly.offline import get_plotlyjs

        return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
                f"<meta name=viewport content='width=device-width, initial-scale=1'>"
                f"<title>{_e(title)}</title><style>{_CSS}</style>"
                f"<script>{get_plotlyjs()}</script></head><body>"
                + "\n".join(self.parts) + "</body></html>")
