"""The web app: one module per tab, each only calling the explorer API.

    model_tab    load a model, choose the text             (explorer.load, explorer.text)
    analyse_tab  probe, heatmaps, profiles, maps, tokens    (explorer.probe, .measure, .manifold)
    plan_tab     click or type layers, or ask a method      (explorer.variant, explorer.methods)
    compare_tab  perplexity before/after, generations       (explorer.evaluate)
    export_tab   recipe, model folder, hub, command line    (explorer.recipe, explorer.export)
    learn_tab    what each measure and method does          (MEASURES / Method descriptions)

Shared plumbing: `registry` (the process's one resident model and caches), `state` (what a
session keeps: names and recipe ops), `jobs` (the heavy steps, ZeroGPU-ready through `gpu`),
`stop` (the Stop button's per-session flag, checked at every progress report),
`clickplot` (a Plotly heatmap whose clicks reach Python), `plots` (figures), `settings`.

Example:
    >>> from explorer.ui import build_app
    >>> build_app().launch()      # or: python app.py
"""

from __future__ import annotations

import threading

import gradio as gr

from ..text import MAX_TEXT_BYTES
from . import analyse_tab, compare_tab, export_tab, features, learn_tab, model_tab, plan_tab, stop
from .clickplot import enable_static_plotly
from .common import Ctx
from .registry import REGISTRY
from .settings import UISettings
from .state import new_state

TITLE = "Layer Explorer"
HEADER = ("# Layer Explorer\nSee which transformer layers repeat each other, drop or merge "
          "them, and measure what that costs. **1** load a model → **2** analyse → **3** plan "
          "(click the heatmap) → **4** apply and compare → **5** export. New to this? Start with "
          "**Learn**.")
CSS = ".lx-clickplot .modebar { opacity: .6 }"


def _background(fn, *args) -> None:
    threading.Thread(target=fn, args=args, daemon=True).start()


def _warm_up() -> None:
    try:
        features.module("manifold").warm_up()
    except Exception:  # optional: UMAP only becomes slower on its first use
        pass


def _preload(spec: str) -> None:
    try:
        REGISTRY.ensure_model(spec)
    except Exception:  # the user sees the real error when pressing Load
        pass


def build_app(settings: UISettings | None = None, warm_up: bool = True) -> gr.Blocks:
    """Build the Blocks app (not launched). `settings` default: `UISettings.from_env()`."""
    s = settings or UISettings.from_env()
    enable_static_plotly()
    with gr.Blocks(title=TITLE) as demo:
        state = gr.State(new_state(s.default_text))
        ctx = Ctx(settings=s, state=state)
        ctx.c["long_events"] = []     # the events the Stop button stops (see stop.py)
        with gr.Row(equal_height=False):
            gr.Markdown(HEADER)
            stop_btn = gr.Button("■ Stop the running step", variant="stop", size="sm", scale=0,
                                 min_width=190, elem_id="lx-stop")
        with gr.Tabs(elem_id="lx-tabs") as tabs:
            ctx.c["tabs"] = tabs
            with gr.Tab("1 · Model", id="model"):
                model_tab.build(ctx)
            with gr.Tab("2 · Analyse", id="analyse"):
                analyse_tab.build(ctx)
            with gr.Tab("3 · Plan", id="plan"):
                plan_tab.build(ctx)
            with gr.Tab("4 · Compare", id="compare"):
                compare_tab.build(ctx)
            with gr.Tab("5 · Export", id="export") as export:
                ctx.c["export_tab"] = export
                export_tab.build(ctx)
            with gr.Tab("6 · Learn", id="learn"):
                learn_tab.build(ctx)
        for tab in (model_tab, analyse_tab, plan_tab, compare_tab, export_tab):
            tab.wire(ctx)

        def stop_running(request: gr.Request) -> None:
            stop.stop(request)

        def page_closed(request: gr.Request) -> None:
            stop.forget(request)

        stop_btn.click(stop_running, None, None, cancels=ctx.c["long_events"], api_name="stop",
                       queue=False)
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
