"""What the two ways of running the decoder stack share: the batch-major pass
(`backbone.run_backbone`, each batch through every layer) and the layer-major one
(`stream.run_layer_major`, each layer over every batch) take the same boundaries, give the same
`Batch`es and call layers with the same recorded `LayerCall`s.

Boundary i of a variant is the input of slot i (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from .errors import LayerError

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
