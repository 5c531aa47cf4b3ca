"""Tab 3, Plan: choose layers to drop or blocks to merge (by clicking the heatmap or typing), or ask
a method for a plan at a target size; the plan is drawn on the heatmap and listed before applying."""

import json

import gradio as gr

from ..cli import parse_layers
from ..errors import ExplorerError, LayerError
from . import analysis, features, jobs, stop
from .clickplot import ClickPlot
from .common import Ctx, need_model, user_errors
from .learn_tab import method_help
from .state import MERGE_RULES, format_layers, layers_removed, manual_plan, parse_groups, \
    toggle_block

TABLE_HEADERS = ["change", "original layers", "detail"]


def plan_table(plan: dict) -> list[list[str]]:
    rows = [["drop", format_layers([k]), "removed"] for k in plan.get("removed", [])]
    weights = {}
    manual = plan.get("method") == "manual"
    for op in plan.get("ops", []) if manual else []:
        if op.get("op") == "merge":
            weights[len(weights)] = op.get("weights")
    for n, g in enumerate(plan.get("merged", [])):
        w = weights.get(n)
        detail = "weights " + ", ".join(f"{x:.2f}" for x in w) if w else \
            "merged or replaced by one new layer (see the method's notes)"
        rows.append(["merge", format_layers(g), detail])
    if not rows and plan.get("ops"):
        rows = [[op.get("op", "?"), "", op.get("summary", "")] for op in plan["ops"]]
    return rows


def plan_status(state: dict) -> str:
    plan = state["plan"]
    L = state.get("num_layers", 0)
    k = layers_removed(plan, L)
    notes = plan.get("notes")
    notes = f"\n\n{notes}" if isinstance(notes, str) and notes else ""
    who = "Manual plan" if plan["method"] == "manual" else f"Plan from {plan['method']}"
    if not plan.get("ops"):
        if plan["method"] != "manual":
            return f"**{who}: no change.**{notes}"
        return "No changes planned yet: click heatmap cells or type layers, or ask a method."
    return (f"**{who}**: {L} → {L - k} layers ({k} removed). Red boxes: dropped layers; orange: "
            f"merged or replaced blocks. Press **Apply and compare** to measure it.{notes}")


def _views(state: dict):
    """Outputs shared by every plan change: state, table, both heatmaps, status, ops."""
    heat = analysis.heatmap_json(state) if state.get("analysis") else gr.update()
    return (state, plan_table(state["plan"]), heat, heat, plan_status(state), state["plan"]["ops"])


@user_errors
def update_plan(state: dict, drops: str, merges: str, rule: str):
    """Build a manual plan from the typed layers (original numbering)."""
    need_model(state)
    state = dict(state)
    state["plan"] = manual_plan(state["num_layers"], sorted(set(parse_layers(drops))),
                                parse_groups(merges), rule)
    return _views(state)


@user_errors
def on_cell(state: dict, drops: str, merges: str, action: str, rule: str, evt: gr.SelectData):
    """A click on heatmap cell (row a, column b) toggles the block of layers min..max-1."""
    need_model(state)
    a, b = (int(round(float(v))) for v in evt.index)
    a, b = min(a, b), max(a, b)
    if a == b:
        raise LayerError("a diagonal cell compares a boundary with itself; click a cell off the "
                         "diagonal: (a, b) selects layers a..b-1")
    drops, merges = toggle_block(drops, merges, a, b, action)
    state = dict(state)
    if state.get("analysis"):
        state["analysis"] = dict(state["analysis"], selected=[a, b])
    state["plan"] = manual_plan(state["num_layers"], sorted(set(parse_layers(drops))),
                                parse_groups(merges), rule)
    return (drops, merges) + _views(state)


@user_errors
def clear_plan(state: dict):
    state = dict(state)
    state["plan"] = manual_plan(max(1, state.get("num_layers", 1)), [], [])
    if state.get("analysis"):
        state["analysis"] = dict(state["analysis"], selected=None)
    return ("", "") + _views(state)


def ask_method(settings, state: dict, method: str, remove: int, ratio: float, params: str,
               progress=None):
    """Ask a compression method for a plan of the chosen size."""
    need_model(state)
    if not method:
        raise ExplorerError("choose a method first")
    try:
        extra = json.loads(params) if params and params.strip() else {}
    except ValueError as exc:
        raise ExplorerError(f"method parameters are not valid JSON: {exc}") from None
    if not isinstance(extra, dict):
        raise ExplorerError("method parameters must be a JSON object, e.g. {\"alpha\": 0.5}")
    remove = int(remove or 0)
    if remove <= 0 and not ratio:
        raise ExplorerError("set how many layers to remove (or a ratio)")
    out = jobs.compress_job(state["model"], state["text"], method, remove or None,
                            None if remove else float(ratio) / 100.0, settings.method_seqlen,
                            settings.method_samples, extra, progress)
    state = dict(state)
    notes = out.get("notes")
    in_merges = {i for g in out["merged"] for i in g}
    state["plan"] = {"method": out["method"], "params": out["params"], "ops": out["ops"],
                     "removed": [i for i in out["removed"] if i not in in_merges],
                     "merged": out["merged"], "layers_after": out["layers_after"],
                     "request": {"remove": remove} if remove else {"ratio": float(ratio) / 100.0},
                     "calib": [settings.method_seqlen, settings.method_samples],
                     "notes": notes if isinstance(notes, str) else (json.dumps(notes) if notes
                                                                     else "")}
    return _views(state)


