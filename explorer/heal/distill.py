"""`distill`: end-to-end distillation, KL divergence to the dense model's next-token distribution.

The dense model's top-k next-token log-probabilities on the calibration windows are computed once
(`HealData.dense_topk`); the loss at each position is the KL divergence between the dense and the
healed model's distributions coarsened to those k tokens plus one bin for the rest (a true KL
between the coarsened distributions; exact when the dense tail is empty; docs/healing.md).

What is trained (`train`):
  - "layers": full copies of the layers next to each cut (`before`/`after`, as in layerwise);
  - "norms": the norm weights of the trained slots (copies own nothing else);
  - "lora": low-rank adapters W + B A (rank `rank`, B starts at zero) on every linear projection
    of the trained slots, merged into the weights at the end, so the result is a plain model.
`span` = "cuts" trains the slots around the cuts, "all" every slot. The slots in front of the first
trained one do not change, so their output is computed once and each step runs only from there to
the head.

By default the cuts are first healed by `init` ("layerwise": closed form, then a short layer-wise
fit using `init_share` of the budget; "closed-form"; or "none").

Example:
    >>> r = heal(plan.variant, "distill", seconds=240, progress=print)
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from explorer.core.backbone import hooks, run_backbone
from explorer.core.errors import ParamError
from explorer.evaluate.nll import final_logits
from explorer.core.params import Param
from explorer.core.ranks import step_share
from explorer.core.new_layers import head_copy
from explorer.core.variant import Variant
from explorer.heal.closed_form import CLOSED_FORM_DEFAULTS, apply_closed_form, fit_notes
from explorer.heal.closed_form import needed_boundaries as cf_boundaries
from explorer.heal.cuts import trainable_copy, with_slot
from explorer.heal.data import shared_prefix, topk_kl
from explorer.heal.layerwise import Layerwise, batches, train_groups, trained_groups
from explorer.heal.layerwise import needed_boundaries as lw_boundaries
from explorer.heal.registry import (COMMON_PARAMS, HealContext, HealMode, HealOutcome,
                                    register_mode, with_defaults)
from explorer.heal.train import KEEP_BEST_PARAMS, Backward, train

DEFAULT_LR_BY_PART = {"layers": 5e-5, "norms": 1e-3, "lora": 5e-4}
HEAD_ELEMENTS = 1 << 25      # logits per chunk of the head (128 MB in float32)
LAYERWISE_DEFAULTS = {p.name: p.default for p in Layerwise.params}


class LoRA:
    """Low-rank adapters on the linear projections of some modules, as forward hooks:
    y = x W^T (+ b) + (x A^T) B^T, A (r, in), B (out, r); `merge` folds B A into W."""

    def __init__(self, modules: list[nn.Module], rank: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.linears = [m for mod in modules for m in mod.modules() if isinstance(m, nn.Linear)]
        self.ab: list[tuple[torch.Tensor, torch.Tensor]] = []
        for lin in self.linears:
            w = lin.weight
            a = torch.randn(rank, lin.in_features, generator=g) / math.sqrt(lin.in_features)
            self.ab.append((a.to(w), torch.zeros(lin.out_features, rank).to(w)))

    def tensors(self) -> list[torch.Tensor]:
        return [t for pair in self.ab for t in pair]

    def hooked(self):
        def make(a, b):
            return lambda m, args, out: out + (args[0] @ a.T) @ b.T
        return hooks(*[(lin, make(a, b)) for lin, (a, b) in zip(self.linears, self.ab)])

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + B A in every adapted projection (their copies own their weights)."""
        for lin, (a, b) in zip(self.linears, self.ab):
            lin.weight.copy_((lin.weight.double() + b.double() @ a.double()).to(lin.weight.dtype))


def head_kl(lm, hidden: torch.Tensor, idx: torch.Tensor, ref_logp: torch.Tensor,
            head: nn.Module | None = None) -> Backward:
    """The mean top-k KL of the final-norm states `hidden` (b, T, H) against the dense targets
    idx, ref_logp (b, T, k), and its gradient at `hidden`: the vocabulary head runs on chunks of
    positions, so the (positions x vocabulary) logits never exist whole (Gemma's 262k
    vocabulary x 512 positions would be 0.5 GB, twice with the log-softmax).
    head: the variant's head (None: the loaded model's); when its parameters require grad (a
    trained head slot), their gradient comes back in `Backward.known`."""
    H, k = hidden.shape[-1], idx.shape[-1]
    flat = hidden.detach().reshape(-1, H)
    n = flat.shape[0]
    idx, ref_logp = idx.reshape(n, k).to(flat.device), ref_logp.reshape(n, k).to(flat.device)

    def loss_of(logits: torch.Tensor, rows: slice) -> torch.Tensor:
        return topk_kl(logits, idx[rows], ref_logp[rows], reduction="sum") / n

    total, grad, known = _chunked_head(lm, flat, head, loss_of)
    return Backward(total, hidden, grad.view_as(hidden), known)


