"""`tail`: drop the n layers just before the final one.

"Reassessing Layer Pruning in LLMs" (arXiv 2411.15558) finds this simple rule a strong baseline:
the last layers but one are the most removable, while the final layer is needed to map the residual
stream to the output distribution. It is also what the released MKA code effectively does.

Example:
    >>> compress(lm, "tail", remove=3).removed          # 30 layers: [26, 27, 28]
"""

from __future__ import annotations

from explorer.plan.registry import Method, Plan, PlanContext, register


@register
class Tail(Method):
    name = "tail"
    title = "Tail pruning (keep the final layer)"
    paper = "Reassessing Layer Pruning in LLMs, arXiv 2411.15558"
    description = ("Removes the n layers immediately before the last layer, without looking at any "
                   "data. Late layers change the residual stream the least in many models, and the "
                   "final layer is kept because it prepares the output. Surprisingly hard to beat: "
                   "compare every data-driven method against it.")
    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        L = ctx.lm.num_layers
        layers = list(range(L - 1 - remove, L - 1))
        return self.drop_plan(ctx, params, layers, {}, f"Dropped the {remove} layers before the "
                              f"final one ({layers[0]}-{layers[-1]}).")