def method_defaults(name: str) -> str:
    for m in features.methods():
        if m.name == name:
            return json.dumps(dict(m.defaults or {}), indent=1)
    return "{}"


def build(ctx: Ctx) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            heat = ClickPlot(elem_id="lx-heatmap-plan",
                             placeholder="Run the analysis to see the heatmap; you can also type "
                                         "layers on the right.")
        with gr.Column(scale=2):
            gr.Markdown("**Pick by clicking.** A click on cell (a, b) adds the block of layers "
                        "a..b-1 (click again to remove it).")
            action = gr.Radio([("drop the block", "drop"), ("merge the block into one layer",
                                                            "merge")],
                              value="drop", label="A click will…", elem_id="lx-action")
            rule = gr.Radio([(v, k) for k, v in MERGE_RULES.items()], value="average",
                            label="Merge rule")
            drops = gr.Textbox(label="Layers to drop (original numbering, e.g. 3,7,10-12)",
                               elem_id="lx-drops")
            merges = gr.Textbox(label="Blocks to merge (e.g. 10-12; 20-21)", elem_id="lx-merges")
            with gr.Row():
                update_btn = gr.Button("Update plan", elem_id="lx-update-plan")
                clear_btn = gr.Button("Clear")
    methods = features.methods()
    with gr.Accordion("Ask a method for a plan", open=bool(methods)):
        if not methods:
            gr.Markdown("The compression methods are not available in this installation.")
        with gr.Row():
            with gr.Column(scale=2):
                names = [(m.title, m.name) for m in methods]
                first = next((n for _, n in names if n == "shortgpt"), names[0][1] if names else None)
                method = gr.Dropdown(names, value=first, label="Method")
                with gr.Row():
                    remove = gr.Number(4, label="Layers to remove", precision=0, minimum=0)
                    ratio = gr.Slider(0, 90, value=0, step=1,
                                      label="…or % of parameters (used when 'remove' is 0)")
                params = gr.Code(method_defaults(first) if names else "{}",
                                 language="json", label="Parameters (JSON)")
                method_btn = gr.Button("Plan with this method", elem_id="lx-method-plan")
            with gr.Column(scale=2):
                method_md = gr.Markdown(method_help(first) if names else "")
    status = gr.Markdown("No changes planned yet.", elem_id="lx-plan-status")
    table = gr.Dataframe(headers=TABLE_HEADERS, value=[], label="Plan", interactive=False)
    with gr.Accordion("Recipe ops (what will be replayed on the model)", open=False):
        ops = gr.JSON(label="ops")
    apply_btn = gr.Button("Apply and compare", variant="primary", elem_id="lx-apply")
    ctx.c.update(plan_heat=heat, action=action, rule=rule, drops=drops, merges=merges,
                 update_btn=update_btn, clear_btn=clear_btn, method=method, remove=remove,
                 ratio=ratio, params=params, method_btn=method_btn, method_md=method_md,
                 plan_status=status, plan_table=table, plan_ops=ops, apply_btn=apply_btn)


def wire(ctx: Ctx) -> None:
    c, s = ctx.c, ctx.settings
    views = [ctx.state, c["plan_table"], c["analyse_heat"], c["plan_heat"], c["plan_status"],
             c["plan_ops"]]
    for heat in (c["plan_heat"], c["analyse_heat"]):
        heat.select(on_cell, [ctx.state, c["drops"], c["merges"], c["action"], c["rule"]],
                    [c["drops"], c["merges"]] + views,
                    api_name="select_cell" if heat is c["plan_heat"] else "select_cell_analyse")
    inputs = [ctx.state, c["drops"], c["merges"], c["rule"]]
    c["update_btn"].click(update_plan, inputs, views, api_name="update_plan")
    c["drops"].submit(update_plan, inputs, views, api_name=False)
    c["merges"].submit(update_plan, inputs, views, api_name=False)
    c["clear_btn"].click(clear_plan, [ctx.state], [c["drops"], c["merges"]] + views,
                         api_name="clear_plan")

    @user_errors
    def plan_with_method(state: dict, method: str, remove: int, ratio: float, params: str,
                         request: gr.Request, progress=gr.Progress()):
        return ask_method(s, state, method, remove, ratio, params, stop.watch(progress, request))

    ctx.c["long_events"].append(
        c["method_btn"].click(plan_with_method, [ctx.state, c["method"], c["remove"], c["ratio"],
                                                 c["params"]], views, api_name="plan_method"))
    c["method"].change(lambda m: (method_help(m), method_defaults(m)), [c["method"]],
                       [c["method_md"], c["params"]], api_name=False)
