"""`shortgpt`: drop the n layers with the lowest Block Influence (ShortGPT, arXiv 2403.03853).

BI_i = mean over calibration tokens of (1 - cos(x_i[t], x_{i+1}[t])): how much layer i turns the
residual stream. The n lowest-BI layers are deleted at once (not necessarily contiguous), ranked on
the original model only, as in the paper.

Example:
    >>> plan = compress(lm, "shortgpt", remove=6)
    >>> plan.scores["bi"][:3], plan.removed
"""

from __future__ import annotations

from explorer.core.layer_lists import format_layers
from explorer.measure.measures import adjacent, measure_param, measure_title, most_similar
from explorer.plan.registry import Method, Plan, PlanContext, register


@register
class ShortGPT(Method):

    name = "shortgpt"
    title = "ShortGPT (Block Influence)"
    paper = ("ShortGPT: Layers in Large Language Models are More Redundant Than You Expect, "
             "arXiv 2403.03853")
    description = ("Scores every layer by its Block Influence: one minus the average cosine between "
                   "the hidden state entering the layer and the one leaving it. A layer that barely "
                   "rotates the residual stream has low influence; the layers with the lowest "
                   "scores are deleted together, wherever they are. The paper removes about a "
                   "quarter of Llama-2's layers this way with modest losses on benchmarks.")
    params = (measure_param("bi", "adjacent measure to rank layers by (ShortGPT's Block Influence); "
                            "the layers that change the stream least are dropped"),)

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        ctx.report(0.05, "probing the calibration text")
        measure = params["measure"]
        scores = adjacent(ctx.probe(), measure).float().cpu().tolist()   # (L,)
        layers = sorted(most_similar(scores, measure)[:remove])
        return self.drop_plan(ctx, params, layers, {measure: scores},
                              f"Dropped the {remove} layers with the lowest "
                              f"{measure_title(measure)} scores: layers "
                              f"{format_layers(layers)}.")
