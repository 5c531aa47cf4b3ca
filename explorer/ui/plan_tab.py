"""Tab 3, Plan: choose layers to drop or blocks to merge (by clicking the heatmap or typing), or ask
a method for a plan at a target size; the plan is drawn on the heatmap and listed before applying.

The manual fields always show the plan on screen: after a method planned, they hold the method's
layers, so "Update plan" edits that plan instead of bringing back an older one.
"""

import json
from dataclasses import replace

import gradio as gr

from explorer.core.errors import ExplorerError, LayerError
from explorer.core.layer_lists import format_layers
from explorer.plan import get_method, list_methods
from explorer.plan.manual import MERGE_RULES
from explorer.ui import analysis, busy, compare_tab, controls, gate_panel, jobs, stop
from explorer.ui.clickplot import ClickPlot
from explorer.ui.common import Ctx, PlanParts, need_model, user_errors
from explorer.ui.learn_tab import method_help, method_title
from explorer.ui.state import (SessionPlan, Session, plan_fields, plan_from_text,
                               toggle_block)

TABLE_HEADERS = ["change", "original layers", "detail"]
PLANNING = "a plan is being computed"


def plan_table(plan: SessionPlan) -> list[list[str]]:
    rows = [["drop", format_layers([k]), "removed"] for k in plan.removed]
    weights = [op.get("weights") for op in plan.ops if op.get("op") == "merge"] \
        if plan.manual else []
    for n, g in enumerate(plan.merged):
        w = weights[n] if n < len(weights) else None
        detail = "weights " + ", ".join(f"{x:.2f}" for x in w) if w else \
            "merged or replaced by one new layer (see the method's notes)"
        rows.append(["merge", format_layers(g), detail])
    if not rows and plan.ops:
        rows = [[op.get("op", "?"), "", op.get("summary", "")] for op in plan.ops]
    return rows


def plan_status(state: Session) -> str:
    plan, L = state.plan, state.num_layers
    k = plan.layers_removed(L)
    notes = f"\n\n{plan.notes}" if plan.notes else ""
    who = "Manual plan" if plan.manual else f"Plan from {method_title(plan.method)}"
    if not plan.ops:
        if not plan.manual:
            return f"**{who}: no change.**{notes}"
        return "No changes planned yet: click heatmap cells or type layers, or ask a method."
    fields = "" if plan.manual else (" The fields above show its layers: editing them and "
                                     "pressing Update plan makes a manual plan from them.")
    return (f"**{who}**: {plan.describe()} ({L} → {L - k} layers, {k} removed). Red boxes: "
            f"dropped layers; orange: merged or replaced blocks. Press **Apply and compare** to "
            f"measure it.{fields}{notes}")


def views(state: Session, before: Session):
    """Outputs shared by every plan change: state, the manual fields, table, both heatmaps,
    status, ops, then the Compare views (`compare_tab.follow`): a new version of the plan clears
    what Compare showed of the old one."""
    heat = analysis.heatmap_json(state) if state.analysis else gr.update()
    drops, merges = plan_fields(state.plan)
    return (state, drops, merges, plan_table(state.plan), heat, heat, plan_status(state),
            state.plan.ops, *compare_tab.follow(state, before))


EDITING = "the plan is being changed"


@user_errors
@busy.claims(EDITING, "change the plan")
def update_plan(state: Session, drops: str, merges: str, rule: str, request: gr.Request):
    """Build a manual plan from the typed layers (original numbering)."""
    need_model(state)
    return views(state.with_plan(plan_from_text(state.num_layers, drops, merges, rule)), state)


