"""`laco`: Layer Collapse with Reserving-Differences-while-Seeking-Common (Yang et al., arXiv 2402.11187).

RDSC folds the m = C - 1 layers after layer l into layer l:

    theta*_l = theta_l + sum_{k=1..m} (theta_{l+k} - theta_l)     (linear weights; norms of layer l)

i.e. `Variant.merge` with weights (1 - m, 1, ..., 1). A merge is kept when the mean cosine between
the merged and the original model's final representations (after the final norm, per token, first
position of each window left out, over `num_sentences` calibration windows) exceeds T. The walk
starts at l = H - C and moves down: by I after an accepted merge, by 1 after a rejected one, until
l < L_low or the target layer count is reached. Near the target, m shrinks so the model never loses
more than `remove` layers.

Two modes, because the paper's walk often cannot reach a requested size (on the default model at
C=7, T=0.45 it accepts no merge at all: docs/methods.md):
  - "walk": the paper's procedure as published (C defaults to the published 7). If the walk ends
    before `remove` layers are gone, the method raises an error that says how far it got.
  - "target" (default; ours, not the paper's): C is scaled to the model's depth (the published C=7
    was chosen for Llama-2-13B's 40 layers: C = max(2, round(7 L / 40)), 5 for 30 layers), and the
    walk is repeated from the top until the target is reached; a pass that accepts no merge accepts
    its best candidate (highest cosine) instead. It always removes exactly `remove` layers.

Pitfall of the released code (docs/methods.md): it accumulates the differences telescopically,
so the merged layer simply becomes the last rear layer (weights 1, 2, 4 -> 4 instead of the paper's
5). We implement the paper's rule; `rule="code"` reproduces the released behaviour.

Example:
    >>> plan = compress(lm, "laco", remove=6)                 # target mode: exactly 6 layers
    >>> plan = compress(lm, "laco", remove=6, mode="walk")    # the paper's walk, C=7, T=0.45
    >>> plan.notes
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from explorer.core.backbone import run_backbone
from explorer.core.errors import LayerError
from explorer.core.params import Param
from explorer.core.variant import Variant
from explorer.plan.registry import Method, Plan, PlanContext, register


def rdsc_weights(m: int, rule: str = "paper") -> list[float]:
    """Weights on (theta_l, theta_{l+1}, ..., theta_{l+m}) for one RDSC merge."""
    if rule == "paper":
        return [1.0 - m] + [1.0] * m
    if rule == "code":                     # telescoped: the merged layer is the last rear layer
        return [0.0] * m + [1.0]
    raise LayerError(f"laco rule must be 'paper' or 'code' (got {rule!r})")


def final_states(ctx: PlanContext, variant: Variant, ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1, H) final-norm hidden states of `ids` through `variant` (first position dropped)."""
    return torch.cat([b.hidden[:, 1:].float() for b in
                      run_backbone(ctx.lm, ids, variant=variant, final_norm=True, label="LaCo")])


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1).nan_to_num(0.0).mean())


PUBLISHED_C, PUBLISHED_DEPTH = 7, 40      # the paper's C, chosen for Llama-2-13B's 40 layers


def scaled_c(num_layers: int) -> int:
    """C scaled to the model's depth: max(2, round(7 L / 40)) (ours; the published 7 at 40)."""
    return max(2, round(PUBLISHED_C * num_layers / PUBLISHED_DEPTH))


@dataclass
class _Walk:
    """The state of the walk: the current variant and what was tried."""

    v: Variant
    tried: list[float]
    accepted: int = 0
    forced: int = 0


