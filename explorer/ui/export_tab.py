"""Tab 5, Export: the recipe as JSON, the variant as a transformers folder (confined to the output
folder), an optional push to the Hugging Face hub, and the equivalent command line."""

import json
import os
import re
import shlex
import tempfile
import uuid
from pathlib import Path

import gradio as gr

from ..errors import ExplorerError
from ..export import export, safe_output_path
from ..recipe import Recipe
from .common import Ctx, need_model, user_errors
from .registry import REGISTRY
from .state import format_layers

HUB_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def hub_token() -> str | None:
    """The server's hub token, only when the operator allowed pushing with
    LAYER_EXPLORER_ALLOW_PUSH=1: on a public Space every visitor would otherwise push with the
    owner's token (a Space often has HF_TOKEN set for other reasons)."""
    if os.environ.get("LAYER_EXPLORER_ALLOW_PUSH") != "1":
        return None
    return next((os.environ[v] for v in HUB_TOKEN_VARS if os.environ.get(v)), None)


def _variant_and_recipe(state: dict):
    need_model(state)
    plan = state.get("plan") or {}
    lm = REGISTRY.model_for(state)
    variant = REGISTRY.variant(lm, plan.get("ops", []))
    results = {}
    for h in reversed(state.get("history", [])):
        if h.get("ops") == plan.get("ops"):
            results = {"ppl_before": h["ppl_before"], "ppl_after": h["ppl_after"],
                       "protocol": h["protocol"]}
            break
    recipe = Recipe.of(variant, method=plan.get("method", "manual"),
                       params=plan.get("params", {}), results=results)
    recipe.ops = [dict(op) for op in plan.get("ops", [])]  # the ops exactly as planned
    return variant, recipe


def default_name(state: dict) -> str:
    if not state.get("model"):
        return ""
    plan = state.get("plan") or {}
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", state["model"].split("/")[-1]).strip("-")
    tag = plan.get("method", "manual")
    if plan.get("removed"):
        tag += "-drop" + format_layers(plan["removed"]).replace(",", "_")
    if plan.get("merged"):
        tag += "-merge" + "_".join(format_layers(g) for g in plan["merged"])
    return f"{base}-{tag}" if plan.get("ops") else f"{base}-original"


def command_line(settings, state: dict, name: str) -> str:
    """The CLI commands that do what this session's plan does."""
    if not state.get("model"):
        return "# load a model first"
    plan = state.get("plan") or {}
    model = shlex.quote(state["model"])
    text = state.get("text", "wiki")
    text = "my-text.txt" if text.startswith("user:") else text
    out = shlex.quote(str(Path(settings.output_dir) / (name or default_name(state))))
    sizes = f"--seqlen {settings.ppl_seqlen} --max-tokens {settings.ppl_max_tokens}"
    only_drops = plan.get("ops") and all(op.get("op") == "drop" for op in plan["ops"]) \
        and plan.get("method") == "manual"
    if not plan.get("ops"):
        return f"python -m explorer eval --model {model} --text {text} {sizes}"
    if only_drops:
        drop = format_layers(plan["removed"])
        return (f"python -m explorer eval --model {model} --text {text} --drop {drop} {sizes}\n"
                f"python -m explorer export --model {model} --drop {drop} --out {out}")
    if plan.get("method") != "manual" and plan.get("request"):
        size = "".join(f" --{k} {v}" for k, v in plan["request"].items())
        params = "".join(f" --param {shlex.quote(f'{k}={json.dumps(v)}')}"
                         for k, v in (plan.get("params") or {}).items())
        seqlen, samples = plan.get("calib", [settings.method_seqlen, settings.method_samples])
        return (f"python -m explorer compress --model {model} --text {text} --method "
                f"{plan['method']}{size}{params} --calib-seqlen {seqlen} --calib-samples "
                f"{samples} {sizes} --out {out}")
    return ("# save the recipe with 'Download recipe' as recipe.json, then:\n"
            f"python -m explorer export --model {model} --recipe recipe.json --out {out}")


