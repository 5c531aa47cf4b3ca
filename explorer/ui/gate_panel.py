"""On the Plan tab: "remove as much as keeps perplexity within R x the original". The chosen method
is planned at growing sizes (`explorer.evaluate.gate.quality_gate`: 1, then doubling, then bisection) and the
largest plan whose perplexity stays within the gate becomes the session's plan; the line lists
every size tried with its figure. Unhealed: heal the result on the Compare tab."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gradio as gr

from explorer.core.errors import ExplorerError
from explorer.evaluate.gate import check_gate
from explorer.plan import get_method
from explorer.ui import busy, controls, jobs, stop
from explorer.ui.common import Ctx, need_model, user_errors
from explorer.ui.state import Session


@dataclass
class GateParts:
    ratio: gr.Number
    button: gr.Button
    line: gr.Markdown


def tries_markdown(gate: dict) -> str:
    """One line: the size chosen, then each size tried with its figure."""
    tried = ", ".join(f"{t['remove']}: " + (f"{t['ppl']:.2f} (×{t['ratio']:.2f})" if t["ppl"]
                                            else "refused") + (" ✓" if t["passed"] else " ✗")
                      for t in gate["tries"])
    return (f"**{gate['remove']} layers removed** keeps perplexity within "
            f"×{gate['max_ppl_ratio']:g} (original {gate['dense_ppl']:.2f}, this plan {gate['ppl']:.2f}). Tried: {tried}.")


def build(ctx: Ctx) -> GateParts:
    with gr.Row(equal_height=True):
        ratio = gr.Number(1.5, label="…or remove as much as keeps perplexity within R × the "
                          "original", step=0.1, elem_id="lx-gate-ratio", scale=2)
        button = gr.Button("Plan within this perplexity", elem_id="lx-gate-plan", scale=1)
    line = gr.Markdown("", elem_id="lx-gate-line", elem_classes=["lx-step"])
    return GateParts(ratio=ratio, button=button, line=line)


def wire(ctx: Ctx, parts: GateParts, outputs: list, method_views: Callable) -> None:
    """outputs: the Plan tab's views (plan_tab.views), then this panel's line; method_views
    (settings, state, result, size) gives them from a plan's result (plan_tab.method_views)."""
    p, s = ctx.plan, ctx.settings
    names = [name for name, _, _ in p.param_controls]

    @user_errors
    @busy.claims("a plan is being computed", "plan within a perplexity")
    def plan_within(state: Session, method: str, ratio: float | None, request: gr.Request,
                    progress=gr.Progress(), *raw):
        need_model(state)
        if not method:
            raise ExplorerError("choose a method first")
        R = check_gate("" if ratio is None else ratio)
        m = get_method(method)
        params = controls.read(m.params, [v for n, v in zip(names, raw) if n == method], m.name)
        out = jobs.gate_job(state.model, state.text, method, R, s.method_seqlen,
                            s.method_samples, s.ppl_seqlen, s.ppl_max_tokens, params,
                            stop.watch(progress, request))
        return (*method_views(s, state, out, {"remove": out["gate"]["remove"]}),
                tries_markdown(out["gate"]))

    ctx.long_step(parts.button.click, plan_within,
                  [ctx.state, p.method, parts.ratio] + [c for _, _, c in p.param_controls],
                  outputs + [parts.line], api_name="plan_gate", show_progress_on=[parts.line])
