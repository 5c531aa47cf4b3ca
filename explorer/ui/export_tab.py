"""Tab 5, Export: the recipe as JSON, the variant as a transformers folder (confined to the output
folder), a self-contained HTML report (`explorer.report.build`), an optional push to the Hugging Face
hub, and the equivalent command line.

Opening the tab writes the current plan's recipe, so "Download recipe" downloads at the first
click, and shows the commands that do the same, one option per line.
"""

import json
import os
import re
import shlex
import tempfile
import uuid
from pathlib import Path

import gradio as gr

from explorer.core.errors import ExplorerError
from explorer.export.folder import safe_output_path
from explorer.core.layer_lists import format_layers
from explorer.measure.measures import MEASURES
from explorer.report.build import DEFAULT_MEASURES, ReportAnalysis, ReportSizes
from explorer.core.settings import get
from explorer.ui import analysis, busy, damage_panel, jobs, stop
from explorer.ui.common import Ctx, ExportParts, need_model, user_errors, variant_words
from explorer.ui.caches import APP_CACHES
from explorer.ui.state import Session

HUB_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def hub_token() -> str | None:
    """The server's hub token, only when the operator allowed pushing with
    LAYER_EXPLORER_ALLOW_PUSH=1: on a public Space every visitor would otherwise push with the
    owner's token (a Space often has HF_TOKEN set for other reasons)."""
    if not get("LAYER_EXPLORER_ALLOW_PUSH"):
        return None
    return next((os.environ[v] for v in HUB_TOKEN_VARS if os.environ.get(v)), None)


def _recipe_fields(state: Session) -> tuple[list[dict], str, dict, dict]:
    """(ops, method, params, results) of the session's plan: what its recipe records."""
    need_model(state)
    plan, ops = state.plan, state.ops()
    results = {}
    for h in reversed(state.history):
        if h.ops == ops:
            results = {"ppl_before": h.ppl_before, "ppl_after": h.ppl_after,
                       "protocol": h.protocol}
            break
    return ops, plan.method, plan.params, results


def default_name(state: Session) -> str:
    if not state.model:
        return ""
    plan = state.plan
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", state.model.split("/")[-1]).strip("-")
    tag = plan.method
    if plan.removed:
        tag += "-drop" + format_layers(plan.removed).replace(",", "_")
    if plan.merged:
        tag += "-merge" + "_".join(format_layers(g) for g in plan.merged)
    if state.heal:
        tag += "-healed"
    return f"{base}-{tag}" if plan.ops else f"{base}-original"


def _command(*parts: str) -> str:
    """One shell command, an option (with its value) per line."""
    lines, k = [parts[0]], 1
    while k < len(parts):
        take = 2 if k + 1 < len(parts) and not parts[k + 1].startswith("--") else 1
        lines.append("    " + " ".join(parts[k:k + take]))
        k += take
    return " \\\n".join(lines)


def command_line(settings, state: Session, name: str) -> str:
    """The CLI commands that do what this session's plan does."""
    if not state.model:
        return "# load a model first"
    plan = state.plan
    model = shlex.quote(state.model)
    text = "my-text.txt" if state.text.startswith("user:") else state.text
    # the folder's own name only: the server's paths are not the visitor's business
    out = shlex.quote(str(Path(Path(settings.output_dir).name) / (name or default_name(state))))
    sizes = ("--seqlen", str(settings.ppl_seqlen), "--max-tokens", str(settings.ppl_max_tokens))
    if not plan.ops:
        return _command("python -m explorer eval", "--model", model, "--text", text, *sizes)
    if state.heal:
        return (f"# healed ({state.heal.mode}): Download recipe saves recipe.zip: recipe.json\n"
                "# and the healed layers' tensors, which the replay loads; unzip it, then:\n" +
                _command("python -m explorer export", "--model", model, "--recipe",
                         "recipe.json", "--out", out))
    if plan.manual and all(op.get("op") == "drop" for op in plan.ops):
        drop = format_layers(plan.removed)
        return (_command("python -m explorer eval", "--model", model, "--text", text,
                         "--drop", drop, *sizes) + "\n\n" +
                _command("python -m explorer export", "--model", model, "--drop", drop,
                         "--out", out))
    if not plan.manual and plan.request:
        size = [x for k, v in plan.request.items() for x in (f"--{k}", str(v))]
        params = [x for k, v in plan.params.items()
                  for x in ("--param", shlex.quote(f"{k}={json.dumps(v)}"))]
        seqlen, samples = plan.calib or (settings.method_seqlen, settings.method_samples)
        analysed = ""
        if state.analysis is not None:
            analysed = (f" (the Analyse tab's heatmaps used {state.analysis.key.samples} windows "
                        f"of {state.analysis.key.seqlen})")
        return (f"# the method calibrated on {samples} windows of {seqlen} tokens{analysed}\n" +
                _command("python -m explorer compress", "--model", model, "--text", text,
                         "--method", plan.method, *size, *params, "--calib-seqlen", str(seqlen),
                         "--calib-samples", str(samples), *sizes, "--out", out))
    return ("# Download recipe saves recipe.json; then:\n" +
            _command("python -m explorer export", "--model", model, "--recipe", "recipe.json",
                     "--out", out))


