"""`layerwise`: train the layers next to each cut to reproduce the dense model's residual stream on
the far side of the cut, from cached states.

For each cut, the trained slots are the `before` slots ending with the cut's own layer and the
`after` slots following it (overlapping ranges of neighbouring cuts are trained as one group).
A group of slots s..e is fed the variant's state at boundary s (computed once) and trained so that
its output matches the dense state at the boundary that slot e+1 stands for, by mean squared error
normalised by the target's variance, each window's first position left out:

    loss = mean_t ||f(x_s[t]) - x_dense[t]||^2 / mean_t ||x_dense[t] - mean(x_dense)||^2

or, with `loss="channel"`, each channel's squared error divided by that channel's own variance
(mean over channels), so that a few channels with massive activations (Gemma 3's residual
stream) do not outweigh all the others; or `loss="cosine"`, mean_t (1 - cos(f(x_s[t]),
x_dense[t])).

A step costs only the trained layers (each called alone, with the rotary embeddings and mask the
model passes it), so thousands of steps fit in CPU minutes. By default the cuts are first healed
in closed form (ReplaceMe), and the training starts from there (docs/healing.md).

Example:
    >>> r = heal(plan.variant, "layerwise", seconds=120)
"""

from __future__ import annotations

import torch

from explorer.core.backbone import run_backbone
from explorer.core.errors import ParamError
from explorer.core.params import Param
from explorer.core.passes import LayerCall
from explorer.core.ranks import step_share
from explorer.core.variant import Variant
from explorer.heal.closed_form import CLOSED_FORM_DEFAULTS, apply_closed_form, fit_notes
from explorer.heal.closed_form import needed_boundaries as cf_boundaries
from explorer.heal.cuts import dense_boundary, find_cuts, trainable_copy, with_slot
from explorer.heal.data import shared_prefix
from explorer.heal.registry import (COMMON_PARAMS, HealContext, HealMode, HealOutcome,
                                    register_mode, with_defaults)
from explorer.heal.train import KEEP_BEST_PARAMS, train



def trained_groups(v: Variant, before: int, after: int) -> list[tuple[int, int]]:
    """Slot ranges (s, e), inclusive, trained around the cuts; overlapping ranges joined."""
    spans = []
    for cut in find_cuts(v):
        s = max(0, cut.slot - before + 1)
        e = min(v.num_layers - 1, cut.slot + after)
        if e >= s:
            spans.append([s, e])
    groups: list[list[int]] = []
    for s, e in sorted(spans):
        if groups and s <= groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], e)
        else:
            groups.append([s, e])
    return [(s, e) for s, e in groups]


def needed_boundaries(v: Variant, before: int, after: int) -> set[int]:
    """The dense boundaries the groups of `v` read: their inputs' shared prefix and targets."""
    prefix = shared_prefix(v)
    return {b for s, e in trained_groups(v, before, after)
            for b in (min(prefix, s), dense_boundary(v, e + 1))} - {0}


def slot_call(ctx: HealContext, v: Variant, slot: int, x: torch.Tensor, rows: slice) -> LayerCall:
    """How the model calls slot `slot` for a batch shaped like x (b, T, H): rotary, mask."""
    start_states = x if slot > 0 else None
    for b in run_backbone(ctx.lm, ctx.data.ids[rows], variant=v, start=slot, stop=slot,
                          start_states=start_states, capture_call=True,
                          batch_size=rows.stop - rows.start):
        return b.call
    raise RuntimeError("no batch")   # pragma: no cover - ids are never empty


class Group:
    """One trained range of slots: its input states, dense target, modules and layer calls."""

    def __init__(self, ctx: HealContext, v: Variant, s: int, e: int, batch: int):
        self.s, self.e = s, e
        target = dense_boundary(v, e + 1)
        self.d = ctx.data.dense_states(sorted({min(shared_prefix(v), s), target} - {0}),
                                        ctx.progress)[target]
        self.x = ctx.data.states(v, s, ctx.progress)                        # (W, T, H) inputs
        first = ctx.first
        dt = self.d[:, first:].float()
        var = (dt - dt.mean(dim=(0, 1))).pow(2).mean(dim=(0, 1))                 # (H,)
        self.scale = float(var.sum())
        # per-channel weights of the "channel" loss: 1 / variance, floored at 1e-6 of the mean
        self.weight = 1.0 / (var.clamp_min(1e-6 * float(var.mean())) * var.numel())
        self.modules = [trainable_copy(v.loaded(j), lambda name: True) for j in range(s, e + 1)]
        rows = slice(0, batch)
        self.calls = [slot_call(ctx, v, j, self.x[rows], rows) for j in range(s, e + 1)]

    def loss(self, idx: torch.Tensor, first: int, device: torch.device,
             kind: str = "mse") -> torch.Tensor:
        h = self.x[idx].to(device)
        for call, module in zip(self.calls, self.modules):
            h = call.run(module, h)
        d = self.d[idx, first:].to(device).float()
        return stream_loss(h[:, first:].float(), d, kind, self.scale, self.weight.to(device))


def stream_loss(y: torch.Tensor, d: torch.Tensor, kind: str, scale: float,
                weight: torch.Tensor) -> torch.Tensor:
    """The layer-wise loss of outputs y against dense states d, both (b, T, H): "mse" (squared
    error over the total variance `scale`), "channel" (squared error weighted per channel by
    `weight` (H,), 1 / (H var_c)) or "cosine" (mean 1 - cosine similarity)."""
    if kind == "cosine":
        return (1 - torch.nn.functional.cosine_similarity(y, d, dim=-1)).mean()
    if kind == "channel":
        return ((y - d).pow(2) * weight).sum(-1).mean()
    return (y - d).pow(2).sum(-1).mean() / scale


