"""Bookkeeping shared by the methods: which original layers each current slot stands for.

Methods edit a `Variant` step by step with indices of its *current* slots; `Layout` follows along so
that a `Plan` can report removed and merged layers in *original* indices (what the heatmap shows).

Example:
    >>> lay = Layout.identity(6).merge([2, 3]).drop([4])     # slots: 0 1 (2,3) 4 [5 dropped]
    >>> lay.groups
    ((0,), (1,), (2, 3), (4,))
    >>> lay.removed(6), lay.merged()
    ([3, 5], [[2, 3]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Layout:
    groups: tuple[tuple[int, ...], ...]   # per current slot: the original layers it stands for

    @staticmethod
    def identity(n: int) -> "Layout":
        return Layout(tuple((i,) for i in range(n)))

    def drop(self, slots: Sequence[int]) -> "Layout":
        gone = set(slots)
        return Layout(tuple(g for i, g in enumerate(self.groups) if i not in gone))

    def merge(self, slots: Sequence[int]) -> "Layout":
        """The slots become one, placed at the first (as `Variant.merge` / `replace` do)."""
        s = sorted(slots)
        union = tuple(sorted(o for i in s for o in self.groups[i]))
        out = [union if i == s[0] else g for i, g in enumerate(self.groups) if i not in s[1:]]
        return Layout(tuple(out))

    def slot_of(self, original: int) -> int:
        for i, g in enumerate(self.groups):
            if original in g:
                return i
        raise KeyError(original)

    def removed(self, num_layers: int) -> list[int]:
        """Original layers that no longer head a slot: dropped, or merged into another."""
        heads = {g[0] for g in self.groups}
        return [i for i in range(num_layers) if i not in heads]

    def merged(self) -> list[list[int]]:
        return [list(g) for g in self.groups if len(g) > 1]
