"""`come`: concatenation merge of adjacent layers (CoMe, arXiv 2510.15304), as we read the paper.

The official code was not available to us; this module is our reading of the paper.

Two adjacent Llama-style layers l, l+1 become one layer of the same shape that runs their strongest
parts side by side: the attention heads of both read the same input, the FFN channels of both read
the same input, and their outputs add, i.e. with all parts kept it would compute

    h = x + Attn_l(n_l(x)) + Attn_{l+1}(n_{l+1}(x)),
    y = h + FFN_l(n'_l(h)) + FFN_{l+1}(n'_{l+1}(h)).

To fit one layer's width we keep the most sensitive parts (sensitivity = activation intensity x
weight norm, on calibration tokens, first position of each window left out):
  - FFN channel c: ||a_c||_2 over tokens x ||W_down[:, c]||_2, a = input of down_proj;
  - attention: at the granularity of KV groups (one K/V head and the query heads that share it, so
    grouped-query attention stays consistent): sum over the group's query heads of
    ||o_h||_2 over tokens x ||W_o[:, h]||_F, o_h = that head's input to o_proj.
The top half of the 2 x channels and 2 x KV groups are kept. Each layer's pre-norm weights g are
folded into the projections that read them (RMSNorm(x) * g then W equals RMSNorm(x) then W diag(g)),
and the merged layer's norms are set to 1, so both layers' parts share one norm exactly.

Progressive: pick the adjacent pair whose input and output are most alike (cosine of x_l and
x_{l+2} on the current variant), merge, probe again, repeat. Optional recovery: train the merged
layer for `recover_steps` steps (MSE) towards the original pair's output (layer-wise distillation).

Supported: Llama-style layers with pre-RMSNorms and separate q/k/v/o and gate/up/down projections
(Llama, Mistral, Qwen2, SmolLM...). Fused or transposed projections (Phi-3, GPT-2, GPT-NeoX),
post-norms (Gemma) or per-head q/k norms (Qwen3, OLMo2) raise an ExplorerError.

Replay: the recipe op stores the kept KV groups and channels of both layers, so replay is exact
(with recovery it re-fits deterministically from the same calibration text, as streamline does).

Example:
    >>> plan = compress(lm, "come", remove=6)
    >>> plan.merged          # groups of original layers sharing one layer
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from explorer.core.backbone import run_backbone
from explorer.apply.calibration import find_calibration
from explorer.core.errors import ExplorerError, LayerError
from explorer.core.gather import Gather, Sums, View
from explorer.core.model import LoadedModel
from explorer.measure.measures import measure_param, most_similar, similarity
from explorer.core.params import Param
from explorer.apply.fitted import record as record_fitted
from explorer.apply.recipe import register_op
from explorer.core.variant import Variant
from explorer.plan.fitting import capture_block, fit_module
from explorer.plan.registry import Method, Plan, PlanContext, register

_PARTS = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down")


def layer_parts(lm: LoadedModel, layer: nn.Module) -> dict[str, nn.Module]:
    """The projections and the two pre-norms of a Llama-style layer; ExplorerError otherwise."""
    arch = lm.arch
    why = None
    parts = {k: arch.part(layer, getattr(arch, k)) for k in _PARTS}
    if arch.is_moe:
        why = (f"the {arch.family} model's layers hold a mixture of experts, whose channels "
               "CoMe cannot concatenate")
    elif not arch.llama_style:
        why = f"the {arch.family} family's layers are not pre-norm Llama-style layers"
    elif not all(isinstance(m, nn.Linear) for m in parts.values()):
        why = f"the {arch.family} family has no separate q/k/v/o and gate/up/down projections"
    else:
        parts["norm_attn"], parts["norm_mlp"] = (arch.part(layer, n) for n in arch.norms)
        for key in ("norm_attn", "norm_mlp"):
            w = getattr(parts[key], "weight", None)
            if w is None or "RMSNorm" not in type(parts[key]).__name__ or w.ndim != 1:
                why = "its layers have no weighted pre-RMSNorm to fold into the projections"
        paths = [getattr(arch, k) for k in _PARTS] + list(arch.norms)
        extra = [n for n, _ in layer.named_parameters()
                 if not any(n == p or n.startswith(p + ".") for p in paths)]
        if extra and why is None:
            why = f"its layers have parameters CoMe cannot share between two layers ({extra[0]})"
    if why:
        raise ExplorerError(f"method 'come' cannot merge {lm.config.model_type} layers: {why}. "
                            "Use mka, laco or streamline for this model.")
    return parts


def head_layout(lm: LoadedModel, parts: dict) -> tuple[int, int, int]:
    """(num query heads, num KV heads, head dim)."""
    cfg = lm.config
    nh = cfg.num_attention_heads
    nkv = getattr(cfg, "num_key_value_heads", None) or nh
    return nh, nkv, parts["attn_q"].out_features // nh


def sensitivities(lm: LoadedModel, v: Variant, ids: torch.Tensor, slots: list[int],
                  skip_first: bool = True) -> list[dict[str, torch.Tensor]]:
    """Per slot: {"groups": (nkv,) KV-group scores, "channels": (I,) FFN channel scores}.

    One pass of the windows that stops after the last of `slots`; per-layer accumulators at the
    slots' output projections sum the squares of their inputs over tokens.
    """
    first = 1 if skip_first else 0
    parts = [layer_parts(lm, v.layer(s)) for s in slots]
    arch = lm.arch

    def reduce(view: View, acc: Sums) -> None:     # view.parts: (b, T', D) projection inputs
        for short in ("o", "down"):
            acc.add(short, view.parts[short].float().pow(2).sum(dim=(0, 1)))        # (D,)

    # per-layer accumulators, no hook: the pass may run beside any other (explorer/core/gather.py)
    gathers = [Gather(s, reduce, parts={"o": arch.attn_o, "down": arch.mlp_down},
                      inputs=("o", "down"), first=first) for s in slots]
    for _ in run_backbone(lm, ids, variant=v, stop=max(slots) + 1, label="CoMe sensitivity",
                          gather=gathers):
        pass
    sq = {(k, short): g.sums[short].float() for k, g in enumerate(gathers)
          for short in ("o", "down")}
    out = []
    for k, s in enumerate(slots):
        p = parts[k] if lm.weights is None else layer_parts(lm, v.loaded(s))   # weights present
        nh, nkv, hd = head_layout(lm, p)
        wo = p["attn_o"].weight.float()                                # (H, nh*hd)
        head_act = sq[(k, "o")].view(nh, hd).sum(1).sqrt()             # (nh,)
        head_w = wo.pow(2).view(wo.shape[0], nh, hd).sum(dim=(0, 2)).sqrt()   # (nh,)
        groups = (head_act * head_w).view(nkv, nh // nkv).sum(1)       # (nkv,)
        wd = p["mlp_down"].weight.float()                              # (H, I)
        chans = sq[(k, "down")].sqrt() * wd.norm(dim=0)                # (I,)
        out.append({"groups": groups.cpu(), "channels": chans.cpu()})
    return out


def top_split(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[list[int], list[int]]:
    """The k highest scores of cat(a, b), as sorted index lists into a and into b."""
    allv = torch.cat([a, b]).double()
    order = sorted(range(allv.numel()), key=lambda i: (-float(allv[i]), i))[:k]
    n = a.numel()
    return sorted(i for i in order if i < n), sorted(i - n for i in order if i >= n)


@torch.no_grad()
def concat_merge(lm: LoadedModel, first: nn.Module, second: nn.Module,
                 groups: tuple[list[int], list[int]],
                 channels: tuple[list[int], list[int]]) -> nn.Module:
    """One layer holding the given KV groups and FFN channels of `first` and `second`.

    groups/channels: kept indices of each layer; their counts must add up to one layer's width.
    """
    pa, pb = layer_parts(lm, first), layer_parts(lm, second)
    nh, nkv, hd = head_layout(lm, pa)
    G = nh // nkv
    inter = pa["mlp_down"].in_features
    if len(groups[0]) + len(groups[1]) != nkv or len(channels[0]) + len(channels[1]) != inter:
        raise LayerError(f"come: keep exactly {nkv} KV groups and {inter} channels in total")
    for idx, hi in ((groups[0], nkv), (groups[1], nkv), (channels[0], inter), (channels[1], inter)):
        if any(not isinstance(i, int) or not 0 <= i < hi for i in idx) or len(set(idx)) != len(idx):
            raise LayerError(f"come: kept indices must be distinct integers in 0..{hi - 1}")
    out = copy.deepcopy(first)
    po = layer_parts(lm, out)

    def q_rows(gs):   # query rows of the heads in these KV groups, group by group
        heads = [h for g in gs for h in range(g * G, (g + 1) * G)]
        return [r for h in heads for r in range(h * hd, (h + 1) * hd)]

    def kv_rows(gs):
        return [r for g in gs for r in range(g * hd, (g + 1) * hd)]

    def fold_rows(key, rows, norm):      # rows of W diag(g): (len(rows), H) per layer, concatenated
        ws, bs = [], []
        for p, r in ((pa, rows[0]), (pb, rows[1])):
            lin, g = p[key], p[norm].weight
            ws.append(lin.weight[r].float() * g.float()[None, :])
            if lin.bias is not None:
                bs.append(lin.bias[r].float())
        po[key].weight.copy_(torch.cat(ws).to(po[key].weight.dtype))
        if po[key].bias is not None:
            po[key].bias.copy_(torch.cat(bs).to(po[key].bias.dtype))

    def cat_cols(key, cols):             # output projection: columns of both, biases add
        w = torch.cat([pa[key].weight[:, cols[0]].float(), pb[key].weight[:, cols[1]].float()], 1)
        po[key].weight.copy_(w.to(po[key].weight.dtype))
        if po[key].bias is not None:
            po[key].bias.copy_((pa[key].bias.float() + pb[key].bias.float()).to(po[key].bias.dtype))

    qr = (q_rows(groups[0]), q_rows(groups[1]))
    kvr = (kv_rows(groups[0]), kv_rows(groups[1]))
    fold_rows("attn_q", qr, "norm_attn")
    fold_rows("attn_k", kvr, "norm_attn")
    fold_rows("attn_v", kvr, "norm_attn")
    cat_cols("attn_o", qr)
    fold_rows("mlp_gate", channels, "norm_mlp")
    fold_rows("mlp_up", channels, "norm_mlp")
    cat_cols("mlp_down", channels)
    po["norm_attn"].weight.fill_(1.0)
    po["norm_mlp"].weight.fill_(1.0)
    return out


def recover(ctx: PlanContext, before: Variant, slot: int, module: nn.Module, steps: int,
            lr: float) -> None:
    """Layer-wise distillation: train `module` towards the output of slots (slot, slot+1) of
    `before` (the variant just before this merge) on the calibration windows."""
    pairs = capture_block(ctx.lm, before, ctx.input_ids, slot, slot + 2)
    fit_module(module, pairs, steps=steps, lr=lr, label="come recovery")


def merge_pair(ctx: PlanContext, v: Variant, lo: int, params: dict) -> tuple[Variant, str]:
    """Merge slots lo, lo+1 of `v` by CoMe; returns the new variant and the label."""
    a, b = v.loaded(lo), v.loaded(lo + 1)
    pa = layer_parts(ctx.lm, a)
    _, nkv, _ = head_layout(ctx.lm, pa)
    inter = pa["mlp_down"].in_features
    sa, sb = sensitivities(ctx.lm, v, ctx.input_ids, [lo, lo + 1])
    groups = top_split(sa["groups"], sb["groups"], nkv)
    chans = top_split(sa["channels"], sb["channels"], inter)
    module = concat_merge(ctx.lm, a, b, groups, chans)
    steps = int(params["recover_steps"])
    if steps > 0:
        recover(ctx, v, lo, module, steps, float(params["recover_lr"]))
    label = (f"come({v.layer_labels()[lo]}+{v.layer_labels()[lo + 1]}; heads "
             f"{len(groups[0])}:{len(groups[1])}, channels {len(chans[0])}:{len(chans[1])})")
    op = {"op": "come", "layers": [lo, lo + 1], "summary": label,
          "groups": [groups[0], groups[1]], "channels": [chans[0], chans[1]],
          "recover_steps": steps, "recover_lr": float(params["recover_lr"])}
    if steps > 0:
        op["calibration"] = ctx.calibration_ref()
    after = v.replace([lo, lo + 1], module, label, step=op)
    record_fitted(v, after)
    return after, label


@register
class CoMe(Method):
    name = "come"
    title = "CoMe (concatenation merge by sensitivity)"
    paper = "CoMe, arXiv 2510.15304 (our reading; official code unavailable)"
    description = ("Fuses two neighbouring layers into one by keeping the most important half of "
                   "their combined parts: each attention head group and each feed-forward channel "
                   "is scored by how strongly it fires on calibration text times the size of its "
                   "output weights, and the top scorers of both layers are placed side by side in "
                   "a single layer of the usual size, so the model stays a standard model. Merges "
                   "repeat one pair at a time. The paper prunes 30% of LLaMA-2-7B while keeping 83% "
                   "of its average accuracy. Our implementation is a reading of the paper.")
    params = (
        measure_param("cosine", "how the pair is chosen: cell (l, l+2) on the current variant, "
                      "how little the pair changes the residual stream"),
        Param("recover_steps", int, 0, "layer-wise distillation steps after each merge (0: off)",
              min=0,
              label="Recovery steps"),
        Param("recover_lr", float, 1e-4, "Adam learning rate for recovery", min=0,
              label="Recovery learning rate"),
    )
    examples = ({}, {"recover_steps": 2})

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        layer_parts(ctx.lm, Variant.identity(ctx.lm).layer(0))      # refuse early
        v = Variant.identity(ctx.lm)
        scores: dict[str, list[float]] = {}
        for step in range(remove):
            ctx.report(step / remove, "probing", step=step, total=remove, unit="merges")
            sim = similarity(ctx.probe(v), params["measure"]).float().cpu()   # (n+1, n+1)
            n = v.num_layers
            cells = [float(sim[i, i + 2]) for i in range(n - 1)]
            if step == 0:
                scores[f"{params['measure']}(x_l, x_l+2)"] = cells
            lo = most_similar(cells, params["measure"])[0]
            ctx.report((step + 0.5) / remove, f"merging slots {lo}, {lo + 1}", step=step,
                       total=remove, unit="merges")
            v, _ = merge_pair(ctx, v, lo, params)
        return Plan(self.name, params, v, scores,
                    f"CoMe made {remove} concatenation merge(s) of adjacent layers"
                    f"{' with recovery' if params['recover_steps'] else ''}: "
                    f"{', '.join('+'.join(map(str, g)) for g in v.merged())}.")


@register_op("come", fitted=lambda op: isinstance(op.get("recover_steps"), int)
             and op["recover_steps"] > 0)
def _replay_come(v: Variant, op: dict, lm: LoadedModel) -> Variant:
    layers, groups, chans = op.get("layers"), op.get("groups"), op.get("channels")
    if not (isinstance(layers, list) and len(layers) == 2 and layers[1] == layers[0] + 1
            and isinstance(groups, list) and len(groups) == 2 and isinstance(chans, list)
            and len(chans) == 2):
        raise LayerError("come op needs 'layers' (two adjacent), 'groups' and 'channels'")
    lo = v.check_index(layers[0])
    v.check_index(layers[1])
    module = concat_merge(lm, v.loaded(lo), v.loaded(lo + 1), (groups[0], groups[1]),
                          (chans[0], chans[1]))
    steps = int(op.get("recover_steps", 0))
    if steps > 0:
        ref = op["calibration"]
        ctx = PlanContext(lm, find_calibration(ref), seqlen=int(ref["seqlen"]),
                          num_samples=int(ref["num_samples"]), seed=int(ref["seed"]),
                          calibration_source=ref.get("source"))
        recover(ctx, v, lo, module, steps, float(op["recover_lr"]))
    return v.replace([lo, lo + 1], module, op.get("summary", "come"), step=op)
