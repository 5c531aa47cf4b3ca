"""Tab 4, Compare: apply the plan and compare with the original model: perplexity (with its
protocol and band), parameters, a Heal step, greedy generations side by side, more checks, and the
session's history of variants (perplexity against layers removed, healed and not).

Apply switches to this tab at once and shows its progress on the summary line; the generations
follow the figures, with their own line. The original model's figure is computed once per model
and text (`explorer.evaluate.perplexity`'s dense cache), so each later Apply measures the variant only.
"""

import html
from dataclasses import replace

import gradio as gr

from explorer.core.errors import ExplorerError
from explorer.evaluate.perplexity import PPLResult
from explorer.evaluate.windows import nll_band
from explorer.core.progress import Event
from explorer.ui import busy, checks_panel, heal_panel, jobs, plots, speed_panel, stop
from explorer.ui.gpu import ZERO_GPU
from explorer.ui.common import CompareParts, Ctx, need_model, user_errors, variant_words
from explorer.ui.learn_tab import method_title
from explorer.ui.state import Session, Tried

HISTORY_HEADERS = ["#", "change", "layers", "parameters", "ppl before", "ppl after"]
WAITING = "Apply a plan (Plan tab) to compare it with the original model."
MEASURING = "the plan is being measured"
GENS_TITLE = ("#### Greedy generations ({n} new tokens per prompt)\nAfter the figures, each "
              "model continues each prompt (no sampling): perplexity alone can hide what "
              "removing layers changes.")


def band(r: PPLResult) -> tuple[float, float] | None:
    """95% band of the figure over the text's windows (None for fewer than two windows)."""
    if len(r.window_nll) < 2:
        return None
    return nll_band(r.window_nll, len(r.window_nll), finite=False)


def measure(settings, state: Session, ops: list[dict], healed: str = "",
            progress=None) -> tuple[Session, dict]:
    """Perplexity of the variant of `ops` next to the original's; the state records it in its
    history. Returns (state, the JSON result)."""
    need_model(state)
    before = jobs.ppl_job(state.model, state.text, [], settings.ppl_seqlen,
                          settings.ppl_max_tokens, progress, label="original model")
    after = jobs.ppl_job(state.model, state.text, ops, settings.ppl_seqlen,
                         settings.ppl_max_tokens, progress,
                         label="healed variant" if healed else "variant")
    facts = jobs.variant_facts_job(state.model, ops)
    plan = state.plan
    result = {
        "model": state.model, "method": plan.method, "params": plan.params,
        "change": change_words(plan, healed), "ops": ops, "healed": healed,
        "layers_before": facts["layers_before"], "layers_after": facts["layers_after"],
        "removed": facts["layers_before"] - facts["layers_after"],
        "removed_layers": plan.removed, "merged_layers": plan.merged,
        "params_before": facts["params_before"], "params_after": facts["params_after"],
        "ppl_before": before.ppl, "ppl_after": after.ppl, "protocol": after.protocol(),
        "seqlen": after.seqlen, "ppl_seconds": round(after.seconds, 2),
    }
    entry = Tried(method=plan.method, change=result["change"], layers_after=facts["layers_after"],
                  removed=result["removed"], params_after=result["params_after"],
                  ppl_before=before.ppl, ppl_after=after.ppl, ops=ops, params=plan.params,
                  protocol=result["protocol"], healed=healed, band_before=band(before),
                  band_after=band(after))
    return state.tried(entry), result


def change_words(plan, healed: str = "") -> str:
    """The variant in words, original layer numbers: "ShortGPT (Block Influence): drop layers
    12-15", "manual: drop layer 12; merge layers 14-15, healed (closed-form)"."""
    return f"{method_title(plan.method)}: {plan.describe()}" + \
        (f", healed ({healed})" if healed else "")


def dense_figure(settings, state: Session, progress=None) -> str:
    """The original model's figure on the session's text, measured ahead of the first Apply
    (the app starts it in the background once a model and a text are chosen; Stop cancels it):
    Apply then reads it from the dense cache, with the states the variant starts from. Returns
    a line for the page ("" when there is nothing to do)."""
    if not state.model or ZERO_GPU:      # ZeroGPU: no GPU time spent on what may not be used
        return ""
    r = jobs.ppl_job(state.model, state.text, [], settings.ppl_seqlen, settings.ppl_max_tokens,
                     progress, label="original model, ahead of Apply")
    how = "measured before" if r.cached else f"measured in {r.seconds:.0f} s"
    return (f"Original model's perplexity on this text: **{r.ppl:.2f}** ({how}); Apply measures "
            f"only the variant now.")


def apply_plan(settings, state: Session, progress=None) -> tuple[Session, dict]:
    """Measure the session's plan against the original model; returns (state, result)."""
    need_model(state)
    if not state.plan.ops:
        raise ExplorerError("the plan is empty: pick layers to drop or merge in the Plan tab")
    return measure(settings, state, state.plan.ops, progress=progress)


