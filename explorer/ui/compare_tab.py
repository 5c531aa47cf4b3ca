"""Tab 4, Compare: apply the plan and compare with the original model: perplexity (with its
protocol), parameters, greedy generations side by side, and the session's history of variants.

Apply switches to this tab at once and shows its progress on the summary line; the generations
follow the figures, with their own line.
"""

import html
from dataclasses import replace

import gradio as gr

from ..errors import ExplorerError
from . import jobs, plots, stop
from .common import CompareParts, Ctx, need_model, user_errors
from .registry import REGISTRY
from .state import Session, Tried

HISTORY_HEADERS = ["#", "change", "layers", "parameters", "ppl before", "ppl after"]
WAITING = "Apply a plan (Plan tab) to compare it with the original model."
GENS_TITLE = ("#### Greedy generations ({n} new tokens per prompt)\nAfter the figures, the original "
              "model and the variant continue each prompt (no sampling): perplexity alone can "
              "hide what removing layers changes.")


def baseline(settings, state: Session, progress=None):
    """Perplexity of the unmodified model (computed once per model, text and protocol)."""
    key = (state.model, state.text, settings.ppl_seqlen, settings.ppl_max_tokens)
    return REGISTRY.baseline(key, lambda: jobs.ppl_job(
        state.model, state.text, [], settings.ppl_seqlen, settings.ppl_max_tokens, progress))


def apply_plan(settings, state: Session, progress=None) -> tuple[Session, dict]:
    """Measure the session's plan against the original model; returns (state, result)."""
    need_model(state)
    plan = state.plan
    if not plan.ops:
        raise ExplorerError("the plan is empty: pick layers to drop or merge in the Plan tab")
    lm = REGISTRY.model_for(state, jobs.callback(progress))
    before = baseline(settings, state, progress)
    after = jobs.ppl_job(state.model, state.text, plan.ops, settings.ppl_seqlen,
                         settings.ppl_max_tokens, progress)
    variant = REGISTRY.variant(lm, plan.ops)
    result = {
        "model": state.model, "method": plan.method, "params": plan.params,
        "change": variant.describe(), "ops": plan.ops,
        "layers_before": lm.num_layers, "layers_after": variant.num_layers,
        "removed": lm.num_layers - variant.num_layers,
        "removed_layers": plan.removed, "merged_layers": plan.merged,
        "params_before": lm.num_parameters, "params_after": variant.num_parameters(),
        "ppl_before": before.ppl, "ppl_after": after.ppl, "protocol": after.protocol(),
        "seqlen": after.seqlen, "ppl_seconds": round(after.seconds, 2),
    }
    return state.tried(tried_entry(result, plan.removed if plan.manual and not plan.merged
                                   else ())), result


def tried_entry(result: dict, drops=()) -> Tried:
    return Tried(method=result["method"], change=result["change"],
                 layers_after=result["layers_after"], removed=result["removed"],
                 params_after=result["params_after"], ppl_before=result["ppl_before"],
                 ppl_after=result["ppl_after"], ops=result["ops"], params=result["params"],
                 protocol=result["protocol"], drops=tuple(drops))


def summary_markdown(r: dict) -> str:
    ratio = r["ppl_after"] / r["ppl_before"]
    pct = 100.0 * (1 - r["params_after"] / r["params_before"])
    return (f"### {r['change']}\n\n"
            f"| | original | variant |\n|---|---|---|\n"
            f"| perplexity | **{r['ppl_before']:.2f}** | **{r['ppl_after']:.2f}** (×{ratio:.2f}) |\n"
            f"| layers | {r['layers_before']} | {r['layers_after']} |\n"
            f"| parameters | {r['params_before']:,} | {r['params_after']:,} (−{pct:.1f}%) |\n\n"
            f"*Protocol:* {r['protocol']}. Method: {r['method']}. Perplexity depends on the "
            f"window: these {r['seqlen']}-token windows keep the app quick; the command line's "
            f"default of 512 gives each token more context and so a lower figure (the README's "
            f"numbers use 512).")


