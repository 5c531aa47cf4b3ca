"""On the Compare tab: what the cut buys, measured. "Measure speed-up" times the original model and
the variant in turn on this machine (`explorer.evaluate.speed.measure_speed`, small sizes so it takes
seconds), records the speed-ups on the session's history (the summary table gains a speed-up row)
and draws perplexity against measured speed-up with the best trade-offs marked."""

from __future__ import annotations

from dataclasses import dataclass, replace

import gradio as gr

from explorer.core.errors import ExplorerError
from explorer.ui import busy, jobs, plots, stop
from explorer.ui.common import Ctx, need_model, user_errors
from explorer.ui.state import Session

# Small sizes for the app: batch 1 (a user's chat), a 256-token prompt, 32 decoded tokens, 3 rounds.
SIZES = {"batches": [1], "prefill_tokens": 256, "decode_prompt": 32, "new_tokens": 32,
         "repeats": 3}
LINE = ("Times the original model and the variant in turn on this machine: prefill of "
        f"{SIZES['prefill_tokens']} tokens and decoding of {SIZES['new_tokens']} tokens, "
        "batch 1.")


@dataclass
class SpeedParts:
    button: gr.Button
    line: gr.Markdown
    result: gr.Markdown
    plot: gr.Plot


def speed_markdown(report: dict) -> str:
    """The measured cases, the memory and what limits the speed-up."""
    rows = ["| case | original | variant | speed-up (spread) |", "|---|---|---|---|"]
    for c in report["cases"]:
        if c["kind"] == "prefill":
            cells = (f"{1000 * c['dense_seconds']:.1f} ms", f"{1000 * c['variant_seconds']:.1f} ms")
        else:
            cells = (f"{c['dense_tokens_per_second']:.1f} tok/s",
                     f"{c['variant_tokens_per_second']:.1f} tok/s")
        rows.append(f"| {c['kind']}, batch {c['batch']} | {cells[0]} | {cells[1]} | "
                    f"×{c['speedup']:.2f} (±{50 * c['speedup_spread']:.0f}%) |")
    md, mv = report["memory_dense"], report["memory_variant"]
    rows.append(f"| weights | {md['weights_bytes'] / 2**20:.1f} MiB | "
                f"{mv['weights_bytes'] / 2**20:.1f} MiB | |")
    rows.append(f"| KV cache | {md['kv_cache_bytes'] / 2**20:.2f} MiB | "
                f"{mv['kv_cache_bytes'] / 2**20:.2f} MiB | |")
    return ("\n".join(rows) + f"\n\n{report['limits']}\n\n*Protocol:* {report['protocol']}.")


def record(state: Session, report: dict, ops_list: list[list[dict]]) -> Session:
    """The speed-ups on the history entries of the measured variant (and of its healed form,
    which has the same layers)."""
    by_kind = {c["kind"]: c["speedup"] for c in report["cases"] if c["batch"] == 1}
    history = tuple(replace(h, speedup_prefill=by_kind.get("prefill"),
                            speedup_decode=by_kind.get("decode")) if h.ops in ops_list else h
                    for h in state.history)
    return replace(state, history=history)


def build(ctx: Ctx) -> SpeedParts:
    with gr.Accordion("What the cut buys: measured speed-up", open=False):
        with gr.Row(equal_height=True):
            button = gr.Button("Measure speed-up", elem_id="lx-speed")
            line = gr.Markdown(LINE, elem_id="lx-speed-line", elem_classes=["lx-step"])
        result = gr.Markdown("", elem_id="lx-speed-result")
        plot = gr.Plot(label="Perplexity against measured speed-up", elem_id="lx-speed-plot")
    return SpeedParts(button=button, line=line, result=result, plot=plot)


def wire(ctx: Ctx, parts: SpeedParts, views, view_outputs: list) -> None:
    """views(state) -> the summary, history table and history plot (compare_tab.wire's)."""

    @user_errors
    @busy.claims("the speed-up is being measured", "measure the speed")
    def measure(state: Session, request: gr.Request, progress=gr.Progress()):
        need_model(state)
        if not state.plan.ops:
            raise ExplorerError("the plan is empty: pick layers to drop or merge in the Plan tab")
        report = jobs.speed_job(state.model, state.plan.ops, SIZES, stop.watch(progress, request))
        measured = [state.plan.ops] + ([state.heal.ops] if state.heal else [])
        state = record(state, report, measured)
        return (state, speed_markdown(report), plots.speed_tradeoff(state.history),
                *views(state))

    ctx.long_step(parts.button.click, measure, [ctx.state],
                  [ctx.state, parts.result, parts.plot] + view_outputs, api_name="speed",
                  show_progress_on=[parts.line])