def recipe_file(state: dict) -> str:
    _, recipe = _variant_and_recipe(state)
    folder = Path(tempfile.gettempdir()) / "layer-explorer-recipes" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.json"
    path.write_text(recipe.to_json(), encoding="utf-8")
    return str(path)


def save_folder(settings, state: dict, name: str, overwrite: bool) -> tuple[dict, str]:
    """Export the plan's variant into the output folder.

    Overwrite replaces only a folder this browser session saved (listed in state["exports"]):
    on a shared server another visitor's export of the same name is never touched.
    """
    name = (name or "").strip() or default_name(state)
    variant, recipe = _variant_and_recipe(state)
    own = state.get("exports", [])
    target = safe_output_path(name, settings.output_dir)
    if overwrite and target.exists() and str(target) not in own:
        raise ExplorerError(f"'{name}' exists and was not saved in this session: overwrite only "
                            "replaces your own exports; choose another name")
    path = export(variant, name, root=settings.output_dir, recipe=recipe, overwrite=overwrite)
    state = dict(state, exported=str(path), exports=[*own, str(path)][-100:])
    return state, f"Saved **{variant.num_layers}-layer** model to `{path}`."


def push(state: dict, repo_id: str, private: bool) -> str:
    token = hub_token()
    if not token:
        return ("Pushing to the hub is not enabled on this server (it needs HF_TOKEN and "
                "LAYER_EXPLORER_ALLOW_PUSH=1); download "
                "the recipe or save the folder and upload it yourself.")
    folder = state.get("exported")
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


def build(ctx: Ctx) -> None:
    s = ctx.settings
    gr.Markdown(f"Exports the **current plan** of the Plan tab. Model folders are written under "
                f"`{Path(s.output_dir).resolve()}`.")
    with gr.Row():
        with gr.Column():
            recipe_btn = gr.Button("Download recipe (JSON)", elem_id="lx-recipe")
            recipe_out = gr.File(label="Recipe", interactive=False)
        with gr.Column():
            name = gr.Textbox(label="Folder name (inside the output folder)", elem_id="lx-name")
            overwrite = gr.Checkbox(False, label="Overwrite a folder saved in this session")
            save_btn = gr.Button("Save model folder", elem_id="lx-save")
            save_md = gr.Markdown()
    with gr.Row():
        repo = gr.Textbox(label="Hub repository (owner/name)",
                          placeholder="me/smollm2-pruned" if hub_token() else
                          "not enabled: set HF_TOKEN and LAYER_EXPLORER_ALLOW_PUSH=1 on the server")
        private = gr.Checkbox(True, label="Private")
        push_btn = gr.Button("Push to the hub", interactive=bool(hub_token()))
    push_md = gr.Markdown()
    cli = gr.Code("# load a model first", language="shell", label="Same thing from the command line",
                  interactive=False)
    ctx.c.update(recipe_btn=recipe_btn, recipe_out=recipe_out, export_name=name,
                 overwrite=overwrite, save_btn=save_btn, save_md=save_md, repo=repo,
                 private=private, push_btn=push_btn, push_md=push_md, cli=cli)


def wire(ctx: Ctx) -> None:
    c, s = ctx.c, ctx.settings

    @user_errors
    def refresh(state: dict, name: str):
        name = default_name(state) if not name else name
        return name, command_line(s, state, name)

    @user_errors
    def save(state: dict, name: str, overwrite: bool, progress=gr.Progress()):
        progress(0.1, desc="writing the model folder")
        state, msg = save_folder(s, state, name, overwrite)
        return state, msg

    c["export_tab"].select(refresh, [ctx.state, c["export_name"]], [c["export_name"], c["cli"]],
                           api_name=False)
    c["recipe_btn"].click(user_errors(recipe_file), [ctx.state], [c["recipe_out"]],
                          api_name="recipe")
    c["save_btn"].click(save, [ctx.state, c["export_name"], c["overwrite"]],
                        [ctx.state, c["save_md"]], api_name="save_folder")
    c["push_btn"].click(user_errors(push), [ctx.state, c["repo"], c["private"]], [c["push_md"]],
                        api_name="push")