def history_rows(history: tuple[Tried, ...]) -> list[list]:
    return [[n + 1, h.change, h.layers_after, f"{h.params_after:,}", round(h.ppl_before, 2),
             round(h.ppl_after, 2)] for n, h in enumerate(history)]


def generations(settings, state: Session, progress=None) -> list[list[str]]:
    """Greedy continuations of the prompts by the original model and by the variant."""
    need_model(state)
    if settings.gen_tokens <= 0:
        return []
    prompts = list(settings.prompts)
    if progress is not None:
        progress(0.0, desc=f"generating {settings.gen_tokens} tokens for {len(prompts)} prompts "
                           "with the original model")
    orig = jobs.generate_job(state.model, [], prompts, settings.gen_tokens)
    if progress is not None:
        progress(0.5, desc="…and with the variant")
    new = jobs.generate_job(state.model, state.plan.ops, prompts, settings.gen_tokens)
    return [[p, a, b] for p, a, b in zip(prompts, orig, new)]


def generations_html(rows: list[list[str]]) -> str:
    """Side-by-side generations in a table as wide as the page (long text wraps)."""
    if not rows:
        return ""
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in row) + "</tr>" for row in rows)
    return ('<table class="lx-gens"><colgroup><col style="width:20%"><col style="width:40%">'
            '<col style="width:40%"></colgroup><thead><tr><th>prompt</th><th>original</th>'
            f'<th>variant</th></tr></thead><tbody>{cells}</tbody></table>')


def build(ctx: Ctx) -> CompareParts:
    s = ctx.settings
    summary = gr.Markdown(WAITING, elem_id="lx-summary", elem_classes=["lx-step"])
    with gr.Accordion("Details (JSON)", open=False):
        details = gr.JSON(label="result")
    gens_line = gr.Markdown(GENS_TITLE.format(n=s.gen_tokens), elem_id="lx-gens-line",
                            elem_classes=["lx-step"])
    gens = gr.HTML("", elem_id="lx-gens")
    hist_plot = gr.Plot(label="Perplexity against layers removed", elem_id="lx-history-plot")
    hist = gr.Dataframe(headers=HISTORY_HEADERS, value=[], label="Variants tried in this session",
                        interactive=False, wrap=True, elem_id="lx-history")
    clear_btn = gr.Button("Clear history")
    return CompareParts(summary=summary, details=details, gens_line=gens_line, gens=gens,
                        hist_plot=hist_plot, hist=hist, clear_btn=clear_btn)


def wire(ctx: Ctx) -> None:
    c, s = ctx.compare, ctx.settings

    @user_errors
    def apply(state: Session, request: gr.Request, progress=gr.Progress()):
        state, result = apply_plan(s, state, stop.watch(progress, request))
        return (state, summary_markdown(result), result, history_rows(state.history),
                plots.history(state.history))

    @user_errors
    def generate(state: Session, request: gr.Request, progress=gr.Progress()):
        return generations_html(generations(s, state, stop.watch(progress, request)))

    def clear(state: Session):
        return replace(state, history=()), [], None

    def to_compare():
        return gr.Tabs(selected="compare"), "Measuring the plan…"

    # switch to Compare at once (no queue), then measure there with the bar on the summary
    shown = ctx.plan.apply_btn.click(to_compare, None, [ctx.tabs, c.summary], queue=False,
                                     api_name=False)
    applied = ctx.long_step(shown.then, apply, [ctx.state],
                            [ctx.state, c.summary, c.details, c.hist, c.hist_plot],
                            api_name="apply", show_progress_on=[c.summary], last=False)
    ctx.long_step(applied.success, generate, [ctx.state], [c.gens], api_name="generate",
                  show_progress_on=[c.gens_line], continues=True)
    c.clear_btn.click(clear, [ctx.state], [ctx.state, c.hist, c.hist_plot],
                      api_name="clear_history")
