"""More checks on the Compare tab: a capability check that needs no download
(`explorer.evaluate.capability`: next-token accuracy and a last-word cloze on the evaluation text) and
zero-shot tasks through lm-evaluation-harness (`explorer.evaluate.tasks`), the original model and the
current variant (healed when it was healed) side by side."""

from __future__ import annotations

import gradio as gr

from explorer.core.errors import ExplorerError
from explorer.ui import busy, controls, jobs, stop
from explorer.ui.common import ChecksParts, Ctx, need_model, user_errors
from explorer.ui.state import Session

TASK_EXAMPLES = "arc_easy, hellaswag, piqa, winogrande (from the hub), or a local task .yaml"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def capability_markdown(report: dict, healed: bool = False) -> str:
    dense, comp = report.get("dense") or {}, report.get("compressed") or {}
    name = "healed variant" if healed else "variant"
    gen = report.get("generation")
    rows = ""
    if gen:       # the variant's greedy continuations against the original's
        n = gen["new_tokens"]
        rows = (f"| greedy tokens before the first difference | {n} | "
                f"{gen['mean_first_disagreement']:.1f} of {n} |\n"
                f"| greedy tokens equal to the original's | 100% | "
                f"{_pct(gen['token_agreement'])} |\n"
                f"| next token equal, fed the original's text | 100% | "
                f"{_pct(gen['forced_agreement'])} |\n")
    return (f"| | original | {name} |\n|---|---|---|\n"
            f"| next-token top-1 | {_pct(dense.get('next_token_top1'))} | "
            f"{_pct(comp.get('next_token_top1'))} |\n"
            f"| last-word cloze | {_pct(dense.get('cloze_accuracy'))} | "
            f"{_pct(comp.get('cloze_accuracy'))} |\n{rows}\n"
            f"*Protocol:* {report['protocol']}.")


def tasks_markdown(report: dict, healed: bool = False) -> str:
    name = "healed variant" if healed else "variant"
    rows = [f"| task | metric | original | {name} |", "|---|---|---|---|"]

    def cell(m: dict, key: str) -> str:
        v, e = m.get(key), m.get(f"{key}_stderr")
        return "—" if v is None else f"{100 * v:.1f}%" + (f" ± {100 * e:.1f}" if e else "")
    for t in report["tasks"]:
        for m in t["metrics"]:
            rows.append(f"| {t['task']} ({t['samples']} samples) | {m['metric']} | "
                        f"{cell(m, 'dense')} | {cell(m, 'compressed')} |")
    return "\n".join(rows) + f"\n\n*Protocol:* {report['protocol']}."


def current_ops(state: Session) -> list[dict]:
    need_model(state)
    ops = state.ops()
    if not ops:
        raise ExplorerError("the plan is empty: pick layers to drop or merge in the Plan tab")
    return ops


def build(ctx: Ctx) -> ChecksParts:
    with gr.Accordion("More checks: what the model can still do", open=False):
        with gr.Row(equal_height=True):
            capability_btn = gr.Button("Capability check (offline)", elem_id="lx-capability")
            capability_line = gr.Markdown("Next-token accuracy and a last-word cloze on the "
                                          "evaluation text: no download.",
                                          elem_id="lx-capability-line", elem_classes=["lx-step"])
        capability = gr.Markdown("", elem_id="lx-capability-scores")
        with gr.Row(equal_height=True):
            tasks = gr.Textbox(label="lm-eval tasks (comma-separated)", placeholder=TASK_EXAMPLES,
                               elem_id="lx-tasks", scale=3)
            limit = gr.Number(50, label="Samples per task", precision=0,
                              elem_id="lx-task-limit", scale=1)
            tasks_btn = gr.Button("Run tasks", elem_id="lx-run-tasks", scale=1)
        tasks_line = gr.Markdown("Tasks from the hub need a network connection; a local task "
                                 "file works offline.", elem_id="lx-tasks-line",
                                 elem_classes=["lx-step"])
        task_scores = gr.Markdown("", elem_id="lx-task-scores")
    return ChecksParts(capability_btn=capability_btn, capability_line=capability_line,
                       capability=capability, tasks=tasks, limit=limit, tasks_btn=tasks_btn,
                       tasks_line=tasks_line, task_scores=task_scores)


def wire(ctx: Ctx) -> None:
    c, s = ctx.compare.checks, ctx.settings

    @user_errors
    @busy.claims("the accuracy check is running", "run a check", reads=True)
    def run_capability(state: Session, request: gr.Request, progress=gr.Progress()):
        report = jobs.capability_job(state.model, state.text, current_ops(state), s.ppl_seqlen,
                                     s.ppl_max_tokens, stop.watch(progress, request))
        return capability_markdown(report, healed=state.heal is not None)

    @user_errors
    @busy.claims("the task check is running", "run a check", reads=True)
    def run_tasks(state: Session, tasks: str, limit: float | None, request: gr.Request,
                  progress=gr.Progress()):
        if not (tasks or "").strip():
            raise ExplorerError(f"name at least one task: {TASK_EXAMPLES}")
        limit = controls.whole_number(limit, "Samples per task", 1) if limit is not None else None
        report = jobs.tasks_job(state.model, current_ops(state), tasks, limit,
                                stop.watch(progress, request))
        return tasks_markdown(report, healed=state.heal is not None)

    ctx.long_step(c.capability_btn.click, run_capability, [ctx.state], [c.capability],
                  api_name="capability", show_progress_on=[c.capability_line])
    ctx.long_step(c.tasks_btn.click, run_tasks, [ctx.state, c.tasks, c.limit], [c.task_scores],
                  api_name="tasks", show_progress_on=[c.tasks_line])
