"""What the two ways of running the decoder stack share: the batch-major pass
(`backbone.run_backbone`, each batch through every layer) and the layer-major one
(`stream.run_layer_major`, each layer over every batch) take the same boundaries, give the same
`Batch`es and call layers with the same recorded `LayerCall`s.

Boundary i of a variant is the input of slot i (docs/architecture.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from explorer.core.errors import LayerError

# Where the given start states come from: a (B, T, H) tensor indexed by window, or a function of
# the windows' slice (for states kept on disk or recomputed from a checkpoint).
StartStates = torch.Tensor | Callable[[slice], torch.Tensor]


class StopPass(Exception):
    """Raised by the hook after slot stop-1 to end the forward pass early."""


@dataclass
class LayerCall:
    """The arguments the model passed to one slot (masks, rotary embeddings, cache positions), so a
    layer-like module can be called standalone exactly as the model would call it."""

    args: tuple                  # positional arguments after hidden_states
    kwargs: dict[str, Any]

    def run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """module(x) as the model calls it: (b, T, H) -> (b, T, H)."""
        y = module(x, *self.args, **self.kwargs)
        return y[0] if isinstance(y, tuple) else y


@dataclass
class Batch:
    """One batch of windows after a (partial) pass."""

    rows: slice                                   # windows [start, stop) of the input ids
    ids: torch.Tensor                             # (b, T) on the model's device
    hidden: torch.Tensor | None = None            # (b, T, H) at boundary `stop` (normed if asked)
    states: dict[int, torch.Tensor] = field(default_factory=dict)   # boundary -> (b, T, H)
    call: LayerCall | None = None                 # with capture_call: how slot `start` was called


def check_boundaries(L: int, start: int, stop: int | None, final_norm: bool,
                     start_states: StartStates | None, record: Iterable[int]
                     ) -> tuple[int, list[int]]:
    """Validate a pass over boundaries [start, stop] of L slots; return (stop, sorted recorded
    boundaries)."""
    stop = L if stop is None else stop
    if not 0 <= start <= stop <= L:
        raise LayerError(f"boundaries must satisfy 0 <= start <= stop <= {L} "
                         f"(got start={start}, stop={stop})")
    if final_norm and stop != L:
        raise LayerError("final_norm needs the pass to reach the last boundary (stop = L)")
    if start > 0 and start_states is None:
        raise LayerError(f"starting at boundary {start} needs the states there (start_states)")
    wanted = sorted(set(record))
    if any(not start <= b <= stop for b in wanted):
        raise LayerError(f"recorded boundaries must lie in {start}..{stop} (got {wanted})")
    return stop, wanted


def rows_of(states: StartStates, rows: slice) -> torch.Tensor:
    return states(rows) if callable(states) else states[rows]


# -- how the model calls each slot: a skeleton of the base model ---------------------------------

class Recorder(nn.Module):
    """Stands in for slot `slot` in the skeleton: records how the model calls it, returns its
    input; the last one ends the pass (the final norm and whatever follows are not needed).

    Made by `recorder_like`, as a subclass of the layer's own class with its plain attributes
    (attention_type, layer_idx, ...), so a base model that asks `isinstance(layer, ...)` or
    reads a layer's attribute to choose its mask (Jamba, Gemma 3) sees what it expects."""

    slot: int
    sink: dict
    last: bool
    tuple_out: bool
    x_name: str | None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            hidden_states, args = args[0], args[1:]
        else:
            hidden_states = kwargs.pop(self.x_name or "hidden_states")
        if self.slot == 0:
            self.sink["x0"] = hidden_states
        self.sink[self.slot] = LayerCall(tuple(args), dict(kwargs))
        if self.last:
            raise StopPass
        return (hidden_states,) if self.tuple_out else hidden_states


_RECORDER_TYPES: dict[type, type] = {}
_PLAIN = (str, int, float, bool, type(None))


def _first_argument(cls: type) -> str | None:
    import inspect

    try:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    return params[0].name if params and params[0].kind in (
        params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD) else None


def recorder_like(layer: nn.Module, slot: int, sink: dict, last: bool,
                  tuple_out: bool) -> Recorder:
    """A Recorder that is an instance of `layer`'s class (no __init__ run, no weights) carrying
    its plain attributes."""
    cls = type(layer)
    kind = _RECORDER_TYPES.get(cls)
    if kind is None:
        kind = _RECORDER_TYPES[cls] = type(f"Recorder{cls.__name__}", (Recorder, cls), {})
    r = kind.__new__(kind)
    nn.Module.__init__(r)
    for key, value in vars(layer).items():
        if not key.startswith("_") and isinstance(value, _PLAIN):
            object.__setattr__(r, key, value)
    r.slot, r.sink, r.last, r.tuple_out = slot, sink, last, tuple_out
    r.x_name = _first_argument(cls)
    return r


def skeleton(lm, variant, sink: dict) -> nn.Module:
    """A private shallow copy of the base model whose layer list holds recorders for the
    variant's slots and whose config is the variant's (`layer_config.variant_config`: Gemma 3's
    sliding and full attention follow the slot's original layer): the loaded model is not
    touched."""
    from explorer.apply.layer_config import variant_config

    base = lm.arch.base_model(lm.model)
    rel = lm.arch.layers[len(lm.arch.base) + 1:] if lm.arch.base else lm.arch.layers
    if "." in rel:
        raise LayerError(f"the {lm.arch.family} adapter keeps its layers outside its base model: "
                         "its layers cannot be run without swapping them into the model")
    n = variant.num_layers
    sk = copy.copy(base)                       # new __dict__, shared submodules and tensors
    modules = dict(base._modules)
    modules[rel] = nn.ModuleList(
        recorder_like(variant.layer(i), i, sink, i == n - 1, lm.arch.layer_returns_tuple)
        for i in range(n))
    object.__setattr__(sk, "_modules", modules)
    object.__setattr__(sk, "config", variant_config(lm, variant, base.config))
    return sk


@torch.no_grad()
def skeleton_pass(lm, variant, ids: torch.Tensor) -> tuple[torch.Tensor, dict[int, LayerCall]]:
    """Windows `ids` (b, T) through the model's own embedding, rotary and mask code, no layer run:
    returns the embeddings (b, T, H) (boundary 0) and how the model calls each slot. The calls
    depend only on the batch's shape (no padding, no attention mask given)."""
    sink: dict = {}
    try:
        skeleton(lm, variant, sink)(input_ids=ids, use_cache=False)
    except StopPass:
        pass
    return sink["x0"], {s: c for s, c in sink.items() if isinstance(s, int)}
