"""The Heal step of the Compare tab: repair the applied variant with a healing mode
(`explorer.heal`), watching its loss and held-out perplexity as a live curve, then measure it
next to the original and the unhealed variant.

Every mode's controls are generated from its declared parameters, and the budget (steps, seconds)
from two declarations here, so a new mode needs no UI code. The healing runs in a worker thread;
this step's handler draws the curve from the fields of its progress events (step, loss, held-out
perplexity), and the Stop token ends it at the next event like any other step.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterator

import gradio as gr

from explorer.core.errors import ExplorerError
from explorer.heal import get_mode, list_modes
from explorer.core.params import Param
from explorer.core.layer_lists import format_layers
from explorer.core.progress import Event
from explorer.ui import busy, controls, jobs, plots, stop
from explorer.ui.common import Ctx, HealParts, need_model, user_errors
from explorer.ui.learn_tab import mode_title
from explorer.heal.registry import HealResult
from explorer.ui.state import Healed, Session
from explorer.ui.worker import streamed

STEPS = Param("steps", int, None, "optimiser steps (empty: the mode's default; the time limit "
              "ends it sooner)", min=1, optional=True,
              label="Steps")
SECONDS = Param("seconds", float, None, "time limit in seconds (empty: none)", min=1,
                optional=True,
                label="Time limit (seconds)")
CURVE_POINTS = 200       # points of the curve kept in the session
FIELDS_PER_ROW = 3       # a mode's fields side by side, so they fill the page's width


def live_point(event: Event) -> tuple[int, float, float | None] | None:
    """(step, loss, held-out perplexity) of a training step's event, or None for other events
    (a loss of inf or nan is kept: the curve marks it)."""
    if event.unit != "steps" or event.step is None or event.loss is None:
        return None
    ppl = event.held_out
    return event.step, float(event.loss), (ppl if ppl is not None and math.isfinite(ppl) else None)


def thin(points: list, keep: int = CURVE_POINTS) -> tuple:
    """At most `keep` points, evenly spaced, the last one kept."""
    if len(points) <= keep:
        return tuple(points)
    idx = sorted({round(k * (len(points) - 1) / (keep - 1)) for k in range(keep)})
    return tuple(points[i] for i in idx)


def heal_stream(settings, state: Session, mode: str, steps: Any, seconds: Any, raw: list,
                report: Any, measure: Any) -> Iterator[tuple]:
    """Heal the plan's variant: yields (no change, curve, no change) while training, then
    (state, curve, line) once healed and measured by `measure(state)`.

    report: the step's progress callable (already watched for Stop)."""
    need_model(state)
    if not state.plan.ops:
        raise ExplorerError("nothing to heal: plan and apply a change in the Plan tab first")
    m = get_mode(mode)
    params = controls.read(m.params, raw, mode)
    budget = controls.read((STEPS, SECONDS), [steps, seconds], "heal budget") if m.trains \
        else {"steps": None, "seconds": None}
    def job(put) -> dict:
        def relay(event: Event) -> None:      # called in the worker thread
            if report is not None:
                report(event)
            p = live_point(event)
            if p is not None:
                put(p)
        return jobs.heal_job(state.model, state.text, state.plan.ops, mode, budget["steps"],
                             budget["seconds"], params, relay)

    run = streamed(job, "heal")
    yield gr.update(), curve_view(None), ""   # the last healing's line and figure go
    points: list = []
    while True:
        try:
            points += next(run)
        except StopIteration as done:
            out = done.value
            break
        yield gr.update(), curve_view(plots.heal_curve(points, live=True)), gr.update()
    r = out["result"]
    history = r["history"] or [{"step": s, "loss": loss, "held_out_ppl": ppl}
                               for s, loss, ppl in points]
    record = replace(HealResult.from_dict(r), history=list(thin(history)))
    healed = Healed(record=record, base_ops=state.plan.ops, ops=out["ops"],
                    layers=healed_layers(state, r["healed_slots"]) +
                    (" and the vocabulary head" if r.get("healed_head") else ""))
    state = measure(state.with_healing(healed))
    yield state, curve_view(figure(healed)), line(healed)


