"""Helpers for methods that fit new weights: capture a block's input/output pairs, train by MSE.

`capture_block` gives, per batch of calibration windows, the input of slot `start` and the output of
slot `stop - 1` of a variant (both (b, T, H)), plus the exact arguments the model passed to slot
`start` (attention mask, rotary embeddings, ...: `backbone.LayerCall`), so a replacement layer can
be trained standalone with what it will see in the model. Both passes go through
`backbone.run_backbone`: the first stops at boundary `start`, the second starts there from those
states and stops after the block, so together they cost one pass to `stop`. Memory is bounded:
only these two boundaries are kept (LLM-Streamline's code kept every layer's states in RAM), i.e.
2 x num_samples x seqlen x hidden floats.

Example:
    >>> batches = capture_block(lm, variant, ids, start=10, stop=14)
    >>> fit_module(new_layer, batches, steps=100, lr=3e-4)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from explorer.core.backbone import run_backbone
from explorer.core.model import LoadedModel
from explorer.core.passes import LayerCall
from explorer.core.progress import Event, Progress
from explorer.core.variant import Variant

# Windows per training batch: each fitting step sees one batch of `capture_block`, so this is part
# of the fit's definition (the results in docs/methods.md were measured with it), not a speed knob.
FIT_BATCH = 8


@dataclass
class Pair:
    x: torch.Tensor           # (b, T, H) input of the block
    y: torch.Tensor           # (b, T, H) output of the block
    call: LayerCall           # how the model called the block's first slot (masks, rotary, ...)

    def run(self, module: nn.Module | Callable, x: torch.Tensor | None = None) -> torch.Tensor:
        """module(x) as the model would call it in the block's place: (b, T, H) -> (b, T, H)."""
        return self.call.run(module, self.x if x is None else x)


def capture_block(lm: LoadedModel, variant: Variant, ids: torch.Tensor, start: int, stop: int,
                  batch_size: int = FIT_BATCH) -> list[Pair]:
    """Input of slot `start` and output of slot `stop - 1` of `variant`, per batch of windows."""
    xs = [b.hidden for b in run_backbone(lm, ids, variant=variant, stop=start,
                                         batch_size=batch_size, label="block input")]
    x = torch.cat(xs)                                                  # (B, T, H) at `start`
    return [Pair(x[b.rows], b.hidden, b.call)
            for b in run_backbone(lm, ids, variant=variant, start=start, start_states=x,
                                  stop=stop, capture_call=True, batch_size=batch_size,
                                  label="block output")]


def fit_module(module: nn.Module, pairs: list[Pair], *, steps: int, lr: float,
               skip_first: bool = True, progress: Progress | None = None,
               label: str = "fitting") -> list[float]:
    """Train `module` in place so that module(x) ~ y by MSE, cycling through the batches.

    The first position of each window is left out of the loss when `skip_first` (its massive
    activation would dominate). Adam, a cosine-decayed learning rate, gradient norm clipped at 1.
    Returns the loss per step. Nothing is drawn at random (the batches are taken in order), so
    the fit is deterministic without touching any random generator.
    """
    params = [p for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    first = 1 if skip_first else 0
    losses = []
    module.eval()   # no dropout: the fit is deterministic for a seed
    t0 = time.perf_counter()
    try:
        with torch.enable_grad():
            for step in range(steps):
                p = pairs[step % len(pairs)]
                pred = p.run(module)                                      # (b, T, H)
                loss = (pred[:, first:].float() - p.y[:, first:].float()).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
                if progress and (step % 5 == 0 or step == steps - 1):
                    progress(Event(label, (step + 1) / steps, step=step + 1, total=steps,
                                   unit="steps", loss=losses[-1],
                                   seconds=time.perf_counter() - t0))
    finally:
        for p in params:
            p.requires_grad_(False)
    return losses


@torch.no_grad()
def block_mse(module: nn.Module | Callable, pairs: list[Pair], skip_first: bool = True) -> float:
    """Mean squared error of module(x) against y over all pairs (positions as in fitting)."""
    first = 1 if skip_first else 0
    tot, n = 0.0, 0
    for p in pairs:
        d = p.run(module)[:, first:].float() - p.y[:, first:].float()
        tot += float(d.pow(2).sum())
        n += d.numel()
    return tot / max(1, n)
