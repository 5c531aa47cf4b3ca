"""The web app: one module per tab, each only calling the explorer API.

    model_tab    load a model, choose the text             (explorer.load.place, explorer.probe.text)
    analyse_tab  probe, heatmaps, profiles, maps, tokens    (explorer.probe.probe, .measure, .manifold)
    plan_tab     click or type layers, or ask a method      (explorer.core.variant, explorer.plan)
    compare_tab  perplexity before/after, generations       (explorer.evaluate.perplexity)
    export_tab   recipe, model folder, hub, command line    (explorer.apply.recipe, explorer.export.folder)
    learn_tab    what each measure and method does          (MEASURES / Method descriptions)

Shared plumbing: `state` (what a session keeps: `Session`, `SessionPlan`, ... all declared there),
`common` (the build context `Ctx` with each tab's components, declared there, and the error
wrapper), `registry` (the app's bounded caches; the resident model itself is `explorer.core.session`'s),
`jobs` (the heavy steps, ZeroGPU-ready through `gpu`), `busy` (one step at a time changes a
session's state; another is refused in one line), `stop` (the Stop button's per-session
flag, checked at every progress report), `clickplot` (a Plotly heatmap whose clicks reach
Python), `plots` (figures), `settings`.

Example:
    >>> from explorer.ui import build_app
    >>> build_app().launch()      # or: python app.py
"""

from __future__ import annotations

import threading

import gradio as gr

from explorer.measure import manifold
from explorer.probe.text import MAX_TEXT_BYTES
from explorer.ui import (analyse_tab, busy, compare_tab, export_tab, jobs, learn_tab, model_tab,
                         plan_tab, stop)
from explorer.ui.clickplot import enable_static_plotly
from explorer.ui.common import STOP_LABEL, Ctx, log
from explorer.ui.gpu import ZERO_GPU
from explorer.ui.settings import UISettings
from explorer.ui.state import new_state

TITLE = "Layer Explorer"
HEADER = ("# Layer Explorer\nSee which transformer layers repeat each other, drop or merge "
          "them, and measure what that costs. **1** load a model → **2** analyse → **3** plan "
          "(click the heatmap) → **4** apply and compare → **5** export. New to this? Start with "
          "**Learn**.")
CSS = """.lx-clickplot .modebar { opacity: .6 }
.lx-step { min-height: 3.2em }
.lx-gens { table-layout: fixed; width: 100%; border-collapse: collapse }
.lx-gens td, .lx-gens th { overflow-wrap: anywhere; vertical-align: top; padding: 4px 8px;
                           border-bottom: 1px solid var(--border-color-primary); text-align: left }
/* table headers break between words, never inside one ("Propert-y") */
.prose th, .lx-gens th, .table th, th .cell-wrap span {
    overflow-wrap: normal !important; word-break: keep-all !important; hyphens: none }
/* an error is said once, in its toast: no "Error" badge left over a component's text */
[data-testid=status-tracker] > .error, [data-testid=status-tracker] > .clear-status {
    display: none !important }
[data-testid=status-tracker].error { background: transparent !important; pointer-events: none }
"""


def _background(fn, *args) -> None:
    threading.Thread(target=fn, args=args, daemon=True).start()


def _warm_up() -> None:
    try:
        manifold.warm_up()
    except Exception as exc:  # UMAP only becomes slower on its first use
        log.warning("UMAP warm-up failed: %s", exc)


def _preload(spec: str) -> None:
    try:
        jobs.load_job(spec)
    except Exception as exc:  # the user sees the real error when pressing Load
        log.warning("preloading %s failed: %s", spec, exc)


def build_app(settings: UISettings | None = None, warm_up: bool = True) -> gr.Blocks:
    """Build the Blocks app (not launched). `settings` default: `UISettings.from_env()`."""
    s = settings or UISettings.from_env()
    enable_static_plotly()
    with gr.Blocks(title=TITLE) as demo:
        ctx = Ctx(settings=s, state=gr.State(new_state(s.default_text)))
        with gr.Row(equal_height=False):
            gr.Markdown(HEADER)
            ctx.stop_btn = gr.Button(STOP_LABEL, variant="secondary", size="sm",
                                     scale=0, min_width=190, interactive=False, elem_id="lx-stop")
        with gr.Tabs(elem_id="lx-tabs") as ctx.tabs:
            with gr.Tab("1 · Model", id="model"):
                ctx.model = model_tab.build(ctx)
            with gr.Tab("2 · Analyse", id="analyse"):
                ctx.analyse = analyse_tab.build(ctx)
            with gr.Tab("3 · Plan", id="plan"):
                ctx.plan = plan_tab.build(ctx)
            with gr.Tab("4 · Compare", id="compare"):
                ctx.compare = compare_tab.build(ctx)
            with gr.Tab("5 · Export", id="export") as export:
                ctx.export = export_tab.build(ctx)
                ctx.export.tab = export
            with gr.Tab("6 · Learn", id="learn"):
                learn_tab.build(ctx)
        for tab in (model_tab, analyse_tab, plan_tab, compare_tab, export_tab):
            tab.wire(ctx)

        def stop_running(request: gr.Request):
            stop.stop(request)   # the step raises Stopped at its next report: a "Stopped" toast
            return gr.Button("■ Stopping at the next progress report…", interactive=False)

        def page_closed(request: gr.Request) -> None:
            stop.forget(request)
            busy.forget(request)

        # The flag ends a step here; under ZeroGPU the step runs in another process that cannot
        # see it, so there Stop also abandons the events on the page.
        ctx.stop_btn.click(stop_running, None, [ctx.stop_btn], api_name="stop", queue=False,
                           cancels=ctx.long_events if ZERO_GPU else None)
        demo.unload(page_closed)
    if warm_up:
        _background(_warm_up)
    if s.preload:
        _background(_preload, s.default_model)
    demo.lx_settings = s
    return demo


def launch(settings: UISettings | None = None, **kwargs) -> gr.Blocks:
    """Build and launch; host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
    (default 127.0.0.1:7860)."""
    demo = build_app(settings)
    demo.queue(default_concurrency_limit=4)
    demo.launch(max_file_size=MAX_TEXT_BYTES, css=CSS, **kwargs)
    return demo
