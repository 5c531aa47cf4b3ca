"""The one place that runs the decoder stack: from token ids or from a layer boundary, to a boundary.

Every stage that needs the residual stream goes through `run_backbone`: the probe (record every
boundary), perplexity (final norm, then the head in chunks), methods that fit or score layers
(stop early after a block, capture the arguments a layer is called with), healing (train layers
from cached dense states) and the dense-state cache (start from boundary k instead of 0).

Boundaries (docs/architecture.md): a variant with L slots has boundaries 0..L. Boundary i is the
input of slot i, i.e. the output of slot i-1; boundary 0 is the embeddings, boundary L the last
layer's output *before* the final norm.

How a pass starts at boundary k > 0: the model still runs its own embedding, rotary and mask code
(cheap, and exactly what each family does, sliding windows included), but slots 0..k-1 are
swapped for a pass-through module and a pre-hook on slot k replaces its input by the given states.
How it stops early: a forward hook on slot stop-1 raises `StopPass` once boundary `stop` is recorded.

Example:
    >>> for b in run_backbone(lm, ids, record=range(lm.num_layers + 1)):
    ...     b.states[3]                 # (b, T, H) residual stream entering slot 3
    >>> for b in run_backbone(lm, ids, variant=v, start=12, start_states=x12, final_norm=True):
    ...     b.hidden                    # (b, T, H) after the final norm: ready for the head
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from .errors import LayerError
from .load import LoadedModel
from .progress import Event, Progress
from .passes import Batch, LayerCall, StartStates, StopPass, check_boundaries, rows_of
from .tokens import auto_batch_size

class _PassThrough(nn.Module):
    """Stands in for a slot before `start`: returns its input unchanged, whatever it is called with."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def hooks(*pairs: tuple[nn.Module, Callable]) -> Iterator[None]:
    """Forward hooks `fn(module, args, output)` on modules, always removed on exit."""
    handles = [m.register_forward_hook(fn) for m, fn in pairs]
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
                 layer_major: bool | None = None) -> Iterator[Batch]:
    """Run windows `ids` (B, T) through the variant's slots [start, stop), one batch at a time.

    variant: None = the loaded model as it is (identity).
    start_states: the residual stream at boundary `start`, (B, T, H) or rows -> (b, T, H); needed
        when start > 0.
    stop: last boundary computed (default L). final_norm=True (stop = L only) applies the model's
        final norm to `hidden`.
    record: boundaries (start..stop) whose states each Batch carries, as float tensors of the
        model's dtype on its device (the caller decides what to keep).
    capture_call: keep the arguments slot `start` was called with (Batch.call).
    grad: run with autograd (for training layers); default under torch.no_grad().
    layer_major: run layer by layer instead (`explorer.stream.run_layer_major`: same batches,
        same values, one layer's weights on the device at a time, no layer swapped into the
        model). None: when the model streams its layers (`lm.weights`, load_model's offload).

    The variant stays applied (the model's lock held) until the iteration ends, so consume the
    iterator fully or close it.
    """
    from .variant import Variant   # variant imports load; avoid a cycle at import time

    if layer_major or (layer_major is None and lm.weights is not None):
        from .stream import run_layer_major

        return (yield from run_layer_major(
            lm, ids, variant=variant, start=start, start_states=start_states, stop=stop,
            final_norm=final_norm, record=record, capture_call=capture_call,
            batch_size=batch_size, progress=progress, label=label, grad=grad))
    variant = variant or Variant.identity(lm)
    L = variant.num_layers
    stop, wanted = check_boundaries(L, start, stop, final_norm, start_states, record)
    B, T = ids.shape
    batch_size = batch_size or auto_batch_size(lm.device, T)
    ctx = torch.enable_grad() if grad else torch.no_grad()

    with variant.applied() as model, ctx:
        layers = lm.arch.layer_list(model)
        base = lm.arch.base_model(model)
        cur: dict[str, Any] = {}
        installed: list = []
        skipped = [(i, layers[i]) for i in range(start)]
        try:
            for i, _ in skipped:
                layers[i] = _PassThrough()
            if start < L:
                installed.append(layers[start].register_forward_pre_hook(
                    _make_pre(cur, start, start_states, wanted, capture_call, start == stop),
                    with_kwargs=True))
            for b in range(start + 1, stop + 1):
                if b in wanted or b == stop:
                    installed.append(layers[b - 1].register_forward_hook(
                        _make_post(cur, b, wanted, b == stop, b == stop and stop < L)))
            for b0 in range(0, B, batch_size):
                rows = slice(b0, min(B, b0 + batch_size))
                batch_ids = ids[rows].to(lm.device)
                cur.clear()
                cur.update(rows=rows, states={}, call=None)
                out = _forward(lm, base, batch_ids, cur, start, stop, L, final_norm,
                               start_states, wanted)
                yield Batch(rows=rows, ids=batch_ids, hidden=out, states=cur["states"],
                            call=cur["call"])
                if progress:
                    progress(Event(label, rows.stop / B, step=rows.stop, total=B, unit="windows"))
        finally:
            for h in installed:
                h.remove()
            for i, layer in skipped:
                layers[i] = layer


def _make_pre(cur: dict, start: int, start_states: StartStates | None, wanted: list[int],
              capture_call: bool, stop_here: bool) -> Callable:
    def pre(module, args, kwargs):
        if not cur.get("active"):   # the caller runs this layer itself between batches
            return None
        h = _hidden_arg(args, kwargs)
        if start_states is not None and start > 0:
            h = rows_of(start_states, cur["rows"]).to(device=h.device, dtype=h.dtype)
        if start in wanted:
            cur["states"][start] = h
        if capture_call:
            cur["call"] = LayerCall(tuple(args[1:]),
                                    {k: v for k, v in kwargs.items() if k != "hidden_states"})
        if stop_here:          # start == stop: the boundary itself is the result
            cur["hidden"] = h
            raise StopPass
        if args:
            return (h,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}
    return pre


def _make_post(cur: dict, boundary: int, wanted: list[int], is_stop: bool,
               early: bool) -> Callable:
    def post(module, args, output):
        if not cur.get("active"):
            return None
        h = _output(output)
        if boundary in wanted:
            cur["states"][boundary] = h
        if is_stop:
            cur["hidden"] = h
        if early:              # the layers after `stop` are not needed
            raise StopPass
    return post


def _forward(lm: LoadedModel, base: nn.Module, ids: torch.Tensor, cur: dict, start: int,
             stop: int, L: int, final_norm: bool, start_states: StartStates | None,
             wanted: list[int]) -> torch.Tensor:
    """One batch through the base model; returns the hidden states at boundary `stop`."""
    if start == L:
        # Nothing to run: the given states are the output of the last slot already.
        h = rows_of(start_states, cur["rows"]).to(lm.device) if start_states is not None \
            else None
        if h is None:   # start == L == 0 cannot happen (a variant keeps at least one layer)
            raise LayerError("no layers to run")
        if start in wanted:
            cur["states"][start] = h
        return lm.arch.norm(lm.model)(h) if final_norm else h
    cur["active"] = True       # the hooks act only inside this call, not when the caller runs
    try:                       # a hooked layer standalone between batches
        out = base(input_ids=ids, use_cache=False)
    except StopPass:
        return cur["hidden"]
    finally:
        cur["active"] = False
    # The base model ran every slot: its last_hidden_state is after the final norm.
    return out.last_hidden_state if final_norm else cur["hidden"]
