"""`shortgpt`: drop the n layers with the lowest Block Influence (ShortGPT, arXiv 2403.03853).

BI_i = mean over calibration tokens of (1 - cos(x_i[t], x_{i+1}[t])): how much layer i turns the
residual stream. The n lowest-BI layers are deleted at once (not necessarily contiguous), ranked on
the original model only, as in the paper.

Example:
    >>> plan = compress(lm, "shortgpt", remove=6)
    >>> plan.scores["bi"][:3], plan.removed
"""

from __future__ import annotations

from ..variant import Variant
from .layout import Layout
from .registry import Method, Plan, PlanContext, register


def lowest(values: list[float], n: int) -> list[int]:
    """Indices of the n smallest values (ties: lower index first), sorted."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return sorted(order[:n])


@register
class ShortGPT(Method):
    """Parameters:
        measure: adjacent measure to rank by; "bi" (ShortGPT's Block Influence, default). Any
            distance measure of `explorer.measure` works (lowest = most redundant); for a similarity
            measure (cosine, cka, npib) the highest values are dropped.
    """

    name = "shortgpt"
    title = "ShortGPT (Block Influence)"
    paper = ("ShortGPT: Layers in Large Language Models are More Redundant Than You Expect, "
             "arXiv 2403.03853")
    description = ("Scores every layer by its Block Influence: one minus the average cosine between "
                   "the hidden state entering the layer and the one leaving it. A layer that barely "
                   "rotates the residual stream has low influence; the layers with the lowest "
                   "scores are deleted together, wherever they are. The paper removes about a "
                   "quarter of Llama-2's layers this way with modest losses on benchmarks.")
    defaults = {"measure": "bi"}
    needs_probe = True

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        from ..measure import MEASURES, adjacent  # imported late: optional at import time

        L = ctx.lm.num_layers
        ctx.report(0.05, "probing the calibration text")
        pr = ctx.probe()
        scores = adjacent(pr, params["measure"]).float().cpu().tolist()   # (L,)
        higher_similar = MEASURES[params["measure"]].higher_is_similar
        key = [-s for s in scores] if higher_similar else scores
        layers = lowest(key, remove)
        v = Variant.identity(ctx.lm).drop(layers)
        lay = Layout.identity(L).drop(layers)
        return Plan(self.name, params, v, lay.removed(L), [], {params["measure"]: scores},
                    f"Dropped the {remove} layers with the lowest {params['measure']} "
                    f"scores: {layers}.")