def batches(n: int, batch: int, seed: int):
    """Window indices, `batch` at a time, reshuffled every epoch (seeded)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    pos = 0
    while True:
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=g), 0
        yield order[pos:pos + batch]
        pos += batch


def train_groups(ctx: HealContext, v: Variant, params: dict, label: str,
                 hard_deadline: bool = True) -> tuple[Variant, int, int, list[dict]]:
    """Train every group of slots around the cuts in one loop (one schedule). The cuts are those
    of the variant given to `heal` (ctx.variant): `v` may already hold healed layers (the closed
    form's), which are not cuts of their own."""
    groups = [Group(ctx, v, s, e, params["batch"])
              for s, e in trained_groups(ctx.variant, params["before"], params["after"])]
    tensors = [p for g in groups for m in g.modules for p in m.parameters()]
    order = batches(ctx.data.num_windows, params["batch"], ctx.seed)
    device = ctx.lm.device

    def current() -> Variant:
        out = v
        for g in groups:
            for j, m in zip(range(g.s, g.e + 1), g.modules):
                out = with_slot(out, j, m, "lw")
        return out

    def loss_at(step: int) -> torch.Tensor:
        idx = next(order)                  # the step's windows, the same on every rank
        mine, share = step_share(idx)      # ranks: this one's share (all in one process)
        return sum(g.loss(mine, ctx.first, device, params.get("loss", "mse"))
                   for g in groups) / len(groups) * share

    with torch.enable_grad():
        done, total, history = train(ctx, tensors, loss_at, lr=params["lr"], label=label,
                                     sharded=True,
                                     current=current, schedule_steps=params["schedule_steps"],
                                     hard_deadline=hard_deadline)
    return current(), done, total, history


@register_mode
class Layerwise(HealMode):
    name = "layerwise"
    title = "Layer-wise distillation at the cuts"
    paper = ("as in LLM-Streamline (arXiv 2403.19135) and CoMe's recovery (arXiv 2510.15304), "
             "starting from ReplaceMe's closed form (arXiv 2505.02819)")
    description = ("Trains the layers next to each cut so that their output matches the dense "
                   "model's residual stream after the removed layers, from states computed once: "
                   "each step costs only the trained layers. Starts from the closed-form map by "
                   "default.")
    trains = True
    default_steps = 400
    # 512 x 128 calibration tokens: fewer windows overfit within a few hundred steps (docs/healing.md)
    params = with_defaults(COMMON_PARAMS, windows=512) + (
        Param("init", str, "closed-form", "start from the closed-form map, or from the layers "
              "as they are", choices=("closed-form", "none"),
              label="Start from", choice_labels=(
                ('closed-form', 'the closed-form map'),
                ('none', 'the layers as they are'),
              )),
        Param("before", int, 3, "slots trained up to and including each cut's layer", min=0,
              max=1000,
              label="Layers trained up to each cut"),
        Param("after", int, 3, "slots trained after each cut", min=0, max=1000,
              label="Layers trained after each cut"),
        Param("lr", float, 1.5e-3, "Adam learning rate (cosine-decayed; twice this diverged "
              "in docs/healing.md's runs)", min=0, max=1,
              label="Learning rate"),
        Param("batch", int, 4, "windows per step", min=1, max=4096,
              label="Windows per step"),
        Param("loss", str, "mse", "mse: squared error over the stream's total variance; "
              "channel: each channel's squared error over its own variance (massive "
              "activations do not dominate); cosine: 1 - cosine similarity",
              choices=("mse", "channel", "cosine"), label="Loss",
              choice_labels=(("mse", "squared error"), ("channel", "per-channel normalised"),
                             ("cosine", "cosine"))),
        Param("schedule_steps", int, None, "length of the learning-rate schedule (default: the "
              "step budget, or estimated from the first steps under a time budget)", min=1,
              max=10_000_000, optional=True,
              label="Schedule length (steps)"),
    ) + KEEP_BEST_PARAMS
    examples = ({}, {"init": "none"}, {"loss": "channel"})

    def run(self, ctx: HealContext, params: dict) -> HealOutcome:
        if params["before"] + params["after"] == 0:
            raise ParamError("heal mode 'layerwise': before + after must be at least 1 (no "
                             "layer to train)")
        v, notes = ctx.variant, ""
        fits = []
        need = needed_boundaries(v, params["before"], params["after"])
        if params["init"] == "closed-form":
            need |= cf_boundaries(v)
        ctx.data.dense_states(sorted(need), ctx.progress)          # one dense pass for all
        if params["init"] == "closed-form":
            v, fits = apply_closed_form(ctx, v, CLOSED_FORM_DEFAULTS, "cf")
            notes = fit_notes(fits) + ". "
        v, done, total, history = train_groups(ctx, v, params, "layerwise")
        notes += f"{done} steps, final loss {history[-1]['loss']:.4g}" if history else ""
        return HealOutcome(v, steps=done, seconds=history[-1]["seconds"] if history else 0.0,
                           history=history, details={"fits": fits}, notes=notes,
                           replay={"schedule_steps": total})