@register
class LaCo(Method):
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
    params = (
        Param("mode", str, "target", "target (ours): C scaled to the depth, walk repeated, best "
              "candidate accepted when none passes T, always reaches the size; walk: the paper's "
              "single walk, an error if it falls short", choices=("target", "walk"),
              label="Walk", choice_labels=(
                ('target', 'to the target size (ours)'),
                ('walk', 'one walk (paper)'),
              )),
        Param("C", int, None, "layers combined per merge (none: 7 as published in walk mode, "
              "round(7 L / 40) in target mode)", min=2, optional=True,
              label="Layers per merge (C)"),
        Param("I", int, 1, "minimum interval: the walk moves down by I after an accepted merge",
              min=1,
              label="Minimum interval (I)"),
        Param("H", int, None, "highest layer index the walk may touch (none: the last layer)",
              min=0, optional=True,
              label="Highest layer (H)"),
        Param("L", int, 0, "lowest layer index the walk may start from", min=0,
              label="Lowest layer (L)"),
        Param("T", float, 0.45, "acceptance threshold on the mean cosine of final "
              "representations", min=-1, max=1,
              label="Acceptance threshold (T)"),
        Param("rule", str, "paper", "RDSC as written (paper) or the released telescoped rule "
              "(code)", choices=("paper", "code"),
              label="Merge rule", choice_labels=(
                ('paper', 'as in the paper'),
                ('code', 'as in the released code'),
              )),
        Param("num_sentences", int, 8, "calibration windows used for the acceptance test", min=1,
              label="Acceptance-test windows"),
    )
    examples = ({"C": 3, "T": -1.0},)           # accept every merge: the walk must still stop

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        n0, mode, T = ctx.lm.num_layers, params["mode"], params["T"]
        C = params["C"] or (PUBLISHED_C if mode == "walk" else scaled_c(n0))
        H = n0 - 1 if params["H"] is None else params["H"]
        low, I, rule = params["L"], params["I"], params["rule"]
        said = self.words()
        if not low <= H < n0:
            raise LayerError(f"LaCo: the {said['L']} must be at most the {said['H']}, and the "
                             f"{said['H']} below {n0}, the model's layer count (got {low} and "
                             f"{H})")
        ids = ctx.input_ids[: params["num_sentences"]]
        target = n0 - remove
        ctx.report(0.02, "final representations of the original model")
        ref = final_states(ctx, Variant.identity(ctx.lm), ids)    # (B, T-1, H)
        w = _Walk(Variant.identity(ctx.lm), [])
        while True:
            best = self._pass(ctx, w, ids, ref, C, I, min(H, w.v.num_layers - 1), low, T, rule,
                              target, remove)
            if w.v.num_layers == target or mode == "walk":
                break
            if best is None:
                break                                          # no candidate left to try
            if best[0] is not None:                            # the pass accepted nothing
                _, cand, idx = best
                w.v, w.forced = cand, w.forced + 1
                if w.v.num_layers == target:
                    break
        got = n0 - w.v.num_layers
        detail = f"accepted {w.accepted} of {len(w.tried)} merges at an {said['T']} of {T}"
        if w.tried:
            detail += f" (cosines {min(w.tried):.3f}..{max(w.tried):.3f})"
        if w.forced:
            detail += (f"; {w.forced} pass(es) had no merge above the threshold, so their best "
                       "candidate was accepted")
        if got != remove:
            if mode == "walk":
                raise LayerError(f"LaCo: the paper's walk ({C} layers per merge) ended after "
                                 f"removing {got} of {remove} layers: {detail}; lower the "
                                 f"{said['T']} or the {said['C']}, or choose the "
                                 f"{said['mode']} '{said['target']}' (mode=target)")
            raise LayerError(f"LaCo: no merge candidate left between the {said['L']} {low} and "
                             f"the {said['H']} {H} after removing {got} of {remove} layers; "
                             f"lower the {said['L']} or raise the {said['H']}")
        return Plan(self.name, params, w.v, {"cosine of tried merges": w.tried},
                    f"LaCo, walk {said[mode]}, {C} layers per merge: {detail}, removing "
                    f"{got} layers.")

    @classmethod
    def words(cls) -> dict[str, str]:
        """What its errors and notes call the parameters and the modes: the declared labels
        ("Acceptance threshold (T)") and choice labels ("to the target size (ours)"), in lower
        case where they stand inside a sentence."""
        out = {p.name: p.label[0].lower() + p.label[1:] for p in cls.params}
        mode = next(p for p in cls.params if p.name == "mode")
        return out | dict(mode.choice_labels)

    @staticmethod
    def _pass(ctx: PlanContext, w: _Walk, ids: torch.Tensor, ref: torch.Tensor, C: int, I: int,
              H: int, low: int, T: float, rule: str, target: int, remove: int):
        """One walk from l = H - C down to `low`, accepting merges above T (updates `w`).

        Returns None when no candidate was tried, (None, None, None) when a merge was accepted,
        else (cosine, variant, slots) of the best rejected candidate.
        """
        best = None
        l = H - C                                                  # the paper's start
        while l >= low and w.v.num_layers > target:
            m = min(C - 1, w.v.num_layers - target, w.v.num_layers - 1 - l)
            if m < 1:
                l -= 1
                continue
            idx = list(range(l, l + m + 1))
            origs = [w.v.origin(i) for i in idx]
            cand = w.v.merge(idx, rdsc_weights(m, rule), label=f"laco({origs[0]}..{origs[-1]})",
                             extra={"method": "laco", "rule": rule})
            sim = mean_cosine(final_states(ctx, cand, ids), ref)
            w.tried.append(sim)
            ctx.report(1 - (w.v.num_layers - target) / max(1, remove),
                       f"merge {origs[0]}..{origs[-1]} -> cosine {sim:.3f}")
            if sim > T:
                w.v, w.accepted = cand, w.accepted + 1
                best = (None, None, None)
                l -= I
            else:
                if best is None or (best[0] is not None and sim > best[0]):
                    best = (sim, cand, idx)
                l -= 1
        return best
