"""Tab 4, Compare: apply the plan and compare with the original model: perplexity (with its
protocol), parameters, greedy generations side by side, and the session's history of variants."""

import gradio as gr

from ..errors import ExplorerError
from . import jobs, plots, stop
from .common import Ctx, need_model, user_errors
from .registry import REGISTRY

HISTORY_HEADERS = ["#", "method", "change", "layers", "removed", "parameters", "ppl before",
                   "ppl after"]

HISTORY_LIMIT = 100  # variants kept per session: session state must stay small


def baseline(settings, state: dict, progress=None):
    """Perplexity of the unmodified model (computed once per model, text and protocol)."""
    key = (state["model"], state["text"], settings.ppl_seqlen, settings.ppl_max_tokens)
    found = REGISTRY.baselines.get(key)
    if found is None:
        found = jobs.ppl_job(state["model"], state["text"], [], settings.ppl_seqlen,
                             settings.ppl_max_tokens, progress)
        REGISTRY.baselines[key] = found
    return found


def apply_plan(settings, state: dict, progress=None) -> tuple[dict, dict]:
    """Measure the session's plan against the original model; returns (state, result)."""
    need_model(state)
    plan = state.get("plan") or {}
    if not plan.get("ops"):
        raise ExplorerError("the plan is empty: pick layers to drop or merge in the Plan tab")
    lm = REGISTRY.model_for(state, jobs.callback(progress))
    before = baseline(settings, state, progress)
    after = jobs.ppl_job(state["model"], state["text"], plan["ops"], settings.ppl_seqlen,
                         settings.ppl_max_tokens, progress)
    variant = REGISTRY.variant(lm, plan["ops"])
    result = {
        "model": state["model"], "method": plan["method"], "params": plan.get("params", {}),
        "change": variant.describe(), "ops": plan["ops"],
        "layers_before": lm.num_layers, "layers_after": variant.num_layers,
        "removed": lm.num_layers - variant.num_layers,
        "removed_layers": plan.get("removed", []), "merged_layers": plan.get("merged", []),
        "params_before": lm.num_parameters, "params_after": variant.num_parameters(),
        "ppl_before": before.ppl, "ppl_after": after.ppl, "protocol": after.protocol(),
        "ppl_seconds": round(after.seconds, 2),
    }
    state = dict(state)
    state["history"] = add_to_history(state.get("history", []), result)
    return state, result


def add_to_history(history: list[dict], result: dict) -> list[dict]:
    """The session's history with `result` appended, keeping the last HISTORY_LIMIT entries."""
    entry = {k: result[k] for k in ("method", "change", "layers_after", "removed", "params_after",
                                    "ppl_before", "ppl_after", "ops", "params", "protocol")}
    return (list(history) + [entry | {"ppl": result["ppl_after"]}])[-HISTORY_LIMIT:]


def summary_markdown(r: dict) -> str:
    ratio = r["ppl_after"] / r["ppl_before"]
    pct = 100.0 * (1 - r["params_after"] / r["params_before"])
    return (f"### {r['change']}\n\n"
            f"| | original | variant |\n|---|---|---|\n"
            f"| perplexity | **{r['ppl_before']:.2f}** | **{r['ppl_after']:.2f}** (×{ratio:.2f}) |\n"
            f"| layers | {r['layers_before']} | {r['layers_after']} |\n"
            f"| parameters | {r['params_before']:,} | {r['params_after']:,} (−{pct:.1f}%) |\n\n"
            f"*Protocol:* {r['protocol']}. Method: {r['method']}.")


def history_rows(history: list[dict]) -> list[list]:
    return [[n + 1, h["method"], h["change"], h["layers_after"], h["removed"],
             f"{h['params_after']:,}", round(h["ppl_before"], 3), round(h["ppl_after"], 3)]
            for n, h in enumerate(history)]


def generations(settings, state: dict) -> list[list[str]]:
    """Greedy continuations of the prompts by the original model and by the variant."""
    need_model(state)
    ops = (state.get("plan") or {}).get("ops", [])
    if settings.gen_tokens <= 0:
        return []
    prompts = list(settings.prompts)
    orig = jobs.generate_job(state["model"], [], prompts, settings.gen_tokens)
    new = jobs.generate_job(state["model"], ops, prompts, settings.gen_tokens)
    return [[p, a, b] for p, a, b in zip(prompts, orig, new)]


def build(ctx: Ctx) -> None:
    summary = gr.Markdown("Apply a plan (Plan tab) to compare it with the original model.",
                          elem_id="lx-summary")
    with gr.Accordion("Details (JSON)", open=False):
        details = gr.JSON(label="result")
    gens = gr.Dataframe(headers=["prompt", "original", "variant"], value=[],
                        label="Greedy generations", interactive=False, wrap=True)
    with gr.Row():
        with gr.Column(scale=3):
            hist_plot = gr.Plot(label="Perplexity against layers removed")
        with gr.Column(scale=2):
            hist = gr.Dataframe(headers=HISTORY_HEADERS, value=[], label="Variants tried in this "
                                "session", interactive=False)
            clear_btn = gr.Button("Clear history")
    ctx.c.update(summary=summary, details=details, gens=gens, hist_plot=hist_plot, hist=hist,
                 clear_hist=clear_btn)


def wire(ctx: Ctx) -> None:
    c, s = ctx.c, ctx.settings

    @user_errors
    def apply(state: dict, request: gr.Request, progress=gr.Progress()):
        state, result = apply_plan(s, state, stop.watch(progress, request))
        return (state, summary_markdown(result), result, history_rows(state["history"]),
                plots.history(state["history"]), gr.Tabs(selected="compare"))

    @user_errors
    def generate(state: dict):
        return generations(s, state)

    def clear(state: dict):
        state = dict(state, history=[])
        return state, [], None

    applied = c["apply_btn"].click(
        apply, [ctx.state],
        [ctx.state, c["summary"], c["details"], c["hist"], c["hist_plot"], c["tabs"]],
        api_name="apply",
    )
    generated = applied.success(generate, [ctx.state], [c["gens"]], api_name="generate")
    ctx.c["long_events"] += [applied, generated]
    c["clear_hist"].click(clear, [ctx.state], [ctx.state, c["hist"], c["hist_plot"]],
                          api_name="clear_history")