def measure_healed(settings, state: Session, progress=None) -> Session:
    """After healing: the healed variant's figure, and the unhealed one's if not measured yet."""
    if latest(state, state.plan.ops) is None:
        state, _ = apply_plan(settings, state, progress)
    state, _ = measure(settings, state, state.heal.ops, state.heal.mode, progress)
    return state


def latest(state: Session, ops: list[dict]) -> Tried | None:
    return next((h for h in reversed(state.history) if h.ops == ops), None)


def _ppl(x: float, b: tuple[float, float] | None) -> str:
    return f"**{x:.2f}**" + (f" <small>({b[0]:.1f}–{b[1]:.1f})</small>" if b else "")


def summary_markdown(state: Session, num_layers: int, num_parameters: int) -> str:
    """The original, the variant and (once healed) the healed variant side by side, titled with
    the plan's version (what Export saves is named the same way)."""
    v = latest(state, state.plan.ops)
    if v is None:
        if state.plan.ops:
            return (f"Plan v{state.version} ({state.plan.describe()}) is not measured yet: "
                    f"press **Apply and compare** in the Plan tab.")
        return WAITING
    cols = [("variant", v)]
    if state.heal is not None and latest(state, state.heal.ops) is not None:
        cols.append((f"healed ({state.heal.mode})", latest(state, state.heal.ops)))
    head = "| | original | " + " | ".join(name for name, _ in cols) + " |"
    rule = "|---" * (len(cols) + 2) + "|"
    ppl = f"| perplexity | {_ppl(v.ppl_before, v.band_before)} | " + " | ".join(
        f"{_ppl(t.ppl_after, t.band_after)} (×{t.ppl_after / v.ppl_before:.2f})"
        for _, t in cols) + " |"
    layers = f"| layers | {num_layers} | " + " | ".join(str(t.layers_after) for _, t in cols) + " |"
    params = f"| parameters | {num_parameters:,} | " + " | ".join(
        f"{t.params_after:,} (−{100 * (1 - t.params_after / num_parameters):.1f}%)"
        for _, t in cols) + " |"
    speed = ""
    if any(t.speedup_decode for _, t in cols):      # measured (ui/speed_panel.py)
        speed = "\n| speed-up, measured (prefill / decode, batch 1) | ×1 | " + " | ".join(
            f"×{t.speedup_prefill:.2f} / ×{t.speedup_decode:.2f}" if t.speedup_decode else "—"
            for _, t in cols) + " |"
    return (f"### {v.change}\n\nPlan v{state.version}; Export saves "
            f"{variant_words(state)}.\n\n{head}\n{rule}\n{ppl}\n{layers}\n{params}{speed}\n\n"
            f"*Protocol:* {v.protocol}; in brackets the 95% band over the windows. Method: "
            f"{method_title(v.method)}. Perplexity depends on the window: the app's short windows "
            f"keep it quick; the command line's default of 512 tokens gives each token more "
            f"context and so a lower figure (the README's methods table uses 512; its Teach "
            f"figures are this app's).")


def history_rows(history: tuple[Tried, ...]) -> list[list]:
    return [[n + 1, h.change, h.layers_after,
             f"{h.params_after:,}", round(h.ppl_before, 2), round(h.ppl_after, 2)]
            for n, h in enumerate(history)]


def generations(settings, state: Session, progress=None) -> list[tuple[str, list[str]]]:
    """Greedy continuations of the prompts: (column name, texts) for the original model, the
    variant and, once healed, the healed variant."""
    need_model(state)
    if settings.gen_tokens <= 0:
        return []
    prompts = list(settings.prompts)
    models = [("original", []), ("variant", state.plan.ops)] + \
        ([("healed", state.heal.ops)] if state.heal else [])
    out = [("prompt", prompts)]
    for k, (name, ops) in enumerate(models):
        if progress is not None:
            progress(Event("generations", k / len(models), note=f"{settings.gen_tokens} tokens "
                           f"for {len(prompts)} prompts: {name} model"))
        out.append((name, jobs.generate_job(state.model, ops, prompts, settings.gen_tokens)))
    return out