def recipe_label(path: str | None) -> str:
    """The recipe button names the file it downloads: "Download recipe (recipe.zip)" for a
    healed variant's JSON and tensors, "Download recipe (recipe.json)" for the JSON alone."""
    return f"Download recipe ({Path(path).name})" if path else "Download recipe"


def recipe_file(state: Session) -> str:
    """The recipe to download (never trains: see `jobs.recipe_job`)."""
    return jobs.recipe_job(state.model, *_recipe_fields(state))


def session_damage(state: Session):
    """The damage map the Analyse tab measured on the session's analysis (the one with the
    largest blocks when several were), or None."""
    if state.analysis is None:
        return None
    maps = [(n, dm) for (key, n), dm in damage_panel.MAPS.items() if key == state.analysis.key]
    return max(maps, key=lambda item: item[0])[1] if maps else None


def report_file(settings, state: Session, progress=None) -> str:
    """The HTML report of the session's analysis and current variant (healed when the plan was
    healed), written into a fresh temporary folder; returns its path. Without an analysis the
    report probes the text with the app's analysis sizes. The damage map measured on the
    analysis (Analyse tab) is in it when there is one."""
    need_model(state)
    plan, healed = state.plan, state.heal
    measures, found = list(DEFAULT_MEASURES), None
    if state.analysis is not None:          # the heatmaps on screen, from the cache
        measures = list(dict.fromkeys([state.analysis.measure, *MEASURES]))   # all five
        e = analysis.entry(state, progress)
        found = ReportAnalysis(e.probe, APP_CACHES.get_texts(state.analysis.key.text).source,
                               {m: analysis.matrix(state, m, progress) for m in measures},
                               e.adjacent)
    healing = healed.record if healed else None
    s = settings
    sizes = ReportSizes(probe_seqlen=s.probe_seqlen, probe_samples=s.probe_samples,
                        probe_max_tokens=s.probe_max_tokens, seqlen=s.ppl_seqlen,
                        max_tokens=s.ppl_max_tokens, gen_tokens=s.gen_tokens,
                        prompts=tuple(s.prompts))
    page = jobs.report_job(state.model, state.text, state.ops(), plan.ops, plan.method,
                           plan.params, healing, found, measures, sizes, progress,
                           damage=session_damage(state) if found is not None else None)
    folder = Path(tempfile.gettempdir()) / "layer-explorer-reports" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{default_name(state)}-report.html"
    path.write_text(page, encoding="utf-8")
    return str(path)


def save_folder(settings, state: Session, name: str, overwrite: bool) -> tuple[Session, str]:
    """Export the plan's variant into the output folder.

    Overwrite replaces only a folder this browser session saved (listed in `state.exports`):
    on a shared server another visitor's export of the same name is never touched.
    """
    name = (name or "").strip() or default_name(state)
    fields = _recipe_fields(state)
    root = Path(settings.output_dir).expanduser().resolve()
    try:
        target = safe_output_path(name, settings.output_dir)
        if overwrite and target.exists() and str(target) not in state.exports:
            raise ExplorerError(f"'{name}' exists and was not saved in this session: overwrite "
                                "only replaces your own exports; choose another name")
        path, layers = jobs.export_job(state.model, fields[0], name, str(settings.output_dir),
                                       *fields[1:], overwrite)
    except ExplorerError as exc:       # said without the server's folders
        said = str(exc).replace(f"the output folder ({root})", "the export folder")
        raise ExplorerError(said.replace(f"{root}/", "").replace(str(root), "the export folder")) \
            from None
    shown = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path(path).name
    return state.saved(str(path)), (f"Saved {variant_words(state)} of plan v{state.version} "
                                    f"(**{layers} layers**) as `{shown}` in the export folder.")


def push(state: Session, repo_id: str, private: bool) -> str:
    token = hub_token()
    if not token:
        return ("Pushing to the hub is not enabled on this server (it needs HF_TOKEN and "
                "LAYER_EXPLORER_ALLOW_PUSH=1); download "
                "the recipe or save the folder and upload it yourself.")
    folder = state.exported
    if not folder or not Path(folder).is_dir():
        raise ExplorerError("save the model folder first, then push it")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", (repo_id or "").strip()):
        raise ExplorerError("give the hub repository as owner/name")
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id.strip(), private=private, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id.strip())
    except Exception as exc:
        raise ExplorerError(f"push to the hub failed: {exc}") from None
    return f"Pushed to {getattr(info, 'commit_url', None) or repo_id}."


