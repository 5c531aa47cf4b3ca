"""`prunecomp`: Prune&Comp's magnitude compensation (Chen et al., arXiv 2507.18212), folded into the
weights; no training, no runtime cost.

Removing layers leaves a magnitude gap: the residual stream after the cut is smaller (or larger)
than the dense stream the next layers were trained on. At each cut after slot k, in slot order,

    alpha_k = mean_t ||D_t|| / mean_t ||O_t||

where O is the variant's state after slot k (with the earlier cuts' compensation applied) and D the
dense state it stands for (each window's first position left out by default, `skip_first`). The
runtime compensation multiplies the stream after slot k by alpha_k. It folds exactly into the
weights: every later layer reads the stream through a scale-invariant norm (RMSNorm, LayerNorm),
so multiplying the stream by alpha is the same as dividing everything written into it afterwards
by alpha (the final norm removes the overall scale). The fold therefore scales, in every slot
after slot k, the modules whose outputs are added to the stream (the attention output and MLP
down projections, weight and bias; for families that normalise a branch before adding it, Gemma,
the gains of those post-norms) by 1 / (product of the alphas of the cuts before it). Exact up to
the norms' epsilon; the healed model keeps its architecture.

The paper also chooses the layers to remove iteratively, re-estimating after each removal; here the
plan comes from any method and this mode compensates it (`then` runs the compensation after a
closed-form map or LinearPatch, or alone).

Example:
    >>> r = heal(compress(lm, "angular", remove=6).variant, "prunecomp")
    >>> r.details["alphas"]
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from explorer.core.backbone import run_backbone
from explorer.core.errors import LayerError
from explorer.core.gather import Gather, Sums, View
from explorer.core.model import LoadedModel
from explorer.core.params import Param
from explorer.core.ranks import reduce_sums, shard
from explorer.core.variant import Variant
from explorer.heal.closed_form import CLOSED_FORM_DEFAULTS, _norm_scale, apply_closed_form
from explorer.heal.cuts import Cut, find_cuts, trainable_copy, with_slot
from explorer.heal.data import shared_prefix
from explorer.heal.registry import COMMON_PARAMS, HealContext, HealMode, HealOutcome, register_mode



def stream_writers(lm: LoadedModel, layer: nn.Module) -> list[str]:
    """Paths (in the layer) of the modules whose outputs the layer adds to the residual stream:
    the post-norms where the family normalises a branch before adding it (Gemma), else the
    attention output and MLP down projections."""
    arch = lm.arch
    post = ["post_attention_layernorm", "post_feedforward_layernorm"]
    if arch.part(layer, post[1]) is not None:
        return post
    paths = [arch.attn_o, arch.mlp_down]
    if any(p is None or arch.part(layer, p) is None for p in paths):
        if arch.is_moe:
            raise LayerError(f"prunecomp scales each layer's attention output and MLP down "
                             f"projections; the {arch.family} model's layers hold a mixture of "
                             "experts instead of one MLP")
        raise LayerError(f"prunecomp needs each layer's attention output and MLP down "
                         f"projections; the {arch.family} family has none where expected")
    return paths


@torch.no_grad()
def scale_output(module: nn.Module, c: float) -> None:
    """Multiply what `module` outputs by c, in place: a linear projection (weight and bias), or an
    RMS-style norm's gain g (stored as g, or as g - 1 like Gemma's; checked either way)."""
    H = module.weight.shape[0]
    if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
        module.weight.mul_(c)
        if getattr(module, "bias", None) is not None:
            module.bias.mul_(c)
        return
    g = _norm_scale(module, H, module.weight)
    w = module.weight.double()
    for new in (w * c, (w + 1) * c - 1):      # gain = weight, or gain = 1 + weight
        module.weight.copy_(new.to(module.weight.dtype))
        if torch.allclose(_norm_scale(module, H, module.weight), c * g, rtol=1e-4, atol=1e-6):
            return
    module.weight.copy_(w.to(module.weight.dtype))
    raise LayerError(f"prunecomp cannot scale the gain of a {type(module).__name__}")


def compensated(lm: LoadedModel, layer: nn.Module, c: float, tag_paths: list[str]) -> nn.Module:
    """A copy of `layer` owning only the stream writers, each scaled by c."""
    prefixes = tuple(p + "." for p in tag_paths)
    new = trainable_copy(layer, lambda name: name.startswith(prefixes))
    for p in tag_paths:
        scale_output(lm.arch.part(new, p), c)
    return new


def magnitude_gap(ctx: HealContext, v: Variant, cut: Cut, carried: float) -> float:
    """alpha = mean ||D|| / mean ||O_runtime|| at the cut; O_runtime = carried x O of `v` (the
    folded variant's stream is the runtime one divided by the earlier alphas' product)."""
    data, k, first = ctx.data, cut.slot, ctx.first
    start = min(shared_prefix(v), k)
    dense = data.dense_states(sorted({start, cut.dense_out} - {0}), ctx.progress)
    D = dense[cut.dense_out][:, first:]
    d_norm = float(D.double().norm(dim=-1).mean())

    def reduce(view: View, acc: Sums) -> None:          # view.y: (b, T', H) slot k's output
        o = view.y.double().norm(dim=-1)
        acc.add("norm", o.sum())
        acc.add("n", o.numel())
        ctx.report(view.rows.stop / (mine.stop - mine.start), f"slot {k}")

    mine = shard(data.num_windows)       # ranks: this one's windows, the sums added after
    g = Gather(k, reduce, first=first)
    for _ in run_backbone(ctx.lm, data.ids[mine], variant=v, start=start, stop=k + 1,
                          start_states=dense[start][mine] if start > 0 else None, gather=[g]):
        pass
    sums = reduce_sums(g.sums)
    total, count = float(sums["norm"]), float(sums["n"])
    return d_norm / max(carried * total / max(count, 1), 1e-30)


def apply_compensation(ctx: HealContext, v: Variant) -> tuple[Variant, list[dict]]:
    """Fold the compensation of every cut of `v` (slot order) into the later slots' weights."""
    lm = ctx.lm
    alphas: list[dict] = []
    carried = 1.0                   # product of the alphas of the cuts before the current slot
    factor = [1.0] * v.num_layers   # the scale folded into each slot
    for cut in find_cuts(v):
        if cut.slot < 0 or cut.slot == v.num_layers - 1:
            continue                # nothing before it / nothing after it reads the stream
        a = magnitude_gap(ctx, _folded(lm, v, factor), cut, carried)
        carried *= a
        alphas.append({"slot": cut.slot, "alpha": a})
        for m in range(cut.slot + 1, v.num_layers):
            factor[m] = 1.0 / carried
    return _folded(lm, v, factor), alphas


