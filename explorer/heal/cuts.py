"""Where a variant departs from the dense model, and copies of layers that own only what they train.

Every slot of a variant stands for an original layer (`Variant.origin`), so the boundary in front of
slot k corresponds to the dense model's boundary origin(k), and the boundary after the last slot to
the dense boundary L. A *cut* is a slot whose output no longer lands where the dense model's would:
layers were removed after it (origin(k+1) > origin(k) + 1), or it is a new layer (a merge, a trained
stand-in). Healing makes the variant's state after the cut slot close to the dense state there.

A variant whose first slot is not original layer 0 has a cut *before* its first slot (slot -1):
nothing precedes it to fold a map into, so only the training modes can heal it.

Example:
    >>> v = Variant.identity(lm).drop(range(18, 24))          # 30 -> 24 layers
    >>> find_cuts(v)
    [Cut(slot=17, dense_in=17, dense_out=24, removed=(18, 19, 20, 21, 22, 23), new=False)]
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from explorer.core.errors import LayerError
from explorer.core.variant import NewLayer, Variant


@dataclass(frozen=True)
class Cut:
    """One place where the variant's residual stream leaves the dense model's."""

    slot: int                  # slot whose output should match dense boundary `dense_out`; -1: before slot 0
    dense_in: int              # dense boundary the slot's input stands for (origin of the slot)
    dense_out: int             # dense boundary its output should match (origin of the next slot, or L)
    removed: tuple[int, ...]   # original layers between them that the variant does not run
    new: bool                  # the slot holds a new layer (merge, trained stand-in)

    def describe(self) -> str:
        gone = f"{self.removed[0]}-{self.removed[-1]}" if len(self.removed) > 1 else \
            ",".join(map(str, self.removed)) or "none"
        where = "before the first layer" if self.slot < 0 else f"after slot {self.slot}"
        return f"cut {where} (removed {gone}; dense x_{self.dense_in} -> x_{self.dense_out})"


def dense_boundary(v: Variant, b: int) -> int:
    """The dense model's boundary that boundary `b` of the variant stands for (0..L_dense)."""
    return v.lm.num_layers if b == v.num_layers else v.origin(b)


def find_cuts(v: Variant) -> list[Cut]:
    """The cuts of a variant, in slot order; LayerError if it has none or is out of order."""
    origins = [v.origin(i) for i in range(v.num_layers)]
    if any(b <= a for a, b in zip(origins, origins[1:])):
        raise LayerError("healing needs the layers in their original order (this variant repeats "
                         "or reorders layers)")
    cuts: list[Cut] = []
    if origins[0] > 0:
        cuts.append(Cut(-1, 0, origins[0], tuple(range(origins[0])), False))
    for k, o in enumerate(origins):
        out = dense_boundary(v, k + 1)
        new = isinstance(v.slots[k], NewLayer)
        if out != o + 1 or new:
            cuts.append(Cut(k, o, out, tuple(range(o + 1, out)), new))
    if not cuts:
        raise LayerError("nothing to heal: this variant runs every original layer unchanged "
                         "(remove or merge layers first)")
    return cuts


def trainable_copy(module: nn.Module, owns: Callable[[str], bool]) -> nn.Module:
    """A copy of `module` that owns new tensors for the parameters whose names `owns` accepts and
    shares every other parameter and buffer with the original (the same objects, never written).

    The copy can be trained and exported like any layer; the loaded model's weights stay
    bit-identical because only the owned tensors are new.
    """
    memo: dict[int, object] = {id(b): b for b in module.buffers()}
    for name, p in module.named_parameters():
        if not owns(name):
            memo[id(p)] = p
    return copy.deepcopy(module, memo)


def with_slot(v: Variant, k: int, module: nn.Module, tag: str) -> Variant:
    """The variant with slot k swapped for `module` (labelled "<old label>+<tag>"), same steps
    and head: `heal` records one step for the whole healing."""
    slots = list(v.slots)
    slots[k] = NewLayer(module=module, stands_for=v.groups[k], label=f"{v.layer_labels()[k]}+{tag}")
    return dataclasses.replace(v, slots=tuple(slots))