@user_errors
@busy.claims(EDITING, "change the plan")
def on_cell(state: Session, drops: str, merges: str, action: str, rule: str,
            evt: gr.SelectData, request: gr.Request):
    """A click on heatmap cell (row a, column b) toggles the block of layers min..max-1."""
    need_model(state)
    a, b = (int(round(float(v))) for v in evt.index)
    a, b = min(a, b), max(a, b)
    before = state
    if a == b:
        raise LayerError("a diagonal cell compares a boundary with itself; click a cell off the "
                         "diagonal: (a, b) selects layers a..b-1")
    drops, merges = toggle_block(drops, merges, a, b, action)
    plan = plan_from_text(state.num_layers, drops, merges, rule)
    added = (set(range(a, b)) <= set(plan.removed)) if action == "drop" else \
        list(range(a, b)) in plan.merged
    state = state.with_plan(plan)
    if state.analysis is not None:   # the dotted "last click" box only marks a block just added
        state = replace(state, analysis=replace(state.analysis,
                                                selected=(a, b) if added else None))
    return views(state, before)


def plan_fields_of(state: Session) -> tuple[str, str]:
    return plan_fields(state.plan)


@user_errors
@busy.claims(EDITING, "clear the plan")
def clear_plan(state: Session, request: gr.Request):
    before = state
    state = state.with_plan(SessionPlan())
    if state.analysis is not None:
        state = replace(state, analysis=replace(state.analysis, selected=None))
    return views(state, before)


def ask_method(settings, state: Session, method: str, remove: int, ratio: float, raw: list,
               progress=None):
    """Ask a compression method for a plan of the chosen size.

    raw: the values of the method's generated parameter controls, in its declaration order; they
    are validated first, so a bad value is refused before any probing."""
    need_model(state)
    if not method:
        raise ExplorerError("choose a method first")
    m = get_method(method)
    params = controls.read(m.params, raw, m.name)
    remove = controls.whole_number(remove or 0, "Layers to remove", 0)
    if remove <= 0 and not ratio and m.implied_remove(params) is None:
        raise ExplorerError("set how many layers to remove (or a ratio)")
    size = {"remove": remove} if remove > 0 else {"ratio": float(ratio) / 100.0} if ratio else {}
    out = jobs.compress_job(state.model, state.text, method, size.get("remove"),
                            size.get("ratio"), settings.method_seqlen, settings.method_samples,
                            params, progress)
    return method_views(settings, state, out, size)


def method_views(settings, state: Session, out: dict, size: dict):
    """The session's plan from a method's result (`jobs.compress_job`'s dict), and the views."""
    notes = out.get("notes")
    in_merges = {i for g in out["merged"] for i in g}
    plan = SessionPlan(method=out["method"], params=out["params"], ops=out["ops"],
                removed=[i for i in out["removed"] if i not in in_merges], merged=out["merged"],
                layers_after=out["layers_after"], request=size,
                calib=(settings.method_seqlen, settings.method_samples),
                notes=notes if isinstance(notes, str) else (json.dumps(notes) if notes else ""))
    before, state = state, state.with_plan(plan)
    if state.analysis is not None:
        state = replace(state, analysis=replace(state.analysis, selected=None))
    return views(state, before)


