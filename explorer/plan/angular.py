"""`angular`: drop the contiguous block whose input and output point the same way
(Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers", arXiv 2403.17887).

d(i, i+n) = arccos(cos(x_i[T], x_{i+n}[T])) / pi on each sample's last token T, averaged over
samples; the block [i*, i*+n) with i* = argmin_i d(i, i+n) is removed. The paper then heals the
model with QLoRA; we do not (compare the un-healed numbers with the other methods).

Example:
    >>> plan = compress(lm, "angular", remove=6)
    >>> plan.removed            # six consecutive original layers
"""

from __future__ import annotations

from explorer.measure.measures import measure_param, measure_title, most_similar, similarity
from explorer.plan.registry import Method, Plan, PlanContext, register


@register
class Angular(Method):

    name = "angular"
    title = "Angular distance block (Gromov et al.)"
    paper = "The Unreasonable Ineffectiveness of the Deeper Layers, arXiv 2403.17887"
    description = ("Looks for the run of n consecutive layers whose input and output are closest in "
                   "angle, measured on the last token of each calibration sample, and deletes that "
                   "whole block. The idea: if a block hardly changes the direction of the residual "
                   "stream, the layers after it can do without it. The paper finds such blocks deep "
                   "in the network and repairs the damage with a little fine-tuning, which we skip.")
    params = (measure_param("angular", "block measure between a block's input and output (the "
                            "paper's angular distance); the most similar block is dropped"),)

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        L, n, measure = ctx.lm.num_layers, remove, params["measure"]
        ctx.report(0.05, "probing the calibration text")
        sim = similarity(ctx.probe(), measure).float().cpu()             # (L+1, L+1)
        d = [float(sim[i, i + n]) for i in range(L - n + 1)]               # block [i, i+n)
        start = most_similar(d, measure)[0]
        return self.drop_plan(ctx, params, range(start, start + n), {measure: d},
                              f"Dropped layers {start}-{start + n - 1}: "
                              f"{measure_title(measure)} "
                              f"d({start}, {start + n}) = {d[start]:.3f} is the best of {len(d)} "
                              "blocks.")
