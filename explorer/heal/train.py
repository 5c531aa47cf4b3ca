"""The one training loop of the healing modes: Adam on chosen tensors, a step budget and/or a time
budget, a cosine learning-rate schedule that depends only on the step count (so a recorded run
replays exactly), keep-best, and progress reports with the loss and a held-out perplexity.

Gradients are taken with `torch.autograd.grad` with respect to the trained tensors only: nothing
is accumulated on any other parameter (the loaded model's included). Tensors may come in groups
with their own learning rate (`more`: tail-finetune's vocabulary head); each group's gradient is
clipped on its own, so adding a group leaves the others' steps as they were.

Under a time budget alone the schedule's length is unknown at the start: it is fixed after the
first few steps from their speed (`schedule_steps`, recorded with the healing), and the loop ends
at that step or at the deadline, whichever comes first.

Keep-best (`keep_best`, on by default): the held-out perplexity is measured at the start and
every `check_every` steps (by default the schedule length / CHECKS, fixed as soon as the length
is known; under a time budget also spaced out further when a check costs more than
1/MONITOR_RATIO of the steps between two checks: a few slow KL steps would otherwise spend most
of the budget on checks),
and at the end; the trained tensors of the best check are copied aside and put back
when the loop ends. The step they come from is what `train` returns, and what the recipe records:
a replay (`ctx.stop_at`) runs exactly that many steps of the same schedule and keeps them, with
no check and no choice, so it lands on the same weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from explorer.core.params import Param
from explorer.core.ranks import from_rank0, sum_tensors, world
from explorer.core.variant import Variant
from explorer.heal.data import held_out_ppl
from explorer.heal.registry import HealContext

PROBE_STEPS = 3            # steps timed before a time budget fixes the schedule's length
MONITOR_SECONDS = 20.0     # without keep-best: held-out perplexity at most this often (and at
MONITOR_RATIO = 9.0        # the end), and at most ~10% of the time (slow steps, busy machine)
CHECKS = 20                # keep-best: checks per schedule when check_every is not given

# The keep-best parameters every training mode declares (after its own).
KEEP_BEST_PARAMS: tuple[Param, ...] = (
    Param("keep_best", bool, True, "measure the held-out perplexity every check_every steps and "
          "keep the best state (the start of the training included)"),
    Param("check_every", int, None, "steps between keep-best checks (default: the schedule "
          "length / 20)", min=1, max=10_000_000, optional=True),
)


@dataclass
class Backward:
    """A loss whose gradient is already known at an intermediate tensor (the distillation's
    hidden states, its vocabulary head run in chunks): the rest of the backward pass starts there.
    """

    value: float                # the loss
    output: torch.Tensor        # a tensor of the graph, e.g. (b, T, H) hidden states
    grad: torch.Tensor          # d loss / d output, same shape
    # trained tensors after `output` (a trained vocabulary head) with their gradient, already
    # computed where the loss was
    known: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()


class KeepBest:
    """The best held-out perplexity seen so far, its step and a copy of the trained tensors."""

    def __init__(self, tensors: list[torch.Tensor], ppl: float):
        self.tensors = tensors
        self.ppl, self.step = ppl, 0
        self.saved = [t.detach().clone() for t in tensors]

    def offer(self, step: int, ppl: float) -> None:
        if ppl < self.ppl or (self.ppl != self.ppl and ppl == ppl):   # NaN never wins
            self.ppl, self.step = ppl, step
            for s, t in zip(self.saved, self.tensors):
                s.copy_(t.detach())

    @torch.no_grad()
    def restore(self) -> None:
        for s, t in zip(self.saved, self.tensors):
            t.copy_(s)


def train(ctx: HealContext, tensors: list[torch.Tensor],
          loss_at: Callable[[int], torch.Tensor | Backward],
          *, lr: float, label: str, current: Callable[[], Variant],
          schedule_steps: int | None = None, warmup: float = 0.05, hard_deadline: bool = True,
          more: Sequence[tuple[list[torch.Tensor], float]] = (), sharded: bool = False
          ) -> tuple[int, int, list[dict]]:
    """Minimise loss_at(step) over `tensors`; returns (steps kept, schedule length, history).

    loss_at(step): a scalar loss tensor, or a `Backward` (the gradient known part way).
    current(): the variant with the layers being trained in place, for the held-out perplexity.
    hard_deadline=False: under a time budget, run the whole estimated schedule even if it ends a
    little after the deadline (then steps done = schedule length, and a replay needs only that).
    With keep-best (ctx.params["keep_best"], not during a replay) the tensors end at the best
    check and the steps returned are that check's; history has every step run, the kept one
    marked "kept". ctx.stop_at (a replay) runs exactly that many steps and keeps them.
    more: further groups of tensors, each with its own peak learning rate (same schedule, its
    gradient clipped on its own); keep-best keeps and restores them with the rest.
    sharded: under ranks (`explorer.core.ranks`), loss_at(step) is this rank's share of the step's
    loss (its windows of the batch, weighted by their fraction): the gradients and the loss are
    added across ranks, so every rank takes the one-process step. Not sharded: every rank
    computes the whole step (the same result, no speed-up). Time budgets follow rank 0's clock.
    """
    budget_steps, seconds = ctx.steps, ctx.seconds
    replaying = ctx.stop_at is not None
    if replaying:
        budget_steps, seconds = ctx.stop_at, None
    total = schedule_steps or budget_steps
    every = ctx.params.get("check_every")
    groups = [(list(tensors), lr)] + [(list(ts), float(r)) for ts, r in more if ts]
    tensors = [t for ts, _ in groups for t in ts]
    for t in tensors:
        t.requires_grad_(True)
    opt = torch.optim.Adam([{"params": ts, "lr": r} for ts, r in groups], lr=lr)
    history: list[dict] = []
    t0 = time.perf_counter()
    last_monitor, monitor_cost = t0, 0.0
    best = None
    auto_every, checks_cost = False, 0.0
    if ctx.params.get("keep_best", True) and not replaying and budget_steps != 0:
        ppl = ctx.held_out_ppl = held_out_ppl(ctx.lm, current(), ctx.data.held_out)
        best = KeepBest(tensors, ppl)
    ppl = ctx.held_out_ppl
    step = 0
    try:
        while True:
            elapsed = from_rank0(time.perf_counter() - t0)      # ranks: rank 0's clock
            if total is None and step == PROBE_STEPS:
                total = max(step + 1, int(seconds * step / max(elapsed, 1e-6)))
            if total is not None and step >= total:
                break
            if budget_steps is not None and step >= budget_steps:
                break
            if seconds is not None and elapsed >= seconds and (hard_deadline or total is None):
                break
            frac = step / total if total else 0.0
            warm = max(1, int(warmup * (total or 100)))
            scale = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
            for group, (_, peak) in zip(opt.param_groups, groups):
                group["lr"] = peak * scale
            loss = loss_at(step)
            if isinstance(loss, Backward):
                known = {id(t): g for t, g in loss.known}
                rest = [t for t in tensors if id(t) not in known]
                grads = dict(zip(map(id, rest), torch.autograd.grad(
                    loss.output, rest, grad_outputs=loss.grad))) if rest else {}
                grads.update(known)
                value = loss.value
            else:
                grads = dict(zip(map(id, tensors), torch.autograd.grad(loss, tensors)))
                value = float(loss.detach())
            if sharded and world()[1] > 1:    # data-parallel: each rank's share of the batch
                summed = sum_tensors([grads[id(t)] for t in tensors] +
                                     [torch.tensor(float(value))])
                grads = {id(t): g for t, g in zip(tensors, summed)}
                value = float(summed[-1])
            for t in tensors:
                t.grad = grads[id(t)]
            for ts, _ in groups:
                torch.nn.utils.clip_grad_norm_(ts, 1.0)
            opt.step()
            step += 1
            now = time.perf_counter()
            entry = {"step": step, "loss": value, "seconds": round(now - t0, 2)}
            if best is not None and every is None and total is not None:
                every = max(1, total // CHECKS)
                # under a time budget the run depends on the machine's speed anyway; with a
                # step budget the checks stay where they are, so a rerun keeps the same step
                auto_every = ctx.params.get("check_every") is None and seconds is not None
            if best is not None:
                check = every is not None and step % every == 0
            else:
                check = now - last_monitor >= max(MONITOR_SECONDS, MONITOR_RATIO * monitor_cost)
            # ranks: the held-out figure is one pass shared out (heal/data.py), so every rank
            # checks when rank 0 does (its clock and its check spacing decide)
            check = from_rank0(check)
            done = max(step / total if total else 0.0,
                       (now - t0) / seconds if seconds else 0.0)
            if check:
                ctx.report(done, "checking the held-out windows", stage=label, step=step,
                           total=total, unit="steps", seconds=now - t0)
                ppl = ctx.held_out_ppl = held_out_ppl(ctx.lm, current(), ctx.data.held_out)
                entry["held_out_ppl"] = ppl
                if best is not None:
                    best.offer(step, ppl)
                last_monitor = time.perf_counter()
                monitor_cost = last_monitor - now
                if best is not None and auto_every:
                    # checks cost at most ~1/MONITOR_RATIO of the steps' time (few slow steps,
                    # an expensive head): space them out when one costs more
                    per_step = (now - t0 - checks_cost) / step
                    every = max(every, math.ceil(MONITOR_RATIO * monitor_cost / per_step))
                checks_cost += monitor_cost
            history.append(entry)
            ctx.report(done, stage=label, step=step, total=total, unit="steps", loss=value,
                       held_out=ppl, seconds=now - t0)
    finally:
        for t in tensors:
            t.requires_grad_(False)
            t.grad = None
    kept = step
    if history:
        if "held_out_ppl" not in history[-1]:
            ctx.report(1.0, "checking the held-out windows", stage=label, step=step,
                       total=total, unit="steps")
            history[-1]["held_out_ppl"] = held_out_ppl(ctx.lm, current(), ctx.data.held_out)
        if best is not None:
            best.offer(step, history[-1]["held_out_ppl"])
            best.restore()
            kept = best.step
            ctx.held_out_ppl = best.ppl
            if kept < step:
                ctx.report(1.0, f"kept step {kept} of {step} (the best held-out figure)",
                           stage=label, held_out=best.ppl)
        if kept:
            history[kept - 1]["kept"] = True
    return kept, int(total or step), history
