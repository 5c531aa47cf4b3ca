"""`mka`: Manifold-based Knowledge Alignment layer merging (Liu et al., arXiv 2406.16330).

Repeat until `remove` merges are done: probe the *current* variant, score candidate pairs (l, m) by
the similarity S_lm of the two layers' outputs (layer-boundary cell (l+1, m+1) of
`explorer.measure.measures.similarity`; NPIB by default), merge the most similar pair into one layer

    theta = a * theta_l + (1 - a) * theta_m        (every linear weight and bias; norms from l)

placed at l, and measure again. The weight a is S_lm (the paper's rule, default) or the released
code's a = sigmoid(s_l / (s_l + s_m)) with s = mean of the layer's similarity row (`weight_rule=
"code"`), which is ~0.62 for any pair. For distance measures (bi, angular) S = 1 - distance.
Similarities are clipped to [0, 1] before use as a weight.

Pitfall of the released code (docs/methods.md): its merge writes into `model.state_dict()[k]`,
which changes nothing, and the pair merged is always the last two layers, so it really performs
tail pruning; use the `tail` method to compare with that.

Example:
    >>> plan = compress(lm, "mka", remove=4)                        # NPIB, adjacent pairs
    >>> plan = compress(lm, "mka", remove=2, measure="cosine", pairs=[[20, 21], [5, 9]])
    >>> plan.merged
"""

from __future__ import annotations

import math

import torch

from explorer.core.errors import LayerError
from explorer.measure.measures import (adjacent, get_measure, measure_param, measure_title,
                                       similarity)
from explorer.core.params import Param
from explorer.core.variant import Variant
from explorer.plan.registry import Method, Plan, PlanContext, register


def pair_similarity(sim: torch.Tensor, l: int, m: int, higher_is_similar: bool) -> float:
    """S_lm in [0, 1] from a boundary matrix: the outputs of layers l and m are boundaries l+1, m+1."""
    v = float(sim[l + 1, m + 1])
    return min(1.0, max(0.0, v if higher_is_similar else 1.0 - v))


def code_weight(sim: torch.Tensor, l: int, m: int, higher_is_similar: bool) -> float:
    """The released code's rule: a = sigmoid(s_l / (s_l + s_m)), s = mean similarity row (outputs,
    diagonal excluded)."""
    out = sim[1:, 1:].float()                                    # (L, L): layer outputs only
    s = out if higher_is_similar else 1.0 - out
    L = s.shape[0]
    row = (s.sum(1) - s.diagonal()) / max(1, L - 1)              # (L,)
    sl, sm = float(row[l]), float(row[m])
    ratio = sl / (sl + sm) if sl + sm != 0 else 0.5
    return 1.0 / (1.0 + math.exp(-ratio))


@register
class MKA(Method):
    name = "mka"
    title = "MKA (manifold similarity, weighted merge)"
    paper = ("Pruning via Merging: Compressing LLMs via Manifold Alignment Based Layer Merging, "
             "arXiv 2406.16330")
    description = ("Finds the two layers whose outputs carry the most similar information (by "
                   "default the normalised mutual information of their manifold embeddings, NPIB) "
                   "and fuses them into one layer whose weights are a weighted average, "
                   "a * first + (1 - a) * second, with a = their similarity. Then it measures the "
                   "smaller model again and repeats. The paper reports Llama3-8B keeping MMLU within "
                   "2.82% at 43.75% compression; its released code, though, only drops the last "
                   "layers (see the tail method).")
    params = (
        measure_param("npib", "similarity S_lm of two layers' outputs, for choosing pairs and as "
                      "the weight (a distance d is used as 1 - d)"),
        Param("adjacent", bool, True, "only adjacent pairs are candidates (false: every pair)",
              label="Adjacent pairs only"),
        Param("weight_rule", str, "paper", "a = S_lm (paper) or the released code's "
              "a = sigmoid(s_l / (s_l + s_m))", choices=("paper", "code"),
              label="Weight rule", choice_labels=(
                ('paper', 'as in the paper'),
                ('code', 'as in the released code'),
              )),
        Param("pairs", list, None, "pairs [[l, m], ...] of original layers to merge in this "
              "order (none: choose by similarity); their number is the layers removed",
              optional=True,
              label="Pairs to merge"),
        Param("measure_params", dict, {}, 'extra parameters of the measure, e.g. {"k": 5} for '
              "NPIB",
              label="Measure parameters"),
    )

    def implied_remove(self, params: dict) -> int | None:
        return len(params["pairs"]) if params["pairs"] else None

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        measure, mp = params["measure"], params["measure_params"]
        get_measure(measure).resolve(mp)                              # refuse before probing
        higher = get_measure(measure).higher_is_similar
        pairs = params["pairs"]
        if pairs is not None and len(pairs) != remove:
            raise LayerError(f"mka: {len(pairs)} pairs given but remove={remove}")
        v = Variant.identity(ctx.lm)
        scores: dict[str, list[float]] = {}
        weights = []
        for step in range(remove):
            ctx.report(step / remove, f"measuring {measure}", step=step, total=remove, unit="merges")
            pr = ctx.probe(v)
            n = v.num_layers
            need_full = pairs is not None or not params["adjacent"] or \
                params["weight_rule"] == "code"
            if need_full:
                sim = similarity(pr, measure, **mp)                     # (n+1, n+1)
            else:                                                       # only cells (i, i+1)
                adj = adjacent(pr, measure, **mp)                       # (n,)
                sim = torch.full((n + 1, n + 1), float("nan"))
                idx = torch.arange(n)
                sim[idx, idx + 1] = adj
                sim[idx + 1, idx] = adj
            if step == 0:
                scores[f"{measure} (outputs of l, l+1)"] = [float(sim[i + 1, i + 2])
                                                            for i in range(n - 1)]
            if pairs is not None:
                lo, hi = self._user_pair(v, pairs[step])
            else:
                cands = [(i, i + 1) for i in range(n - 1)] if params["adjacent"] else \
                    [(i, j) for i in range(n) for j in range(i + 1, n)]
                lo, hi = max(cands, key=lambda c: (pair_similarity(sim, *c, higher), -c[0]))
            a = pair_similarity(sim, lo, hi, higher) if params["weight_rule"] == "paper" \
                else code_weight(sim, lo, hi, higher)
            origs = (v.groups[lo], v.groups[hi])
            label = f"mka({'+'.join(map(str, origs[0]))},{'+'.join(map(str, origs[1]))}; a={a:.3f})"
            v = v.merge([lo, hi], [a, 1.0 - a], label=label,
                        extra={"method": "mka", "similarity": round(pair_similarity(
                            sim, lo, hi, higher), 6)})
            weights.append(round(a, 4))
        return Plan(self.name, params, v, scores,
                    f"MKA merged {remove} pair(s) by {measure_title(measure)} with the "
                    f"{params['weight_rule']} "
                    f"weight rule (a = {', '.join(map(str, weights))}).")

    @staticmethod
    def _user_pair(v: Variant, pair) -> tuple[int, int]:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise LayerError(f"mka pairs must be [l, m] lists of two layer indices (got {pair!r})")
        try:
            a, b = v.slot_of(int(pair[0])), v.slot_of(int(pair[1]))
        except (ValueError, TypeError):
            raise LayerError(f"mka pair {pair!r} names a layer that is not in the model") from None
        if a == b:
            raise LayerError(f"mka pair {pair!r}: both layers are already merged into one")
        return min(a, b), max(a, b)
