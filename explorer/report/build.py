"""A report to take away: one self-contained HTML file of an analysis and a variant.

Teachers and authors share a result without a running server: the file holds the similarity
heatmaps of the analysis (with the plan drawn on them), the adjacent-layer profiles, the layer
map, the plan and its recipe, perplexity before and after with the protocol line, the healing
(when the variant was healed) and greedy generations of the original model next to the variant.
Plotly's JavaScript is inlined from the installed plotly package, so the file opens offline, in
any browser, years later; nothing in it names a path of the machine that wrote it.

It reuses the pipeline: `probe` + `measure` for the analysis, `manifold.layer_map`, `evaluate`
(perplexity through the dense cache, greedy generations) and the figure builders of
`explorer.report.figures`, the same ones the app draws. Made by `python -m explorer report` and by the
app's Export tab ("Download report").

Example:
    >>> lm, texts = load_model("smollm2-135m"), load_texts("wiki")
    >>> r = build_report(lm, texts, Subject(Variant.identity(lm).drop([14, 15])))
    >>> r.write("report.html")
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from explorer.report import figures
from explorer.measure import manifold
from explorer.core.errors import ExplorerError, one_line
from explorer.evaluate.generate import DEFAULT_PROMPTS, generate
from explorer.evaluate.perplexity import PPLResult, perplexity
from explorer.core.layer_lists import format_layers
from explorer.core.model import LoadedModel
from explorer.measure.damage import DamageMap, damage_map
from explorer.measure.measures import MEASURES, adjacent, get_measure, similarity
from explorer.probe.probe import ProbeResult, probe
from explorer.core.progress import Event, Progress, scaled
from explorer.apply.recipe import Recipe, replay
from explorer.probe.text import Texts
from explorer.core.variant import Variant
from explorer.heal.registry import HealResult
from explorer.report.html import HEATMAP_WIDTH, Page, step_text

DEFAULT_MEASURES = ("cosine", "angular")   # the drop methods' measures: ShortGPT's and Gromov's


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


@dataclass
class Subject:
    """What the report is about: a variant, how it was planned, and its healing if the last step
    of the variant healed it (`unhealed` is then the variant before that step)."""

    variant: Variant
    method: str = "manual"
    params: dict = field(default_factory=dict)
    unhealed: Variant | None = None
    healing: HealResult | None = None


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
    from explorer.heal.registry import replay_heal

    if lm.num_layers != recipe.num_layers:
        recipe.build(lm)            # raises the one-line size mismatch
    ops = list(recipe.ops)
    if ops and ops[-1].get("op") == "heal":
        unhealed = replay(lm, ops[:-1])
        r = replay_heal(unhealed, ops[-1])
        return Subject(r.variant, recipe.method, recipe.params, unhealed, r)
    return Subject(replay(lm, ops), recipe.method, recipe.params)


def plan_layers(variant: Variant) -> tuple[list[int], list[list[int]]]:
    """(original layers dropped, groups of original layers made into one): what the heatmaps
    draw, read from the variant's origin map."""
    kept = {o for g in variant.groups for o in g}
    return [i for i in range(variant.lm.num_layers) if i not in kept], variant.merged()


def change_words(variant: Variant) -> str:
    """The variant in words, original layer numbers, for the report's title: "drop layer 12;
    merge layers 14-15; healed with Closed-form linear map ..." (not the recipe's op summaries,
    which count slots)."""
    from explorer.heal import get_mode

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
    damage: a measured damage map of the analysis' windows (explorer.measure.damage), or the largest
        block to measure one with; the report then shows it and each similarity's rank
        correlation with it (explorer.measure.trust).
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
    page = Page()

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
