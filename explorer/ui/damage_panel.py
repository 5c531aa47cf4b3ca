"""The Analyse tab's damage panel: the measured damage map of the analysis' calibration windows
(explorer.measure.damage), how far each similarity can be trusted (explorer.measure.trust) and a scatter of one
similarity's scores against the measured damage. Display only: every number comes from the
library.

The map is measured on the windows the analysis probed (`ProbeEntry.probe.input_ids`), so its
cells sit in the same (a, b) coordinates as the heatmap. While it runs, the step's progress line
counts the candidates and gives each one's perplexity, and the map, the table and the scatter fill
in as candidates finish (`measure_stream` yields the map so far, at most every `STREAM_SECONDS`).
A Stop ends it at the next candidate; the cells done stay shown and the status and the map's
title say "partial: k of n candidates" (a partial map is not kept). A click on a point of the scatter puts its
block in the plan (`plan_tab.on_cell`, as a click on the heatmap's cell).
"""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from explorer.core.cache import Store
from explorer.measure.damage import METRIC_TITLES, METRICS, DamageMap
from explorer.report.figures import damage_scatter, heatmap
from explorer.measure.measures import MEASURES, measure_title
from explorer.measure.trust import scatter_points, trust_table
from explorer.ui import analysis, jobs, plan_tab, stop
from explorer.ui.clickplot import ClickPlot
from explorer.ui.common import Ctx, need_analysis, user_errors
from explorer.ui.state import Session
from explorer.ui.worker import STREAM_SECONDS, streamed

# finished maps, by (probe key, largest block): a second look (another metric, another scatter)
# costs nothing
MAPS: Store = Store("damage maps", size=4, model_bound=True)

BLOCK_FIELD = ("Largest block measured", 1, 8)
TABLE_HEADERS = ["similarity", "block size", "Spearman", "Kendall", "its pick", "pick's rank",
                 "measured best"]
INTRO = ("**Measured damage.** Each candidate (every single layer and every block up to the "
         "size below) is removed and run on the analysis' calibration windows; the map shows "
         "what that costs against the dense model, in the heatmap's cells (cell (a, b) = without "
         "layers a..b-1). It costs one pass per candidate from its cut onward: minutes on a CPU. "
         "The table then says how well each similarity ranks the same candidates.")


def views(state: Session, dm: DamageMap, metric: str, measure: str, size: int,
          live: bool = False):
    """Status line, damage heatmap, trust table and scatter of a map (`live`: one still filling
    in, its blank cells still to come)."""
    L = dm.num_layers
    mats = {name: analysis.matrix(state, name) for name in MEASURES}
    rows = [[measure_title(r.measure), r.size, _num(r.spearman), _num(r.kendall),
             f"{r.pick[0]}-{r.pick[1] - 1}" if r.size > 1 else str(r.pick[0]),
             f"{r.pick_rank} of {r.candidates}",
             f"{r.best[0]}-{r.best[1] - 1}" if r.size > 1 else str(r.best[0])]
            for r in trust_table(dm, mats, metric=metric)]
    where = f"{dm.windows} windows x {dm.seqlen} tokens"
    if live:
        status = (f"Measuring: {dm.progress_note} done on {where} ({dm.seconds:.0f} s so far); "
                  f"dense perplexity {dm.dense_ppl:.2f}. The blank cells are still to come.")
        note = f" ({dm.progress_note} so far)"
    else:
        part = (f" **Stopped, partial: {dm.progress_note};** the cells shown are measured, the "
                "blank ones not." if dm.partial else "")
        status = (f"Measured {len(dm.done)} removals of up to {dm.max_block} layers on {where} "
                  f"in {dm.seconds:.0f} s; dense perplexity {dm.dense_ppl:.2f}.{part}")
        note = f" (partial: {dm.progress_note})" if dm.partial else ""
    fig = heatmap(dm.matrix(metric).numpy(), f"{METRIC_TITLES[metric]}: layer boundaries "
                  f"x0..x{L}{note}", higher_is_similar=False)
    size = max(1, min(int(size or 1), dm.max_block))
    mi = MEASURES[measure]
    scatter = damage_scatter(scatter_points(dm, mats[measure], size, metric), mi.title,
                             mi.higher_is_similar, METRIC_TITLES[metric])
    return status, fig, rows, scatter.to_json()