def build(ctx: Ctx) -> PlanParts:
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
    methods = list_methods()
    with gr.Accordion("Ask a method for a plan", open=True):
        with gr.Row():
            with gr.Column(scale=2):
                names = [(m.title, m.name) for m in methods]
                first = "shortgpt" if any(n == "shortgpt" for _, n in names) else names[0][1]
                method = gr.Dropdown(names, value=first, label="Method", elem_id="lx-method")
                with gr.Row():
                    remove = gr.Number(4, label="Layers to remove", precision=0,
                                       elem_id="lx-remove")
                    ratio = gr.Slider(0, 90, value=0, step=1,
                                      label="…or % of parameters (used when 'remove' is 0)")
                groups, slots = {}, []
                for m in methods:     # every method's controls, generated; the chosen one shows
                    with gr.Group(visible=m.name == first) as groups[m.name]:
                        for p in m.params:
                            slots.append((m.name, p, controls.control(
                                p, elem_id=f"lx-param-{m.name}-{p.name}", siblings=m.params)))
                with gr.Row(equal_height=True):
                    method_btn = gr.Button("Plan with this method", elem_id="lx-method-plan")
                    method_line = gr.Markdown("", elem_id="lx-method-line",
                                              elem_classes=["lx-step"])
                gate = gate_panel.build(ctx)
            with gr.Column(scale=2):
                method_md = gr.Markdown(method_help(first))
    status = gr.Markdown("No changes planned yet.", elem_id="lx-plan-status")
    table = gr.Dataframe(headers=TABLE_HEADERS, value=[], label="Plan", interactive=False,
                         elem_id="lx-plan-table")
    with gr.Accordion("Recipe ops (what will be replayed on the model)", open=False):
        ops = gr.JSON(label="ops")
    apply_btn = gr.Button("Apply and compare (opens the Compare tab)", variant="primary",
                          elem_id="lx-apply")
    return PlanParts(heat=heat, action=action, rule=rule, drops=drops, merges=merges,
                     update_btn=update_btn, clear_btn=clear_btn, method=method, remove=remove,
                     ratio=ratio, param_groups=groups, param_controls=slots,
                     method_btn=method_btn, method_line=method_line, method_md=method_md,
                     status=status, table=table, ops=ops, apply_btn=apply_btn, gate=gate)


def cell_inputs(ctx: Ctx) -> list:
    """What `on_cell` reads, for every component whose click selects a block."""
    p = ctx.plan
    return [ctx.state, p.drops, p.merges, p.action, p.rule]


def cell_outputs(ctx: Ctx) -> list:
    """What `on_cell` (and every plan edit) updates."""
    p = ctx.plan
    return [ctx.state, p.drops, p.merges, p.table, ctx.analyse.heat, p.heat, p.status,
            p.ops] + compare_tab.follows(ctx)


def wire(ctx: Ctx) -> None:
    p, s = ctx.plan, ctx.settings
    outputs = cell_outputs(ctx)
    for heat in (p.heat, ctx.analyse.heat):
        heat.select(on_cell, cell_inputs(ctx), outputs,
                    api_name="select_cell" if heat is p.heat else "select_cell_analyse",
                    show_progress_on=[p.status])
    inputs = [ctx.state, p.drops, p.merges, p.rule]
    edits = [p.update_btn.click(update_plan, inputs, outputs, api_name="update_plan",
                                show_progress_on=[p.status]),
             p.drops.submit(update_plan, inputs, outputs, api_name=False,
                            show_progress_on=[p.status]),
             p.merges.submit(update_plan, inputs, outputs, api_name=False,
                             show_progress_on=[p.status])]
    # a refused edit puts the fields back to the plan still in force: field and plan agree
    for edit in edits:
        edit.failure(plan_fields_of, [ctx.state], [p.drops, p.merges], api_name=False,
                     queue=False, show_progress="hidden")
    p.clear_btn.click(clear_plan, [ctx.state], outputs, api_name="clear_plan",
                      show_progress_on=[p.status])

    names = [name for name, _, _ in p.param_controls]

    # request and progress come before *raw: Gradio fills only positional parameters
    @user_errors
    @busy.claims(PLANNING, "ask a method")
    def plan_with_method(state: Session, method: str, remove: int, ratio: float,
                         request: gr.Request, progress=gr.Progress(), *raw):
        mine = [value for name, value in zip(names, raw) if name == method]
        return ask_method(s, state, method, remove, ratio, mine, stop.watch(progress, request))

    # progress and errors show on the line by the button: a refused plan leaves the old one
    ctx.long_step(p.method_btn.click, plan_with_method,
                  [ctx.state, p.method, p.remove, p.ratio] + [c for _, _, c in p.param_controls],
                  outputs, api_name="plan_method", show_progress_on=[p.method_line])

    gate_panel.wire(ctx, p.gate, outputs, method_views)

    def show_method(name: str):
        return [method_help(name)] + [gr.Group(visible=k == name) for k in p.param_groups]

    p.method.change(show_method, [p.method], [p.method_md] + list(p.param_groups.values()),
                    api_name=False, queue=False)
