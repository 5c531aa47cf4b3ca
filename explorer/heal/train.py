"""The one training loop of the healing modes: Adam on chosen tensors, a step budget and/or a time
budget, a cosine learning-rate schedule that depends only on the step count (so a recorded run
replays exactly), and progress reports with the loss and a held-out perplexity.

Gradients are taken with `torch.autograd.grad` with respect to the trained tensors only: nothing
is accumulated on any other parameter (the loaded model's included).

Under a time budget alone the schedule's length is unknown at the start: it is fixed after the
first few steps from their speed (`schedule_steps`, recorded with the healing), and the loop ends
at that step or at the deadline, whichever comes first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..variant import Variant
from .data import held_out_ppl
from .registry import HealContext

PROBE_STEPS = 3            # steps timed before a time budget fixes the schedule's length
MONITOR_SECONDS = 20.0     # held-out perplexity at most this often (and at the end),
MONITOR_RATIO = 9.0        # and at most ~10% of the time (slow steps on a busy machine)


@dataclass
class Backward:
    """A loss whose gradient is already known at an intermediate tensor (the distillation's
    hidden states, its vocabulary head run in chunks): the rest of the backward pass starts there.
    """

    value: float                # the loss
    output: torch.Tensor        # a tensor of the graph, e.g. (b, T, H) hidden states
    grad: torch.Tensor          # d loss / d output, same shape


def train(ctx: HealContext, tensors: list[torch.Tensor],
          loss_at: Callable[[int], torch.Tensor | Backward],
          *, lr: float, label: str, current: Callable[[], Variant],
          schedule_steps: int | None = None, warmup: float = 0.05, hard_deadline: bool = True
          ) -> tuple[int, int, list[dict]]:
    """Minimise loss_at(step) over `tensors`; returns (steps done, schedule length, history).

    loss_at(step): a scalar loss tensor, or a `Backward` (the gradient known part way).
    current(): the variant with the layers being trained in place, for the held-out perplexity.
    hard_deadline=False: under a time budget, run the whole estimated schedule even if it ends a
    little after the deadline (then steps done = schedule length, and a replay needs only that).
    """
    budget_steps, seconds = ctx.steps, ctx.seconds
    total = schedule_steps or budget_steps
    for t in tensors:
        t.requires_grad_(True)
    opt = torch.optim.Adam(tensors, lr=lr)
    history: list[dict] = []
    t0 = time.perf_counter()
    last_monitor, monitor_cost = t0, 0.0
    ppl = ctx.held_out_ppl
    step = 0
    try:
        while True:
            elapsed = time.perf_counter() - t0
            if total is None and step == PROBE_STEPS:
                total = max(step + 1, int(seconds * step / max(elapsed, 1e-6)))
            if total is not None and step >= total:
                break
            if seconds is not None and elapsed >= seconds and (hard_deadline or total is None):
                break
            frac = step / total if total else 0.0
            warm = max(1, int(warmup * (total or 100)))
            scale = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            loss = loss_at(step)
            if isinstance(loss, Backward):
                grads = torch.autograd.grad(loss.output, tensors, grad_outputs=loss.grad)
                value = loss.value
            else:
                grads = torch.autograd.grad(loss, tensors)
                value = float(loss.detach())
            for t, g in zip(tensors, grads):
                t.grad = g
            torch.nn.utils.clip_grad_norm_(tensors, 1.0)
            opt.step()
            step += 1
            now = time.perf_counter()
            entry = {"step": step, "loss": value, "seconds": round(now - t0, 2)}
            if now - last_monitor >= max(MONITOR_SECONDS, MONITOR_RATIO * monitor_cost):
                ppl = ctx.held_out_ppl = held_out_ppl(ctx.lm, current(), ctx.data.held_out)
                entry["held_out_ppl"] = ppl
                last_monitor = time.perf_counter()
                monitor_cost = last_monitor - now
            history.append(entry)
            done = max(step / total if total else 0.0,
                       (now - t0) / seconds if seconds else 0.0)
            ctx.report(done, stage=label, step=step, total=total, unit="steps", loss=value,
                       held_out=ppl, seconds=now - t0)
    finally:
        for t in tensors:
            t.requires_grad_(False)
            t.grad = None
    if history:
        history[-1]["held_out_ppl"] = held_out_ppl(ctx.lm, current(), ctx.data.held_out)
    return step, int(total or step), history