def measure_stream(state: Session, block: Any, metric: str, measure: str, size: Any,
                   report: Any = None, every: float = STREAM_SECONDS) -> Iterator[tuple]:
    """The damage map of the session's analysis as it fills in: yields `views` of the map so far
    after finished candidates (at most every `every` seconds, 0: after each), then of the whole
    map, or of the cells done when a Stop (through `report`, the step's watched progress) ended it.

    A finished map is kept in `MAPS` and shown again at once; a partial one is not kept."""
    from explorer.ui import controls

    a = need_analysis(state)
    n = controls.whole_number(block, *BLOCK_FIELD)
    dm = MAPS.get((a.key, n))
    if dm is not None:
        yield views(state, dm, metric, measure, size)
        return
    ids = analysis.entry(state, report).probe.input_ids            # the analysis' windows

    def job(put) -> DamageMap:
        return jobs.damage_job(state.model, ids, n, report, on_cell=lambda m: put(m.snapshot()))

    maps = streamed(job, "damage-map", every)
    while True:
        try:
            batch = next(maps)
        except StopIteration as done:
            dm = done.value
            break
        for m in (batch if every <= 0 else batch[-1:]):     # 0: every map; else the latest
            yield views(state, m, metric, measure, size, live=True)
    if not dm.partial:
        MAPS.put((a.key, n), dm)
    yield views(state, dm, metric, measure, size)


def _num(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def build(ctx: Ctx) -> dict:
    with gr.Accordion("Measured damage: how far can each similarity be trusted?", open=False):
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            block = gr.Number(2, label=BLOCK_FIELD[0], precision=0,
                              info="{1} to {2} layers".format(*BLOCK_FIELD),
                              elem_id="lx-damage-block")
            metric = gr.Radio([(METRIC_TITLES[m], m) for m in METRICS], value="nll",
                              label="Damage shown", elem_id="lx-damage-metric")
            run_btn = gr.Button("Measure damage", elem_id="lx-damage-run")
        status = gr.Markdown("", elem_id="lx-damage-status", elem_classes=["lx-step"])
        heat = gr.Plot(label="Damage map", elem_id="lx-damage-map")
        table = gr.Dataframe(headers=TABLE_HEADERS, value=[], interactive=False,
                             label="Each similarity against the measured damage "
                                   "(rank 1 = its pick is the measured best)",
                             elem_id="lx-trust-table")
        with gr.Row(equal_height=True):
            measure = gr.Dropdown([(MEASURES[n].title, n) for n in MEASURES],
                                  value=analysis.default_measure(), label="Scatter: similarity",
                                  elem_id="lx-damage-measure")
            size = gr.Number(1, label="Scatter: block size", precision=0,
                             elem_id="lx-damage-size")
        scatter = ClickPlot(height=460, elem_id="lx-damage-scatter",
                            placeholder="The scatter appears once the damage is measured; "
                                        "click a point to put that block in the plan.")
    return dict(block=block, metric=metric, run_btn=run_btn, status=status, heat=heat,
                table=table, measure=measure, size=size, scatter=scatter)


def wire(ctx: Ctx, d: dict) -> None:
    from explorer.ui import controls

    outs = [d["status"], d["heat"], d["table"], d["scatter"]]

    @user_errors
    def measure_damage(state: Session, block: Any, metric: str, measure: str, size: Any,
                       request: gr.Request, progress=gr.Progress()):
        yield from measure_stream(state, block, metric, measure, size,
                                  stop.watch(progress, request))

    @user_errors
    def redraw(state: Session, block: Any, metric: str, measure: str, size: Any):
        a = need_analysis(state)
        dm = MAPS.get((a.key, controls.whole_number(block, *BLOCK_FIELD)))
        if dm is None:
            return [gr.update()] * 4
        return views(state, dm, metric, measure, size)

    inputs = [ctx.state, d["block"], d["metric"], d["measure"], d["size"]]
    ctx.long_step(d["run_btn"].click, measure_damage, inputs, outs, api_name="damage_map",
                  show_progress_on=[d["status"]])
    for c in (d["metric"], d["measure"], d["size"]):
        c.change(redraw, inputs, outs, api_name=False)
    # a click on a point selects its block in the plan, as a click on the heatmap's cell does
    d["scatter"].select(plan_tab.on_cell, plan_tab.cell_inputs(ctx), plan_tab.cell_outputs(ctx),
                        api_name="select_cell_damage", show_progress_on=[ctx.plan.status])