def _folded(lm: LoadedModel, v: Variant, factor: list[float]) -> Variant:
    out = v
    for m, c in enumerate(factor):
        if c != 1.0:
            layer = v.loaded(m)
            out = with_slot(out, m, compensated(lm, layer, c, stream_writers(lm, layer)), "pc")
    return out


@register_mode
class PruneComp(HealMode):
    name = "prunecomp"
    title = "Prune&Comp: magnitude compensation folded into the weights"
    paper = ("Prune&Comp: Free Lunch for Layer-Pruned LLMs via Iterative Pruning with Magnitude "
             "Compensation, arXiv 2507.18212")
    description = ("Measures how much smaller (or larger) the residual stream is after each cut "
                   "than the dense model's, and rescales the weights that write into the stream "
                   "after the cut so the next layers see the magnitude they expect: one number "
                   "per cut, no training, no runtime cost, the architecture unchanged. Can run "
                   "after the closed-form map or LinearPatch.")
    trains = False
    params = COMMON_PARAMS + (
        Param("then", str, "alone", "the compensation alone, or after the closed-form map or "
              "LinearPatch's patch (that mode's defaults)",
              choices=("alone", "closed-form", "linearpatch"),
              choice_labels=(("alone", "alone"), ("closed-form", "after the closed-form map"),
                             ("linearpatch", "after LinearPatch"))),
    )

    def run(self, ctx: HealContext, params: dict) -> HealOutcome:
        t0 = time.perf_counter()
        v, details = ctx.variant, {}
        if params["then"] == "closed-form":
            v, details["fits"] = apply_closed_form(ctx, v, CLOSED_FORM_DEFAULTS, "cf")
        elif params["then"] == "linearpatch":
            from explorer.heal.linear_patch import LinearPatch

            lp = LinearPatch()
            out = lp.run(ctx, {**{p.name: p.default for p in lp.params}, **{
                k: ctx.params[k] for k in ("seqlen", "windows", "held_out", "skip_first")}})
            v, details["fits"] = out.variant, out.details["fits"]
        v, alphas = apply_compensation(ctx, v)
        if not alphas and params["then"] == "alone":
            raise LayerError("prunecomp has nothing to compensate: no cut has layers both "
                             "before and after it")
        details["alphas"] = alphas
        notes = "; ".join(f"slot {a['slot']}: alpha {a['alpha']:.4g}" for a in alphas)
        return HealOutcome(v, steps=0, seconds=time.perf_counter() - t0, history=[],
                           details=details, notes=notes)
