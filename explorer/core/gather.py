"""Per-layer accumulators: what a stage gathers at a slot, reduced into named sums.

A fit or a measure that reads the residual stream at one slot (the closed form's M^T M and M^T R,
Prune&Comp's norms, CoMe's squared projection inputs, the block influence of a layer's halves)
declares a `Gather` instead of hooking the model:

- `slot`: the slot of the variant it reads;
- `parts`: sub-modules of the slot's layer whose output (or input) it needs, by dotted path
  ("mlp.down_proj"), each under a name;
- `first`: the token positions it keeps, [first:] of each window (1: the first position, whose
  massive activation would dominate, is left out);
- `reduce(view, sums)`: adds one batch's contribution to `sums` (`Sums`: named float64 sums, and
  per-window pieces for a stage that needs every state, kept in window order).

The executors call `reduce` once per batch at that slot: `backbone.run_backbone` batch by batch,
`stream.run_layer_major` layer by layer, each in its own batch order. Sums are additive, so the
result does not depend on the order, on the batch size, or on how the windows are split between
ranks (`explorer.core.ranks.reduce_sums` adds the ranks' sums in float64, in rank order).

No hook is put on any module, so no lock is needed: the parts are read through a private shallow
copy of the slot's layer in which each named part is wrapped by a `_Tap` (the weights are
shared, nothing of the loaded model is touched), and another thread's pass through the same layer
sees nothing of it.

Example (the mean squared norm of slot 3's MLP output, first tokens left out):
    >>> def add(view, sums):
    ...     sums.add("sq", view.parts["mlp"].double().pow(2).sum())
    ...     sums.add("n", view.parts["mlp"].shape[0] * view.parts["mlp"].shape[1])
    >>> g = Gather(3, add, parts={"mlp": "mlp.down_proj"}, first=1)
    >>> for _ in run_backbone(lm, ids, stop=4, gather=[g]): pass
    >>> float(g.sums["sq"] / g.sums["n"])
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from explorer.core.errors import LayerError


class Sums:
    """Named float64 sums (any shape, scalars included) and per-window pieces.

    `add` sums a tensor (or number) into a name; `keep` stores a batch's rows (b, ...) under a
    name with the windows they belong to, and `kept` returns every piece concatenated in window
    order (for what cannot be reduced to a sum: NPIB's kernels, the manifold maps, Adam refits).
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.pieces: dict[str, dict[int, torch.Tensor]] = {}

    def add(self, name: str, t: torch.Tensor | float | int) -> None:
        t = torch.as_tensor(t).detach().to(torch.float64)
        if name in self.sums:
            self.sums[name] = self.sums[name] + t.to(self.sums[name].device)
        else:
            self.sums[name] = t.clone()

    def keep(self, name: str, rows: slice, t: torch.Tensor) -> None:
        self.pieces.setdefault(name, {})[rows.start] = t.detach()

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.sums[name]

    def __contains__(self, name: str) -> bool:
        return name in self.sums

    def kept(self, name: str) -> torch.Tensor:
        """Every kept piece of `name`, (N, ...) concatenated in window order."""
        got = self.pieces.get(name, {})
        if not got:
            raise LayerError(f"nothing was kept under '{name}'")
        return torch.cat([got[k] for k in sorted(got)])

    def merge(self, other: "Sums") -> None:
        """Add another accumulator's sums and pieces into this one (other windows)."""
        for name, t in other.sums.items():
            self.add(name, t)
        for name, got in other.pieces.items():
            self.pieces.setdefault(name, {}).update(got)


@dataclass
class View:
    """One batch at a gathered slot, token positions [first:] of each window."""

    rows: slice                                   # windows [start, stop) of the pass's ids
    x: torch.Tensor                               # (b, T', H) the slot's input
    y: torch.Tensor                               # (b, T', H) the slot's output
    parts: dict[str, torch.Tensor]                # name -> (b, T', D) a part's output or input


@dataclass
class Gather:
    """What a stage gathers at slot `slot` (see the module docstring)."""

    slot: int
    reduce: Callable[[View, Sums], None]
    parts: dict[str, str] = field(default_factory=dict)   # name -> dotted path in the layer
    inputs: tuple[str, ...] = ()        # names in `parts` whose input is read, not their output
    first: int = 0
    sums: Sums = field(default_factory=Sums)


class _Tap(nn.Module):
    """Runs `inner` and records its first input or its output under `name` in `sink`."""

    def __init__(self, inner: nn.Module, name: str, sink: dict, read_input: bool) -> None:
        super().__init__()
        self.inner, self.name, self.sink, self.read_input = inner, name, sink, read_input

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if self.read_input:
            self.sink[self.name] = args[0] if args else next(iter(kwargs.values()))
        else:
            self.sink[self.name] = out[0] if isinstance(out, tuple) else out
        return out


def _shallow(module: nn.Module) -> nn.Module:
    """A copy sharing every parameter, buffer and hook, with its own child table."""
    c = copy.copy(module)
    object.__setattr__(c, "_modules", dict(module._modules))
    return c


def _module_path(layer: nn.Module, path: str) -> str:
    """Where the part reached by attribute `path` sits in the module tree: the same path, or,
    in a wrapper that hands attribute lookups to the layer it wraps (LinearPatch's module), the
    path through the wrapper's children."""
    node = layer
    for part in path.split("."):
        node = node._modules.get(part) if isinstance(node, nn.Module) else None
    if node is not None:
        return path
    node = layer
    for part in path.split("."):
        node = getattr(node, part, None)
        if not isinstance(node, nn.Module):
            raise LayerError(f"the layer has no part '{path}' to gather")
    target = node
    for name, m in layer.named_modules(remove_duplicate=False):
        if m is target and name:
            return name
    raise LayerError(f"the layer has no part '{path}' to gather")


def tapped(layer: nn.Module, parts: dict[str, str], inputs: Iterable[str], sink: dict
           ) -> nn.Module:
    """A private copy of `layer` (weights shared) whose parts record into `sink` when it runs."""
    if not parts:
        return layer
    inputs = set(inputs)
    top = _shallow(layer)
    for name, path in parts.items():
        node = top
        names = _module_path(layer, path).split(".")
        for child in names[:-1]:
            sub = node._modules.get(child)
            if sub is None:
                raise LayerError(f"the layer has no part '{path}' to gather")
            if not getattr(sub, "_gather_copy", False):
                sub = _shallow(sub)
                object.__setattr__(sub, "_gather_copy", True)
                node._modules[child] = sub
            node = sub
        leaf = node._modules.get(names[-1])
        if leaf is None:
            raise LayerError(f"the layer has no part '{path}' to gather")
        node._modules[names[-1]] = _Tap(leaf, name, sink, name in inputs)
    return top


class SlotGathers:
    """The gathers of one pass, by slot: the module to run at a slot and the feed after it."""

    def __init__(self, gathers: Sequence[Gather], start: int, stop: int) -> None:
        self.at: dict[int, list[Gather]] = {}
        for g in gathers:
            if not start <= g.slot < stop:
                raise LayerError(f"a gather at slot {g.slot} needs the pass to run slots "
                                 f"{start}..{stop - 1} through it")
            self.at.setdefault(g.slot, []).append(g)
        self._sinks: dict[int, dict] = {}

    def module(self, slot: int, module: nn.Module) -> nn.Module:
        """The module to call at `slot`: `module` itself, or a tapped copy of it."""
        gs = self.at.get(slot)
        if not gs:
            return module
        parts = {n: p for g in gs for n, p in g.parts.items()}
        inputs = [n for g in gs for n in g.inputs]
        sink = self._sinks[slot] = {}
        return tapped(module, parts, inputs, sink)

    def feed(self, slot: int, rows: slice, x: torch.Tensor, y: torch.Tensor) -> None:
        """Hand batch `rows` at `slot` (input x, output y, (b, T, H)) to its gathers."""
        for g in self.at.get(slot, ()):
            sink = self._sinks.get(slot, {})
            f = g.first
            view = View(rows, x[:, f:], y[:, f:], {n: sink[n][:, f:] for n in g.parts})
            g.reduce(view, g.sums)
        self._sinks.get(slot, {}).clear()


class Accumulator:
    """Named sums read as attributes (`acc.mtm` is `acc.sums["mtm"]`): the fits' statistics
    (closed form, LinearPatch) are `Sums`, so ranks reduce them like any other."""

    def __init__(self, sums: Sums | None = None) -> None:
        self.sums = sums if sums is not None else Sums()

    def __getattr__(self, name: str) -> torch.Tensor:
        sums = self.__dict__.get("sums")
        if sums is not None and name in sums:
            return sums[name]
        raise AttributeError(name)
