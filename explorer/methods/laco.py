"""`laco`: Layer Collapse with Reserving-Differences-while-Seeking-Common (Yang et al., arXiv 2402.11187).

RDSC folds the m = C - 1 layers after layer l into layer l:

    theta*_l = theta_l + sum_{k=1..m} (theta_{l+k} - theta_l)     (linear weights; norms of layer l)

i.e. `Variant.merge` with weights (1 - m, 1, ..., 1). A merge is kept when the mean cosine between
the merged and the original model's final representations (after the final norm, per token, first
position of each window left out, over `num_sentences` calibration windows) exceeds T. The walk
starts at l = H - C and moves down: by I after an accepted merge, by 1 after a rejected one, until
l < L_low or the target layer count is reached. Near the target, m shrinks so the model never loses
more than `remove` layers; if the walk ends first, fewer layers are removed and the notes say so.

Pitfall of the released code (../shared/METHODS.md): it accumulates the differences telescopically,
so the merged layer simply becomes the last rear layer (weights 1, 2, 4 -> 4 instead of the paper's
5). We implement the paper's rule; `rule="code"` reproduces the released behaviour.

Example:
    >>> plan = compress(lm, "laco", remove=6)            # C=7, I=1, T=0.45 as published
    >>> plan.notes
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import LayerError
from ..variant import Variant
from .layout import Layout
from .registry import Method, Plan, PlanContext, register


def rdsc_weights(m: int, rule: str = "paper") -> list[float]:
    """Weights on (theta_l, theta_{l+1}, ..., theta_{l+m}) for one RDSC merge."""
    if rule == "paper":
        return [1.0 - m] + [1.0] * m
    if rule == "code":                     # telescoped: the merged layer is the last rear layer
        return [0.0] * m + [1.0]
    raise LayerError(f"laco rule must be 'paper' or 'code' (got {rule!r})")


@torch.no_grad()
def final_states(ctx: PlanContext, variant: Variant, ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1, H) final-norm hidden states of `ids` through `variant` (first position dropped)."""
    lm = ctx.lm
    outs = []
    with variant.applied() as model:
        base = lm.arch.base_model(model)
        for b0 in range(0, ids.shape[0], 8):
            h = base(input_ids=ids[b0:b0 + 8].to(lm.device), use_cache=False).last_hidden_state
            outs.append(h[:, 1:].float())
    return torch.cat(outs)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1).nan_to_num(0.0).mean())


@register
class LaCo(Method):
    """Parameters (official defaults were for Llama-2-13B, 40 layers: C=7, I=1, H=39, L=0, T=0.45):
        C: layers combined per merge (layer l and the C-1 after it); default 7 as published.
        I: minimum interval: after an accepted merge the walk moves down by I (default 1).
        H: highest layer index the walk may touch; None = the last layer (default).
        L: lowest layer index the walk may start from (default 0).
        T: acceptance threshold on the mean cosine of final representations (default 0.45).
        rule: "paper" (RDSC as written, default) or "code" (the released telescoped rule).
        num_sentences: calibration windows used for the acceptance test (default 8).
    """

    name = "laco"
    title = "LaCo (layer collapse, RDSC merge)"
    paper = "LaCo: Large Language Model Pruning via Layer Collapse, arXiv 2402.11187"
    description = ("Collapses several consecutive layers into the first of them by adding the "
                   "later layers' differences to it (\"reserving differences while seeking "
                   "common\"). Each collapse is tried from the top of the network downwards and "
                   "kept only if the pruned model's final representations of a few calibration "
                   "sentences still point the same way as the original's (mean cosine above T). "
                   "The paper keeps over 80% of average task performance at 25-30% pruning of "
                   "Llama-2-7B/13B.")
    defaults = {"C": 7, "I": 1, "H": None, "L": 0, "T": 0.45, "rule": "paper",
                "num_sentences": 8}
    needs_probe = False

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        C, I, T, rule = int(params["C"]), int(params["I"]), float(params["T"]), params["rule"]
        n0 = ctx.lm.num_layers
        H = n0 - 1 if params["H"] is None else int(params["H"])
        low = int(params["L"])
        if C < 2 or I < 1 or not 0 <= low <= H < n0:
            raise LayerError(f"laco needs C >= 2, I >= 1 and 0 <= L <= H < {n0} "
                             f"(got C={C}, I={I}, L={low}, H={H})")
        rdsc_weights(1, rule)                                      # validates rule early
        ids = ctx.input_ids[: max(1, int(params["num_sentences"]))]
        target = n0 - remove
        ctx.report(0.02, "LaCo: final representations of the original model")
        ref = final_states(ctx, Variant.identity(ctx.lm), ids)    # (B, T-1, H)
        v, lay = Variant.identity(ctx.lm), Layout.identity(n0)
        tried: list[float] = []
        accepted = 0
        l = H - C                                                  # the paper's start
        while l >= low and v.num_layers > target:
            m = min(C - 1, v.num_layers - target, v.num_layers - 1 - l)
            if m < 1:
                l -= 1
                continue
            idx = list(range(l, l + m + 1))
            origs = [lay.groups[i][0] for i in idx]
            cand = v.merge(idx, rdsc_weights(m, rule),
                           label=f"laco({origs[0]}..{origs[-1]})",
                           extra={"method": "laco", "rule": rule})
            sim = mean_cosine(final_states(ctx, cand, ids), ref)
            tried.append(sim)
            ctx.report(1 - (v.num_layers - target) / max(1, remove),
                       f"LaCo: merge {origs[0]}..{origs[-1]} -> cosine {sim:.3f}")
            if sim > T:
                v, lay, accepted = cand, lay.merge(idx), accepted + 1
                l -= I
            else:
                l -= 1
        got = n0 - v.num_layers
        note = f"LaCo accepted {accepted} of {len(tried)} merges at T={T}"
        if tried:
            note += f" (cosines {min(tried):.3f}..{max(tried):.3f})"
        note += f", removing {got} layers." if got == remove else \
            f"; the walk ended after removing only {got} of {remove} layers (lower T or C)."
        return Plan(self.name, params, v, lay.removed(n0), lay.merged(),
                    {"cosine of tried merges": tried}, note)