def head_ce(lm, hidden: torch.Tensor, ids: torch.Tensor,
            head: nn.Module | None = None) -> Backward:
    """The mean next-token cross-entropy of the final-norm states `hidden` (b, T, H) on the
    windows `ids` (b, T) (position t predicts t+1), and its gradient at `hidden` (and at a
    trained head's parameters), the head run on chunks of positions as in `head_kl`."""
    H = hidden.shape[-1]
    flat = hidden.detach()[:, :-1].reshape(-1, H)                          # (b*(T-1), H)
    target = ids[:, 1:].reshape(-1).to(flat.device)
    n = flat.shape[0]

    def loss_of(logits: torch.Tensor, rows: slice) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.float(), target[rows],
                                                 reduction="sum") / n

    total, g_flat, known = _chunked_head(lm, flat, head, loss_of)
    grad = torch.zeros_like(hidden.detach())
    grad[:, :-1] = g_flat.view(hidden.shape[0], -1, H)
    return Backward(total, hidden, grad, known)


def _chunked_head(lm, flat: torch.Tensor, head: nn.Module | None, loss_of
                  ) -> tuple[float, torch.Tensor, tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
    """Run the head and `loss_of(logits, rows)` on chunks of the positions `flat` (n, H):
    (the summed loss, its gradient at `flat` (n, H), and ((p, d loss / d p), ...) for the head's
    parameters that require grad, summed over the chunks)."""
    n = flat.shape[0]
    chunk = max(16, HEAD_ELEMENTS // lm.config.vocab_size)
    trained = [p for p in head.parameters() if p.requires_grad] if head is not None else []
    grad = torch.empty_like(flat)
    sums = [torch.zeros_like(p) for p in trained]      # (V, H) for the weight: 113 MB on SmolLM2
    total = 0.0
    with torch.enable_grad():
        for s in range(0, n, chunk):
            rows = slice(s, s + chunk)
            h = flat[rows].requires_grad_(True)
            loss = loss_of(final_logits(lm, h, head=head), rows)
            g = torch.autograd.grad(loss, [h] + trained)
            grad[rows] = g[0]
            for acc, gp in zip(sums, g[1:]):
                acc += gp
            total += float(loss.detach())
    return total, grad, tuple(zip(trained, sums))


def scaled(loss: Backward, share: float) -> Backward:
    """A rank's mean loss over its windows as its share of the step's mean (`share`: its
    fraction of the step's tokens, `explorer.core.ranks.step_share`); 1.0 leaves it as it is."""
    if share == 1.0:
        return loss
    return Backward(loss.value * share, loss.output, loss.grad * share,
                    tuple((t, g * share) for t, g in loss.known))


def trained_slots(v: Variant, params: dict) -> list[int]:
    if params["span"] == "all":
        return list(range(v.num_layers))
    if params["span"] == "tail":                   # tail-finetune: the last k slots
        return list(range(v.num_layers - params["k"], v.num_layers))
    return [j for s, e in trained_groups(v, params["before"], params["after"])
            for j in range(s, e + 1)]


def owns(train_what: str):
    """Which parameters of a slot the copy owns (the rest stay shared with the original)."""
    if train_what == "norms":
        return lambda name: "norm" in name
    if train_what == "lora":   # the adapted projections get merged into: own them
        return lambda name: "norm" not in name
    return lambda name: True


@register_mode
class Distill(HealMode):
    name = "distill"
    title = "End-to-end distillation (KL to the dense model)"
    paper = ("logit distillation as in Shortened LLaMA (arXiv 2402.02834) and Gromov et al. "
             "(arXiv 2403.17887, QLoRA healing); LoRA: arXiv 2106.09685")
    description = ("Trains the layers next to the cuts (or their norms, or low-rank adapters "
                   "merged back before export) so that the model's next-token distribution "
                   "matches the dense model's on calibration text (KL over the dense top-k "
                   "tokens). Starts from a closed-form map and a short layer-wise fit by "
                   "default; shows the loss and a held-out perplexity as it goes.")
    trains = True
    default_steps = 200
    params = with_defaults(COMMON_PARAMS, windows=256) + (
        Param("init", str, "layerwise", "heal the cuts first: closed form then a short "
              "layer-wise fit, closed form only, or nothing",
              choices=("layerwise", "closed-form", "none"),
              label="Start from", choice_labels=(
                ('layerwise', 'a layer-wise fit'),
                ('closed-form', 'the closed-form map'),
                ('none', 'the layers as they are'),
              )),
        Param("init_share", float, 0.3, "share of the budget the layer-wise start uses", min=0,
              max=0.9,
              label="Budget share of the start"),
        Param("init_steps", int, None, "steps of the layer-wise start (default: init_share of "
              "the budget)", min=1, max=10_000_000, optional=True,
              label="Steps of the start"),
        Param("init_loss", str, "mse", "the layer-wise start's loss (the layer-wise mode's `loss`: "
              "channel suits a stream with massive activations, as Gemma 3's)",
              choices=("mse", "channel", "cosine"), label="Loss of the start"),
        Param("train", str, "layers", "what is trained: whole layers, norm weights, or low-rank "
              "adapters merged back at the end", choices=("layers", "norms", "lora"),
              label="What is trained", choice_labels=(
                ('layers', 'whole layers'),
                ('norms', 'norm weights'),
                ('lora', 'low-rank adapters (LoRA)'),
              )),
        Param("span", str, "cuts", "which slots: those around the cuts, or all",
              choices=("cuts", "all"),
              label="Which layers", choice_labels=(('cuts', 'around the cuts'), ('all', 'all'))),
        Param("before", int, 2, "slots trained up to and including each cut's layer (span "
              "cuts)", min=0, max=1000,
              label="Layers trained up to each cut"),
        Param("after", int, 2, "slots trained after each cut (span cuts)", min=0, max=1000,
              label="Layers trained after each cut"),
        Param("rank", int, 8, "rank of the low-rank adapters (train lora)", min=1, max=4096,
              label="LoRA rank"),
        Param("top_k", int, 64, "dense next-token log-probabilities kept per position", min=1,
              max=4096,
              label="Log-probabilities kept (top-k)"),
        Param("lr", float, None, "Adam learning rate (default: 5e-5 layers, 1e-3 norms, 5e-4 "
              "lora)", min=0, max=1, optional=True,
              label="Learning rate"),
        Param("batch", int, 4, "windows per step", min=1, max=4096,
              label="Windows per step"),
        Param("schedule_steps", int, None, "length of the learning-rate schedule (default: the "
              "step budget, or estimated from the first steps under a time budget)", min=1,
              max=10_000_000, optional=True,
              label="Schedule length (steps)"),
    ) + KEEP_BEST_PARAMS
    examples = ({"init": "none"}, {"init": "none", "train": "lora", "rank": 2},
                {"train": "norms", "span": "all"})

    def run(self, ctx: HealContext, params: dict) -> HealOutcome:
        if params["span"] == "cuts" and params["before"] + params["after"] == 0:
            raise ParamError("heal mode 'distill': before + after must be at least 1 (no "
                             "layer to train)")
        v, notes, details, replay = ctx.variant, "", {}, {}
        steps, seconds = ctx.steps, ctx.seconds
        # the distillation's inputs, and the last boundary (the top-k targets start there)
        need = {min(shared_prefix(v), min(trained_slots(v, params))), v.lm.num_layers}
        if params["init"] != "none":
            need |= cf_boundaries(v)
        if params["init"] == "layerwise":
            need |= lw_boundaries(v, LAYERWISE_DEFAULTS["before"], LAYERWISE_DEFAULTS["after"])
        ctx.data.dense_states(sorted(need - {0}), ctx.progress)    # one dense pass for all
        if params["init"] != "none":
            v, fits = apply_closed_form(ctx, v, CLOSED_FORM_DEFAULTS, "cf")
            details["fits"] = fits
            notes = fit_notes(fits) + ". "
        if params["init"] == "layerwise" and (params["init_share"] > 0 or params["init_steps"]):
            v, done, used = self.layerwise_start(ctx, v, params)
            replay["init_steps"] = details["init_steps"] = done
            notes += f"layer-wise start: {done} steps. "
            steps = None if steps is None else max(1, steps - done) if \
                params["init_steps"] is None else steps
            seconds = None if seconds is None else max(1.0, seconds - used)
        v, done, total, history = self.distill(ctx, v, params, steps, seconds)
        replay["schedule_steps"] = total
        notes += f"distilled {done} steps, final KL {history[-1]['loss']:.4g}" if history else ""
        return HealOutcome(v, steps=done, seconds=history[-1]["seconds"] if history else 0.0,
                           history=history, details=details, notes=notes, replay=replay)

    def layerwise_start(self, ctx: HealContext, v: Variant, params: dict
                        ) -> tuple[Variant, int, float]:
        """The short layer-wise fit the distillation starts from: `init_steps` steps, else
        `init_share` of the budget (whole steps: its schedule is never cut short, so a replay
        needs only the count). Returns (variant, steps done, seconds used)."""
        share, fixed = params["init_share"], params["init_steps"]
        steps = fixed or (None if ctx.steps is None else max(1, round(ctx.steps * share)))
        seconds = None if fixed or ctx.seconds is None else ctx.seconds * share
        # no keep-best choice inside the start: the distillation's own keep-best starts from it
        lw = {**LAYERWISE_DEFAULTS, "loss": params["init_loss"], "schedule_steps": None}
        sub = HealContext(ctx.lm, ctx.variant, ctx.data, {**ctx.params, **lw, "keep_best": False},
                          ctx.seed, steps, seconds, ctx.progress, ctx.held_out_ppl)
        v, done, _, hist = train_groups(sub, v, lw, "distill: layer-wise start",
                                        hard_deadline=False)
        ctx.held_out_ppl = sub.held_out_ppl
        return v, done, hist[-1]["seconds"] if hist else 0.0

    def distill(self, ctx: HealContext, v: Variant, params: dict, steps: int | None,
                seconds: float | None, label: str | None = None
                ) -> tuple[Variant, int, int, list[dict]]:
        lm, data = ctx.lm, ctx.data
        slots = trained_slots(ctx.variant, params)      # around the cuts heal was given
        what = params["train"]
        lr = params["lr"] if params["lr"] is not None else DEFAULT_LR_BY_PART[what]
        modules = {j: trainable_copy(v.loaded(j), owns(what)) for j in slots}
        if what == "layers":
            tensors = [p for m in modules.values() for p in m.parameters()]
        elif what == "norms":
            tensors = [p for m in modules.values() for n, p in m.named_parameters() if "norm" in n]
        else:
            lora = LoRA(list(modules.values()), params["rank"], ctx.seed)
            tensors = lora.tensors()
        cur = v
        for j, m in modules.items():
            cur = with_slot(cur, j, m, f"kd-{what}")
        more = []
        if params.get("head"):       # tail-finetune: a head slot of its own, trained too
            cur = cur.with_head(head_copy(v.head_module()))
            more.append((list(cur.head.parameters()), params["head_lr"]))
        head = cur.head_module()
        s0 = min(slots)
        x0 = data.states(v, s0, ctx.progress) if s0 > 0 else None     # slots before s0 stay
        ce = params.get("objective") == "ce"       # tail-finetune's next-token objective
        if not ce:
            top_idx, top_lp = data.dense_topk(params["top_k"], ctx.progress)
        order = batches(data.num_windows, params["batch"], ctx.seed + 1)

        def loss_at(step: int) -> Backward:
            idx, share = step_share(next(order))   # ranks: this one's windows of the step
            ids = data.ids[idx]
            for b in run_backbone(lm, ids, variant=cur, start=s0, final_norm=True, grad=True,
                                  start_states=x0[idx] if x0 is not None else None,
                                  batch_size=ids.shape[0]):
                if ce:
                    return scaled(head_ce(lm, b.hidden, ids, head), share)
                return scaled(head_kl(lm, b.hidden, top_idx[idx], top_lp[idx], head), share)
            raise RuntimeError("no batch")   # pragma: no cover

        sub = HealContext(lm, cur, data, ctx.params, ctx.seed, steps, seconds, ctx.progress,
                          ctx.held_out_ppl, stop_at=ctx.stop_at)
        with (lora.hooked() if what == "lora" else contextlib.nullcontext()), torch.enable_grad():
            done, total, history = train(sub, tensors, loss_at, lr=lr,
                                         label=label or f"distill ({what})", current=lambda: cur,
                                         schedule_steps=params["schedule_steps"], more=more,
                                         sharded=True)
        ctx.held_out_ppl = sub.held_out_ppl
        if what == "lora":
            lora.merge()
        return cur, done, total, history
