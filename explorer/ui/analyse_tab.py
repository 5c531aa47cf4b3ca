"""Tab 2, Analyse: probe the model, then look at every measure as a heatmap, the adjacent-layer
profiles, a 2-D map of the layers and token clouds of chosen layers."""

import gradio as gr

from . import analysis, features, stop
from .clickplot import ClickPlot
from .common import Ctx, user_errors
from .learn_tab import CONVENTION, measure_help

MAP_METHODS = [("MDS", "mds"), ("UMAP", "umap")]
TOKEN_METHODS = [("PCA", "pca"), ("UMAP", "umap"), ("Diffusion map", "diffusion")]


def analyse(settings, state: dict, seqlen: int, samples: int, map_method: str, progress=None):
    """Probe the calibration text; returns the heatmap, profiles and layer map."""
    state = analysis.run(state, seqlen, samples, settings.probe_max_tokens, progress)
    heat = analysis.heatmap_json(state, progress)
    pr = analysis.entry(state)["probe"]
    L = pr.num_layers
    status = (f"Probed {pr.num_samples} windows x {int(seqlen)} tokens ({pr.num_tokens:,} "
              f"recorded tokens per boundary{', first position of each window left out' if pr.skip_first else ''}) "
              f"in {pr.seconds:.1f} s. Click a cell (a, b) to select layers a..b-1.")
    layer_map = _safe_map(state, map_method, progress)
    picks = gr.update(choices=list(range(L + 1)), value=[0, L // 2, L])
    return (state, status, heat, heat, analysis.profiles_figure(state), layer_map, picks)


def _safe_map(state, method, progress):
    try:
        return analysis.layer_map_figure(state, method, progress)
    except Exception as exc:  # the map is a bonus: show the rest even if it fails
        gr.Warning(f"layer map not available: {exc}")
        return None


@user_errors
def show_measure(state: dict, measure: str, map_method: str, progress=gr.Progress()):
    """Switch the heatmaps (and the layer map) to another measure."""
    state = dict(state)
    if state.get("analysis"):
        state["analysis"] = dict(state["analysis"], measure=measure)
        heat = analysis.heatmap_json(state, progress)
        return state, heat, heat, _safe_map(state, map_method, progress), measure_help(measure)
    return state, gr.update(), gr.update(), gr.update(), measure_help(measure)


@user_errors
def remap(state: dict, map_method: str, progress=gr.Progress()):
    return analysis.layer_map_figure(state, map_method, progress)





def build(ctx: Ctx) -> None:
    s = ctx.settings

    @user_errors
    def run_analysis(state: dict, seqlen: int, samples: int, map_method: str,
                     request: gr.Request, progress=gr.Progress()):
        return analyse(s, state, seqlen, samples, map_method, stop.watch(progress, request))

    @user_errors
    def token_cloud(state: dict, layers: list, method: str, request: gr.Request,
                    progress=gr.Progress()):
        """2-D embeddings of the calibration tokens at the chosen layer boundaries."""
        return analysis.token_figure(state, layers or [], method, s.token_points,
                                     stop.watch(progress, request))

    names = list(features.measures())
    with gr.Row():
        seqlen = gr.Number(s.probe_seqlen, label="Tokens per calibration window", precision=0,
                           minimum=4, maximum=4096)
        samples = gr.Number(s.probe_samples, label="Calibration windows", precision=0,
                            minimum=1, maximum=1024)
        run_btn = gr.Button("Run analysis", variant="primary", elem_id="lx-analyse")
    status = gr.Markdown("Load a model, then run the analysis." if names else
                         "The similarity measures are not available in this installation.",
                         elem_id="lx-analysis-status")
    with gr.Row():
        with gr.Column(scale=3):
            heat = ClickPlot(elem_id="lx-heatmap-analyse",
                             placeholder="The heatmap appears after the analysis.")
        with gr.Column(scale=2):
            measure = gr.Dropdown([(features.measures()[n].title, n) for n in names],
                                  value=analysis.default_measure() or None, label="Measure")
            help_md = gr.Markdown(measure_help(analysis.default_measure()))
            gr.Markdown(CONVENTION)
    profiles = gr.Plot(label="Adjacent-layer profiles")
    with gr.Row():
        with gr.Column(scale=3):
            layer_map = gr.Plot(label="Layer map")
        with gr.Column(scale=1):
            map_method = gr.Radio(MAP_METHODS, value="mds", label="Map method")
            gr.Markdown("Each point is one layer boundary, placed so that boundaries the measure "
                        "finds similar lie close together; the line follows depth.")
    with gr.Row():
        with gr.Column(scale=3):
            tokens = gr.Plot(label="Token clouds")
        with gr.Column(scale=1):
            token_layers = gr.Dropdown([], multiselect=True, label="Boundaries (up to 4)")
            token_method = gr.Radio(TOKEN_METHODS, value="pca", label="Embedding")
            token_btn = gr.Button("Embed tokens")
    ctx.c.update(analyse_heat=heat, measure=measure, run_analysis=run_analysis,
                 token_cloud=token_cloud, seqlen=seqlen, samples=samples, map_method=map_method,
                 analysis_status=status, profiles=profiles, layer_map=layer_map, tokens=tokens,
                 token_layers=token_layers, token_method=token_method, run_btn=run_btn,
                 token_btn=token_btn, measure_help=help_md)


def wire(ctx: Ctx) -> None:
    c = ctx.c
    heats = [c["analyse_heat"], c["plan_heat"]]
    ctx.c["long_events"] += [c["run_btn"].click(c["run_analysis"], [ctx.state, c["seqlen"], c["samples"], c["map_method"]],
                       [ctx.state, c["analysis_status"]] + heats
                       + [c["profiles"], c["layer_map"], c["token_layers"]], api_name="analyse")]
    c["measure"].change(show_measure, [ctx.state, c["measure"], c["map_method"]],
                        [ctx.state] + heats + [c["layer_map"], c["measure_help"]],
                        api_name="show_measure")
    c["map_method"].change(remap, [ctx.state, c["map_method"]], [c["layer_map"]],
                           api_name="layer_map")
    ctx.c["long_events"].append(
        c["token_btn"].click(c["token_cloud"], [ctx.state, c["token_layers"], c["token_method"]],
                             [c["tokens"]], api_name="token_cloud"))
