"""Helpers for methods that fit new weights: capture a block's input/output pairs, train by MSE.

`capture_block` runs the calibration windows through a variant once and keeps, per batch, the input
of slot `start` and the output of slot `stop - 1` (both (b, T, H)), plus the exact arguments the
model passed to the first layer (attention mask, rotary embeddings, ...), so a replacement layer can
be trained standalone with what it will see in the model. The forward pass stops after the block.
Memory is bounded: only these two boundaries are kept (LLM-Streamline's code kept every layer's
states in RAM), i.e. 2 x num_samples x seqlen x hidden floats.

Example:
    >>> batches = capture_block(lm, variant, ids, start=10, stop=14)
    >>> fit_module(new_layer, batches, steps=100, lr=3e-4)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from ..load import LoadedModel, Progress
from ..variant import Variant


class _Stop(Exception):
    """Raised inside a hook to end the forward pass once the block's output is recorded."""


@dataclass
class Pair:
    x: torch.Tensor           # (b, T, H) input of the block
    y: torch.Tensor           # (b, T, H) output of the block
    args: tuple               # positional arguments after hidden_states, as the model passed them
    kwargs: dict[str, Any]    # keyword arguments (attention_mask, position_embeddings, ...)


@torch.no_grad()
def capture_block(lm: LoadedModel, variant: Variant, ids: torch.Tensor, start: int, stop: int,
                  batch_size: int = 8) -> list[Pair]:
    """Input of slot `start` and output of slot `stop - 1` of `variant`, per batch of windows."""
    out: list[Pair] = []
    with variant.applied() as model:
        layers = lm.arch.layer_list(model)
        cur: dict = {}

        def pre(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            kw = {k: val for k, val in kwargs.items() if k != "hidden_states"}
            cur.update(x=h.detach(), args=tuple(args[1:]), kwargs=kw)

        def post(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            out.append(Pair(cur["x"], h.detach(), cur["args"], cur["kwargs"]))
            raise _Stop

        hooks = [layers[start].register_forward_pre_hook(pre, with_kwargs=True),
                 layers[stop - 1].register_forward_hook(post)]
        base = lm.arch.base_model(model)
        try:
            for b0 in range(0, ids.shape[0], batch_size):
                try:
                    base(input_ids=ids[b0:b0 + batch_size].to(lm.device), use_cache=False)
                except _Stop:
                    pass
        finally:
            for h in hooks:
                h.remove()
    return out


def call_layer(module: nn.Module, p: Pair, x: torch.Tensor | None = None) -> torch.Tensor:
    """Run a layer-like module as the model would, returning the hidden states tensor."""
    y = module(p.x if x is None else x, *p.args, **p.kwargs)
    return y[0] if isinstance(y, tuple) else y


def fit_module(module: nn.Module, pairs: list[Pair], *, steps: int, lr: float,
               skip_first: bool = True, seed: int = 0, progress: Progress | None = None,
               label: str = "fitting") -> list[float]:
    """Train `module` in place so that module(x) ~ y by MSE, cycling through the batches.

    The first position of each window is left out of the loss when `skip_first` (its massive
    activation would dominate). Adam, a cosine-decayed learning rate, gradient norm clipped at 1.
    Returns the loss per step.
    """
    torch.manual_seed(seed)
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
                pred = call_layer(module, p)                              # (b, T, H)
                loss = (pred[:, first:].float() - p.y[:, first:].float()).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
                if progress and (step % 5 == 0 or step == steps - 1):
                    progress((step + 1) / steps, f"{label}: step {step + 1}/{steps}, "
                             f"MSE {losses[-1]:.4g} ({time.perf_counter() - t0:.0f} s)")
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
        d = call_layer(module, p)[:, first:].float() - p.y[:, first:].float()
        tot += float(d.pow(2).sum())
        n += d.numel()
    return tot / max(1, n)