def generations_html(columns: list[tuple[str, list[str]]]) -> str:
    """Side-by-side generations in a table as wide as the page (long text wraps)."""
    if not columns:
        return ""
    widths = [20] + [80 // (len(columns) - 1)] * (len(columns) - 1)
    cols = "".join(f'<col style="width:{w}%">' for w in widths)
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(texts[i])}</td>" for _, texts in columns)
                   + "</tr>" for i in range(len(columns[0][1])))
    return (f'<table class="lx-gens"><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def summary(state: Session) -> str:
    """The summary of the session's variant (`summary_markdown` with the original's size)."""
    need_model(state)
    facts = jobs.variant_facts_job(state.model, [])
    return summary_markdown(state, facts["layers_before"], facts["params_before"])


def follows(ctx: Ctx) -> list:
    """The Compare views a plan change refreshes (`follow` gives their values): the summary, the
    heal line and figure, the generations and the two checks."""
    c = ctx.compare
    return [c.summary, c.heal.line, c.heal.curve, c.gens, c.checks.capability,
            c.checks.task_scores]


def follow(state: Session, before: Session) -> tuple:
    """The values of `follows` after a plan change from `before` to `state`: nothing changes
    when the version is the same (the same ops typed again); a new version clears every result
    of the old one (the summary says whether the new plan was measured already)."""
    if state.version == before.version:
        return (gr.update(),) * 6
    return (summary(state) if state.model else WAITING, "", heal_panel.curve_view(None), "",
            "", "")


def build(ctx: Ctx) -> CompareParts:
    s = ctx.settings
    summary = gr.Markdown(WAITING, elem_id="lx-summary", elem_classes=["lx-step"])
    with gr.Accordion("Details (JSON)", open=False):
        details = gr.JSON(label="result")
    heal = heal_panel.build(ctx)
    gens_line = gr.Markdown(GENS_TITLE.format(n=s.gen_tokens), elem_id="lx-gens-line",
                            elem_classes=["lx-step"])
    gens = gr.HTML("", elem_id="lx-gens")
    checks = checks_panel.build(ctx)
    speed = speed_panel.build(ctx)
    hist_plot = gr.Plot(plots.history([]), label="Perplexity against layers removed",
                        elem_id="lx-history-plot")
    hist = gr.Dataframe(headers=HISTORY_HEADERS, value=[], label="Variants tried in this session",
                        interactive=False, wrap=True, elem_id="lx-history")
    clear_btn = gr.Button("Clear history")
    return CompareParts(summary=summary, details=details, heal=heal, gens_line=gens_line,
                        gens=gens, checks=checks, hist_plot=hist_plot, hist=hist,
                        clear_btn=clear_btn, speed=speed)


def wire(ctx: Ctx) -> None:
    c, s = ctx.compare, ctx.settings

    def views(state: Session) -> tuple:
        """summary, history table, history plot."""
        return (summary(state), history_rows(state.history),
                plots.history(state.history, {h.method: method_title(h.method)
                                              for h in state.history}))

    @user_errors
    @busy.claims(MEASURING, "Apply")
    def apply(state: Session, request: gr.Request, progress=gr.Progress()):
        state, result = apply_plan(s, state, stop.watch(progress, request))
        summary, rows, fig = views(state)
        return state, summary, result, rows, fig

    @user_errors
    @busy.claims("the generations are being written", "generate", reads=True)
    def generate(state: Session, request: gr.Request, progress=gr.Progress()):
        return generations_html(generations(s, state, stop.watch(progress, request)))

    @user_errors
    @busy.claims("the history is being cleared", "clear the history")
    def clear(state: Session, request: gr.Request):
        return replace(state, history=()), [], None

    @user_errors
    def to_compare(state: Session, request: gr.Request):
        """Open Compare for the new measurement: nothing of another variant stays on screen
        (a healing is shown again only when it healed this very plan). Refused at once, on the
        Plan tab, while another step changes the state."""
        busy.refuse_if_busy(request, "Apply")
        need_model(state)
        h = state.heal
        return (gr.Tabs(selected="compare"), "Measuring the plan…",
                heal_panel.line(h) if h else "",
                heal_panel.curve_view(heal_panel.figure(h) if h else None),
                "", "", "")

    # switch to Compare first (a refusal, while another step runs, shows as a toast on the Plan
    # tab), then measure there with the bar on the summary
    shown = ctx.plan.apply_btn.click(
        to_compare, [ctx.state],
        [ctx.tabs, c.summary, c.heal.line, c.heal.curve, c.checks.capability,
         c.checks.task_scores, c.gens], api_name=False, show_progress="hidden")
    applied = ctx.long_step(shown.success, apply, [ctx.state],
                            [ctx.state, c.summary, c.details, c.hist, c.hist_plot],
                            api_name="apply", show_progress_on=[c.summary], last=False)
    ctx.long_step(applied.success, generate, [ctx.state], [c.gens], api_name="generate",
                  show_progress_on=[c.gens_line], continues=True)
    healed = heal_panel.wire(ctx, lambda st, report: measure_healed(s, st, report), views,
                             [c.summary, c.hist, c.hist_plot])
    ctx.long_step(healed.success, generate, [ctx.state], [c.gens], api_name=False,
                  show_progress_on=[c.gens_line], continues=True)
    checks_panel.wire(ctx)
    speed_panel.wire(ctx, c.speed, views, [c.summary, c.hist, c.hist_plot])
    c.clear_btn.click(clear, [ctx.state], [ctx.state, c.hist, c.hist_plot],
                      api_name="clear_history")
