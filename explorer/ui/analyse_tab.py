"""Tab 2, Analyse: probe the model, then look at every measure as a heatmap, the adjacent-layer
profiles, a 2-D map of the layers and token clouds of chosen layers."""

from dataclasses import replace

import time

import gradio as gr

from explorer.core.errors import ExplorerError
from explorer.load.embedded import EMBEDDED
from explorer.measure.measures import MEASURES
from explorer.measure.profiles import parse_models
from explorer.ui import analysis, busy, damage_panel, jobs, plots, stop
from explorer.ui.clickplot import ClickPlot
from explorer.ui.common import AnalyseParts, Ctx, log, user_errors
from explorer.ui.learn_tab import CONVENTION, measure_help
from explorer.ui.state import Session

MAP_METHODS = [("MDS", "mds"), ("UMAP", "umap")]
TOKEN_METHODS = [(words, name) for name, words in analysis.TOKEN_METHODS.items()]
WAITING = "Load a model (Model tab), then run the analysis."


def analyse(settings, state: Session, seqlen: int, samples: int, map_method: str, progress=None):
    """Probe the calibration text; returns the heatmap, profiles and layer map."""
    start = time.monotonic()
    state, fresh = analysis.run(state, seqlen, samples, settings.probe_max_tokens, progress)
    heat = analysis.heatmap_json(state, progress)
    key = state.analysis.key
    pr = analysis.entry(state).probe
    L = pr.num_layers
    layer_map = _safe_map(state, map_method, progress)
    profiles = analysis.profiles_figure(state)
    status = probe_status(pr, key.seqlen, key.samples, fresh, time.monotonic() - start)
    picks = gr.update(choices=list(range(L + 1)), value=[0, L // 2, L])
    return (state, status, heat, heat, profiles, layer_map, picks)


def probe_status(pr, seqlen: int, asked: int, fresh: bool, total: float | None = None) -> str:
    """What the analysis probed: windows and tokens, a request the text could not fill,
    whether the probe was computed now or reused, and the whole analysis' time (`total`: the
    probe, then the profiles, the heatmap and the layer map)."""
    skipped = ", first position of each window left out" if pr.skip_first else ""
    cut = ""
    if pr.num_samples < asked:
        cut = (f" You asked for {asked} windows: the calibration text holds only "
               f"{pr.num_samples} windows of {seqlen} tokens, so all of them were used.")
    what = (f"{pr.num_samples} windows x {seqlen} tokens ({pr.num_tokens:,} recorded tokens per "
            f"boundary{skipped})")
    done = f"Probed {what} in {pr.seconds:.1f} s" if fresh else \
        f"Reused the earlier probe of {what}, which took {pr.seconds:.1f} s"
    done += (f"; the whole analysis (with the profiles, the heatmap and the layer map) took "
             f"{total:.1f} s." if total is not None else ".")
    return f"{done}{cut} Click a cell (a, b) to select layers a..b-1."


def models_figure(settings, state: Session, models: str, measure: str, progress=None):
    """Adjacent-layer profiles of several models side by side. The session's own model, once
    analysed on the same text, is drawn from its analysis (no second probe), and the others are
    probed with the analysis' sizes; it is loaded back last, so it stays the resident model."""
    specs = parse_models(models)
    text = state.text if not state.text.startswith("user:") else "wiki"
    mine = state.analysis if state.analysis is not None and state.model in specs and \
        text == state.text else None
    seqlen, samples = (mine.key.seqlen, mine.key.samples) if mine else \
        (settings.probe_seqlen, settings.probe_samples)
    others = [m for m in specs if m != state.model] + \
        ([state.model] if state.model in specs and mine is None else [])
    info = analysis.info(measure)
    # the analysis' probe is read first: another model's load empties the model's caches
    own = [jobs.session_profile_job(state.model, analysis.entry(state, progress), info.name,
                                    text, progress)] if mine else []
    try:
        profiles = jobs.profiles_job(others, info.name, text, seqlen, samples,
                                     progress)["profiles"] if others else []
    except ExplorerError as exc:      # it names the models that failed and the ones that did not
        raise type(exc)(f"{exc}; {state.model} is drawn from its analysis") if own else exc
    finally:
        if own and others:
            jobs.load_job(state.model, progress)      # the session's model resident again
    return plots.profiles_overlay(profiles + own, info.title, info.higher_is_similar)


def _safe_map(state: Session, method: str, progress):
    try:
        return analysis.layer_map_figure(state, method, progress)
    except Exception as exc:  # the map is a bonus: show the rest even if it fails
        log.warning("layer map not available: %s", exc)
        gr.Warning(f"layer map not available: {exc}")
        return None


@user_errors
def show_measure(state: Session, measure: str, map_method: str, progress=gr.Progress()):
    """Switch the heatmaps (and the layer map) to another measure."""
    if state.analysis is not None:
        state = replace(state, analysis=replace(state.analysis, measure=measure))
        heat = analysis.heatmap_json(state, progress)
        return state, heat, heat, _safe_map(state, map_method, progress), measure_help(measure)
    return state, gr.update(), gr.update(), gr.update(), measure_help(measure)


@user_errors
def remap(state: Session, map_method: str, progress=gr.Progress()):
    return analysis.layer_map_figure(state, map_method, progress)


def build(ctx: Ctx) -> AnalyseParts:
    s = ctx.settings
    with gr.Row(equal_height=True):
        seqlen = gr.Number(s.probe_seqlen, label=analysis.SEQLEN_FIELD[0], precision=0,
                           info="{1} to {2}".format(*analysis.SEQLEN_FIELD),
                           elem_id="lx-seqlen")
        samples = gr.Number(s.probe_samples, label=analysis.SAMPLES_FIELD[0], precision=0,
                            info="{1} to {2}; fewer when the text runs out".format(
                                *analysis.SAMPLES_FIELD), elem_id="lx-samples")
        run_btn = gr.Button("Run analysis", variant="primary", elem_id="lx-analyse")
    status = gr.Markdown(WAITING, elem_id="lx-analysis-status", elem_classes=["lx-step"])
    with gr.Row():
        with gr.Column(scale=3):
            heat = ClickPlot(elem_id="lx-heatmap-analyse",
                             placeholder="The heatmap appears after the analysis.")
        with gr.Column(scale=2):
            measure = gr.Dropdown([(MEASURES[n].title, n) for n in MEASURES],
                                  value=analysis.default_measure(), label="Measure",
                                  elem_id="lx-measure")
            help_md = gr.Markdown(measure_help(analysis.default_measure()),
                                  elem_id="lx-measure-help")
            gr.Markdown(CONVENTION)
    profiles = gr.Plot(label="Adjacent-layer profiles")
    damage = damage_panel.build(ctx)
    with gr.Row():
        with gr.Column(scale=3):
            layer_map = gr.Plot(label="Layer map", elem_id="lx-layer-map")
        with gr.Column(scale=1):
            map_method = gr.Radio(MAP_METHODS, value="mds", label="Map method")
            gr.Markdown("Each point is one layer boundary, placed so that boundaries the measure "
                        "finds similar lie close together; the line follows depth (every fifth "
                        "boundary is labelled; hover for the others).")
    with gr.Row():
        with gr.Column(scale=3):
            tokens = gr.Plot(plots.say(None, plots.EMPTY_TOKENS), label="Token clouds")
        with gr.Column(scale=1):
            token_layers = gr.Dropdown([], multiselect=True, label="Boundaries (up to 4)")
            token_method = gr.Radio(TOKEN_METHODS, value="pca", label="Embedding")
            token_btn = gr.Button("Embed tokens")
    with gr.Accordion("Models side by side: where does each model's redundancy live?",
                      open=False):
        # suggest only models this server has installed (one that is not fails to load)
        others = [name for name, m in EMBEDDED.items()
                  if name != s.default_model and m.installed()]
        with gr.Row(equal_height=True):
            models = gr.Textbox(", ".join([s.default_model] + others[:1]),
                                label="Models (comma-separated: embedded names, hub ids, folders)",
                                elem_id="lx-models", scale=3)
            models_btn = gr.Button("Compare models", elem_id="lx-compare-models", scale=1)
        models_line = gr.Markdown(
            "Each model is probed on the same text and drawn on relative depth (0 = first layer, "
            "1 = last) with the measure chosen above. The server holds one model at a time: it "
            "loads each in turn and yours again at the end; profiles are kept, so asking again "
            "is instant.", elem_id="lx-models-line", elem_classes=["lx-step"])
        models_plot = gr.Plot(label="Profiles on relative depth", elem_id="lx-models-plot")
    return AnalyseParts(seqlen=seqlen, samples=samples, run_btn=run_btn, status=status, heat=heat,
                        measure=measure, measure_help=help_md, profiles=profiles,
                        layer_map=layer_map, map_method=map_method, tokens=tokens,
                        token_layers=token_layers, token_method=token_method, token_btn=token_btn,
                        models=models, models_btn=models_btn, models_line=models_line,
                        models_plot=models_plot, damage=damage)


def wire(ctx: Ctx) -> None:
    a, s = ctx.analyse, ctx.settings
    heats = [a.heat, ctx.plan.heat]
    damage_panel.wire(ctx, a.damage)

    @user_errors
    @busy.claims("the analysis is running", "run the analysis")
    def run_analysis(state: Session, seqlen: int, samples: int, map_method: str,
                     request: gr.Request, progress=gr.Progress()):
        return analyse(s, state, seqlen, samples, map_method, stop.watch(progress, request))

    @user_errors
    def token_cloud(state: Session, layers: list, method: str, request: gr.Request,
                    progress=gr.Progress()):
        """2-D embeddings of the calibration tokens at the chosen layer boundaries."""
        return analysis.token_figure(state, layers or [], method, s.token_points,
                                     stop.watch(progress, request))

    ctx.long_step(a.run_btn.click, run_analysis, [ctx.state, a.seqlen, a.samples, a.map_method],
                  [ctx.state, a.status] + heats + [a.profiles, a.layer_map, a.token_layers],
                  api_name="analyse", show_progress_on=[a.status])
    a.measure.change(show_measure, [ctx.state, a.measure, a.map_method],
                     [ctx.state] + heats + [a.layer_map, a.measure_help], api_name="show_measure",
                     show_progress_on=[a.heat])
    a.map_method.change(remap, [ctx.state, a.map_method], [a.layer_map], api_name="layer_map")
    @user_errors
    def compare_models(state: Session, models: str, measure: str, request: gr.Request,
                       progress=gr.Progress()):
        return models_figure(s, state, models, measure, stop.watch(progress, request))

    ctx.long_step(a.models_btn.click, compare_models, [ctx.state, a.models, a.measure],
                  [a.models_plot], api_name="compare_models", show_progress_on=[a.models_line])
    ctx.long_step(a.token_btn.click, token_cloud, [ctx.state, a.token_layers, a.token_method],
                  [a.tokens], api_name="token_cloud")