def build(ctx: Ctx) -> ExportParts:
    gr.Markdown("Exports the variant the Compare tab shows: the **current plan** of the Plan "
                "tab, healed when you healed it on Compare (each message says which). Model "
                "folders are written into the server's export folder.")
    with gr.Row():
        with gr.Column():
            recipe = gr.DownloadButton("Download recipe", value=None, interactive=False,
                                       elem_id="lx-recipe")
            gr.Markdown("The recipe is a few hundred bytes of JSON (recipe.json): `python -m "
                        "explorer export --recipe` rebuilds the model from it. A variant with "
                        "fitted layers (a healed one) downloads as recipe.zip: the JSON and the "
                        "fitted tensors, which the rebuild loads instead of fitting again.")
            report_btn = gr.Button("Download report (HTML)", elem_id="lx-report-btn")
            report = gr.DownloadButton("Download the report again", value=None, visible=False,
                                       elem_id="lx-report")
            report_line = gr.Markdown("One HTML file to share, which opens offline: the "
                                      "heatmaps, the plan, perplexity before and after, the "
                                      "healing and the generations.", elem_id="lx-report-line",
                                      elem_classes=["lx-step"])
        with gr.Column():
            name = gr.Textbox(label="Folder name (inside the output folder)", elem_id="lx-name")
            overwrite = gr.Checkbox(False, label="Overwrite a folder saved in this session")
            save_btn = gr.Button("Save model folder", elem_id="lx-save")
            save_md = gr.Markdown(elem_id="lx-export-saved")
    with gr.Row():
        repo = gr.Textbox(label="Hub repository (owner/name)",
                          placeholder="me/smollm2-pruned" if hub_token() else
                          "not enabled: set HF_TOKEN and LAYER_EXPLORER_ALLOW_PUSH=1 on the server")
        private = gr.Checkbox(True, label="Private")
        push_btn = gr.Button("Push to the hub", interactive=bool(hub_token()))
    push_md = gr.Markdown()
    cli = gr.Code("# load a model first", language="shell",
                  label="Same thing from the command line", interactive=False, elem_id="lx-cli")
    return ExportParts(tab=None, recipe=recipe, name=name, overwrite=overwrite, save_btn=save_btn,
                       save_md=save_md, repo=repo, private=private, push_btn=push_btn,
                       push_md=push_md, cli=cli, report_btn=report_btn, report=report,
                       report_line=report_line)


def wire(ctx: Ctx) -> None:
    e, s = ctx.export, ctx.settings

    @user_errors
    def refresh(state: Session, name: str):
        """The tab opened: a fresh name, the commands, and the recipe ready to download."""
        name = default_name(state) if not name else name
        path = recipe_file(state) if state.model else None
        return name, command_line(s, state, name), gr.DownloadButton(
            recipe_label(path), value=path, interactive=bool(path))

    @user_errors
    @busy.claims("the model folder is being saved", "save", reads=True)
    def save(state: Session, name: str, overwrite: bool, request: gr.Request,
             progress=gr.Progress()):
        progress(0.1, desc="writing the model folder")
        return save_folder(s, state, name, overwrite)

    @user_errors
    @busy.claims("the report is being built", "build the report", reads=True)
    def make_report(state: Session, request: gr.Request, progress=gr.Progress()):
        path = report_file(s, state, stop.watch(progress, request))
        size = Path(path).stat().st_size / 1e6
        return (gr.DownloadButton(value=path, visible=True),
                f"Report ready: **{Path(path).name}** ({size:.1f} MB, Plotly included), of "
                f"{variant_words(state)} of plan v{state.version}. The button above downloads "
                f"it again.")

    built = ctx.long_step(e.report_btn.click, make_report, [ctx.state],
                          [e.report, e.report_line], api_name="report",
                          show_progress_on=[e.report_line])
    # the file downloads at once: the page clicks the download button the step filled
    built.success(None, None, None, js="() => document.querySelector('#lx-report')?.click()",
                  queue=False, api_name=False)
    e.tab.select(refresh, [ctx.state, e.name], [e.name, e.cli, e.recipe], api_name="refresh_export")
    e.save_btn.click(save, [ctx.state, e.name, e.overwrite], [ctx.state, e.save_md],
                     api_name="save_folder")
    e.push_btn.click(user_errors(push), [ctx.state, e.repo, e.private], [e.push_md],
                     api_name="push")
