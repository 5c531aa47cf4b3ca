"""The one place that runs the decoder stack: from token ids or from a layer boundary, to a boundary.

Every stage that needs the residual stream goes through `run_backbone`: the probe (record every
boundary), perplexity (final norm, then the head in chunks), methods that fit or score layers
(stop early after a block, capture the arguments a layer is called with), healing (train layers
from cached dense states) and the dense-state cache (start from boundary k instead of 0).

Boundaries (docs/architecture.md): a variant with L slots has boundaries 0..L. Boundary i is the
input of slot i, i.e. the output of slot i-1; boundary 0 is the embeddings, boundary L the last
layer's output *before* the final norm.

Nothing of the loaded model is swapped or written. For each batch a skeleton of the base model
(`passes.skeleton_pass`: the model's own embedding, rotary and mask code, its layers replaced by
recorders) gives the embeddings and how the model calls each slot; the variant's slot modules
are then called one after the other with those arguments. So passes of different variants run
at the same time in different threads (two app sessions measuring at once) without a lock, and
a pass starts at boundary k or stops at boundary j by simply calling slots k..j-1. A model whose
layers stay offloaded runs layer-major instead (`explorer.core.stream`: every batch through one
layer before the next layer's weights are fetched), with the same results.

Hooks a stage puts on shared modules (`hooks`) only act in the thread that installed them, so
one thread's fit never sees another thread's pass through the same layer.

Example:
    >>> for b in run_backbone(lm, ids, record=range(lm.num_layers + 1)):
    ...     b.states[3]                 # (b, T, H) residual stream entering slot 3
    >>> for b in run_backbone(lm, ids, variant=v, start=12, start_states=x12, final_norm=True):
    ...     b.hidden                    # (b, T, H) after the final norm: ready for the head
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from explorer.core.errors import LayerError
from explorer.core.gather import Gather, SlotGathers
from explorer.core.model import LoadedModel
from explorer.core.passes import (Batch, LayerCall, StartStates, check_boundaries, rows_of,
                                  skeleton_pass)
from explorer.core.progress import Event, Progress
from explorer.core.tokens import auto_batch_size


def this_thread_only(fn: Callable) -> Callable:
    """A hook function that acts only in the thread that made it (returns None elsewhere): a hook
    on a shared layer must not see, or change, another thread's pass through that layer."""
    owner = threading.get_ident()

    def hook(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == owner:
            return fn(*args, **kwargs)
        return None
    return hook


@contextmanager
def hooks(*pairs: tuple[nn.Module, Callable]) -> Iterator[None]:
    """Forward hooks `fn(module, args, output)` on modules, always removed on exit; each acts only
    in the thread that installed it (`this_thread_only`)."""
    handles = [m.register_forward_hook(this_thread_only(fn)) for m, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_backbone(lm: LoadedModel, ids: torch.Tensor, *, variant=None, start: int = 0,
                 start_states: StartStates | None = None, stop: int | None = None,
                 final_norm: bool = False, record: Iterable[int] = (), capture_call: bool = False,
                 batch_size: int | None = None, progress: Progress | None = None,
                 label: str = "forward", grad: bool = False,
                 layer_major: bool | None = None,
                 gather: Sequence[Gather] = (), checkpoint=None) -> Iterator[Batch]:
    """Run windows `ids` (B, T) through the variant's slots [start, stop), one batch at a time.

    variant: None = the loaded model as it is (identity).
    start_states: the residual stream at boundary `start`, (B, T, H) or rows -> (b, T, H); needed
        when start > 0.
    stop: last boundary computed (default L). final_norm=True (stop = L only) applies the model's
        final norm to `hidden`.
    record: boundaries (start..stop) whose states each Batch carries, as float tensors of the
        model's dtype on its device (the caller decides what to keep).
    capture_call: keep the arguments slot `start` was called with (Batch.call).
    grad: run with autograd (for training layers); default under torch.no_grad(). Always batch
        by batch (the backward pass needs every layer of one batch), also on a streamed model.
    layer_major: run layer by layer instead (`explorer.core.stream.run_layer_major`: same batches,
        same values, one layer's weights on the device at a time). None: when the model streams
        its layers (`lm.weights`, load_model's offload) and grad is off.

    gather: per-layer accumulators (`explorer.core.gather.Gather`) fed at their slots, batch by batch;
        each one's `sums` is complete once the pass is.

    checkpoint: a `resume.LayerCheckpoint` (layer-major passes only): the pass saves each layer's
        frontier and resumes from it (explorer/core/resume.py).

    No lock is taken and the model is not modified: several passes may run at once.
    """
    from explorer.core.variant import Variant   # variant imports load; avoid a cycle at import time

    if checkpoint is not None and (grad or layer_major is False):
        raise LayerError("a pass that resumes runs layer by layer (layer_major, no grad)")
    if not grad and (checkpoint is not None or layer_major
                     or (layer_major is None and lm.weights is not None)):
        from explorer.core.stream import run_layer_major

        return (yield from run_layer_major(
            lm, ids, variant=variant, start=start, start_states=start_states, stop=stop,
            final_norm=final_norm, record=record, capture_call=capture_call,
            batch_size=batch_size, progress=progress, label=label, grad=grad, gather=gather,
            checkpoint=checkpoint))
    variant = variant or Variant.identity(lm)
    L = variant.num_layers
    stop, wanted = check_boundaries(L, start, stop, final_norm, start_states, record)
    B, T = ids.shape
    batch_size = batch_size or auto_batch_size(lm.device, T)
    # Weights in memory (or in CPU RAM that is the compute device): the modules, once. Layers
    # left on disk (training a streamed model): fetched for each batch, one at a time.
    resident = lm.weights is None or lm.weights.runs_whole
    taps = SlotGathers(gather, start, stop)
    modules = {i: taps.module(i, variant.loaded(i)) for i in range(start, stop)} \
        if resident else None
    norm = lm.arch.norm(lm.model)
    calls: dict[int, dict[int, LayerCall]] = {}       # batch size -> slot -> how it is called
    need_calls = start < stop or (capture_call and start < L)
    for b0 in range(0, B, batch_size):
        rows = slice(b0, min(B, b0 + batch_size))
        batch_ids = ids[rows].to(lm.device)
        size = rows.stop - rows.start
        if start == 0 or (need_calls and size not in calls):
            x0, got = skeleton_pass(lm, variant, batch_ids)
            calls.setdefault(size, got)
        h = x0 if start == 0 else rows_of(start_states, rows).to(device=lm.device,
                                                                   dtype=lm.dtype)
        states: dict[int, torch.Tensor] = {}
        with torch.enable_grad() if grad else torch.no_grad():
            if start in wanted:
                states[start] = h
            for i in range(start, stop):
                module = modules[i] if modules is not None else \
                    taps.module(i, variant.loaded(i))
                x, h = h, calls[size][i].run(module, h)                     # (b, T, H)
                taps.feed(i, rows, x, h)
                if i + 1 in wanted:
                    states[i + 1] = h
            hidden = norm(h) if final_norm else h
        yield Batch(rows=rows, ids=batch_ids, hidden=hidden, states=states,
                    call=calls[size].get(start) if capture_call and need_calls else None)
        if progress:
            progress(Event(label, rows.stop / B, step=rows.stop, total=B, unit="windows"))
