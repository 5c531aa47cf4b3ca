"""`damage`: remove what measurably hurts least (the damage map, explorer/measure/damage.py).

No similarity stands in for the damage: each candidate removal is run on the calibration windows
and compared with the dense model.

- mode "block": the contiguous block of n layers whose removal raises the NLL (or the KL to the
  dense model) least, measured for every block of n;
- mode "greedy": n times, the single layer whose removal hurts the current model least, the map
  of singles measured again after each removal (n * L candidates instead of L - n + 1).

Plans for several sizes share their work: one map of the asked block sizes, one greedy run to
the largest size (its first k removals are the plan of k).

Example:
    >>> plan = compress(lm, "damage", remove=6, mode="greedy")
    >>> plan.scores["nll increase"]      # the measured damage of each removal, in order
"""

from __future__ import annotations

from explorer.measure.damage import METRIC_NAMES, METRIC_UNITS, block_label, damage_map
from explorer.core.layer_lists import format_layers
from explorer.core.params import Param
from explorer.core.variant import Variant
from explorer.plan.registry import Method, Plan, PlanContext, register


@register
class Damage(Method):

    name = "damage"
    title = "Measured damage (least harmful removal)"
    paper = ("Layer Explorer's damage map; the question raised by Rethinking Layer Relevance "
             "Beyond Cosine Similarity, arXiv 2605.14075")
    description = ("Instead of trusting a similarity, measures what each removal does: every "
                   "candidate is run on the calibration windows without its layers, and the one "
                   "that raises the loss least (or moves the output distribution least, by KL) is "
                   "removed. Block mode removes the least damaging run of n consecutive layers; "
                   "greedy mode removes one layer at a time, measuring the remaining layers again "
                   "after each removal. It costs many forward passes (one per candidate, each "
                   "only from its cut onward) where a similarity costs one.")
    params = (
        Param("mode", str, "block", "block: the least damaging run of n layers; greedy: one "
              "layer at a time, measured again after each removal", choices=("block", "greedy"),
              label="Mode", choice_labels=(("block", "one block of n layers"),
                                           ("greedy", "greedy, one layer at a time"))),
        Param("metric", str, "nll", "what counts as damage: the NLL increase or the KL to the "
              "model before the removal", choices=("nll", "kl"), label="Damage",
              choice_labels=tuple((m, METRIC_NAMES[m]) for m in ("nll", "kl"))),
        Param("samples", int, 8, "calibration windows each candidate is measured on (the first "
              "ones)", min=1, label="Windows measured"),
    )
    examples = ({}, {"mode": "greedy", "metric": "kl", "samples": 2})

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        return self.run_many(ctx, [remove], params)[remove]

    def run_many(self, ctx: PlanContext, removes: list[int], params: dict) -> dict[int, Plan]:
        ids = ctx.input_ids[:params["samples"]]                        # (W, T)
        metric = params["metric"]
        ctx.report(0.02, "measuring the removal candidates")
        if params["mode"] == "block":
            dm = damage_map(ctx.lm, ids, max_block=max(removes), sizes=removes,
                            kl=metric == "kl", progress=ctx.progress)
            out = {}
            for n in removes:
                cells = dm.cells(n)
                scores = [float(dm.matrix(metric)[a, b]) for a, b in cells]
                k = min(range(len(cells)), key=lambda i: (scores[i], i))
                a, b = cells[k]
                out[n] = self.drop_plan(
                    ctx, params, range(a, b), {f"{metric} of block from layer": scores},
                    f"Dropped layers {block_label(a, b)}: their removal's measured "
                    f"{METRIC_NAMES[metric]} was {scores[k]:.4f} {METRIC_UNITS[metric]}, the least of "
                    f"{len(cells)} blocks of {n} measured on {dm.windows} calibration windows.")
            return out
        return self._greedy(ctx, ids, removes, params)

    def _greedy(self, ctx: PlanContext, ids, removes: list[int], params: dict
                ) -> dict[int, Plan]:
        metric = params["metric"]
        v = Variant.identity(ctx.lm)
        order: list[int] = []          # original layers, in the order removed
        cost: list[float] = []         # the measured damage of each removal, to the model before
        out = {}
        for step in range(max(removes)):
            ctx.report(step / max(removes), f"greedy removal {step + 1} of {max(removes)}")
            dm = damage_map(ctx.lm, ids, max_block=1, base=v, kl=metric == "kl")
            singles = [float(dm.matrix(metric)[i, i + 1]) for i in range(v.num_layers)]
            slot = min(range(len(singles)), key=lambda i: (singles[i], i))
            order.append(v.slots[slot])
            cost.append(singles[slot])
            v = v.drop([slot])
            if step + 1 in removes:
                n = step + 1
                out[n] = self.drop_plan(
                    ctx, params, order[:n], {f"{metric} of each removal": cost[:n]},
                    f"Dropped layers {format_layers(sorted(order[:n]))} one at a time (in the "
                    f"order {', '.join(map(str, order[:n]))}), each the one of least measured "
                    f"{METRIC_NAMES[metric]} among the layers left (measured against the model "
                    f"before that removal), on {dm.windows} calibration windows.")
        return out