def healed_layers(state: Session, slots: list[int]) -> str:
    """The slots a healing changed, in the original model's numbering: "layers 9-11, 13 and the
    merged layer 14-15" (slot numbers shift after every cut; plain layers are listed as ranges)."""
    need_model(state)
    facts = jobs.variant_facts_job(state.model, state.plan.ops)
    plain, others = [], []
    for k in slots:
        s = facts["slots"][k]
        if s is not None:
            plain.append(s)
            continue
        origin = facts["origins"][k]
        group = next((g for g in state.plan.merged if origin in g), None)
        others.append(f"the merged layer {format_layers(group)}" if group and len(group) > 1
                      else f"the new layer at {origin}")
    words = [f"layer{'s' if len(plain) > 1 else ''} "
             f"{format_layers(sorted(plain)).replace(',', ', ')}"] if plain else []
    words += others
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def line(healed: Healed) -> str:
    """The heal step's result: which layers, and the held-out check, said to be on calibration
    windows kept out of the fit (the table above measures the evaluation text)."""
    steps = f"{healed.steps} steps, " if healed.steps else ""
    text = (f"**Healed** {healed.layers} with {mode_title(healed.mode)} ({steps}"
            f"{healed.seconds:.0f} s): the removed layers are gone, so the layers beside each "
            f"cut are fitted to make up for them. Check during healing: perplexity "
            f"{healed.held_out_before:.2f} → {healed.held_out_after:.2f} on {healed.held_out} "
            f"calibration windows of {healed.seqlen} tokens kept out of the fit (they follow "
            f"the {healed.fitted or 'fitted'} windows fitted on, so a mode that fits more "
            f"windows checks on other ones and starts from another 'before'); the table above "
            f"measures the evaluation text, the same for every mode.")
    if healed.made_worse:
        text += (" **Healing made it worse** on text it was not fitted on: the unhealed variant "
                 "is better; try another mode or setting.")
    return text


def figure(healed: Healed):
    """The training curve, or for a closed-form fit (no steps) the held-out check before and
    after."""
    if healed.curve:
        return plots.heal_curve(list(healed.curve))
    return plots.heal_before_after(healed.held_out_before, healed.held_out_after, healed.mode)


def curve_view(fig) -> dict:
    """The heal figure's update: shown with a figure, hidden without one (no empty box)."""
    return gr.update(value=fig, visible=fig is not None)


def rows(items: list, per_row: int = FIELDS_PER_ROW) -> list[list]:
    """`items` in rows of `per_row` (the last row may be shorter)."""
    return [items[k:k + per_row] for k in range(0, len(items), per_row)]


def build(ctx: Ctx) -> HealParts:
    """The mode and its fields across the page, rows of three, the Heal button under them, then
    the result as wide as the page: its line and its figure (hidden until a healing ran)."""
    modes = list_modes()
    first = modes[0].name
    with gr.Accordion("Heal the variant: fit or train the layers around the cuts to behave like "
                      "the original again", open=True):
        mode = gr.Dropdown([(m.title, m.name) for m in modes], value=first,
                           label="Healing mode", elem_id="lx-heal-mode")
        groups, slots = {}, []
        for m in modes:
            with gr.Group(visible=m.name == first) as groups[m.name]:
                for row in rows(list(m.params)):
                    with gr.Row(equal_height=True):
                        for p in row:
                            slots.append((m.name, p, controls.control(
                                p, elem_id=f"lx-heal-{m.name}-{p.name}", siblings=m.params)))
        with gr.Group(visible=get_mode(first).trains) as budget:
            with gr.Row(equal_height=True):
                steps = controls.control(STEPS, elem_id="lx-heal-steps")
                seconds = controls.control(SECONDS, elem_id="lx-heal-seconds")
        heal_btn = gr.Button("Heal", variant="primary", elem_id="lx-heal")
        line = gr.Markdown("", elem_id="lx-heal-line", elem_classes=["lx-step"])
        curve = gr.Plot(label="Healing", elem_id="lx-heal-curve", visible=False)
    return HealParts(mode=mode, param_groups=groups, param_controls=slots, budget=budget,
                     steps=steps, seconds=seconds, heal_btn=heal_btn, line=line, curve=curve)


def wire(ctx: Ctx, measure: Any, views: Any, outputs: list) -> Any:
    """Wire the Heal button. `measure(state, progress)` adds the healed variant's figures to the
    state; `views(state)` gives the values of `outputs`, the Compare views it refreshes. Returns
    the healing's event."""
    h, s = ctx.compare.heal, ctx.settings
    names = [name for name, _, _ in h.param_controls]
    unchanged = [gr.update()] * len(outputs)

    # request and progress come before *raw: Gradio fills only positional parameters
    @user_errors
    @busy.claims("the variant is being healed", "Heal")
    def run(state: Session, mode: str, steps: Any, seconds: Any, request: gr.Request,
            progress=gr.Progress(), *raw):
        report = stop.watch(progress, request)
        mine = [v for name, v in zip(names, raw) if name == mode]
        for update in heal_stream(s, state, mode, steps, seconds, mine, report,
                                  lambda st: measure(st, report)):
            done = isinstance(update[0], Session)
            yield (*update, *(views(update[0]) if done else unchanged))

    event = ctx.long_step(h.heal_btn.click, run,
                          [ctx.state, h.mode, h.steps, h.seconds] +
                          [c for _, _, c in h.param_controls],
                          [ctx.state, h.curve, h.line] + outputs, api_name="heal",
                          show_progress_on=[h.line], last=False)

    def show_mode(name: str):
        return [gr.Group(visible=k == name) for k in h.param_groups] + \
            [gr.Group(visible=get_mode(name).trains)]

    h.mode.change(show_mode, [h.mode], list(h.param_groups.values()) + [h.budget],
                  api_name=False, queue=False)
    return event
