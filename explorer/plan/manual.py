"""A plan from the layers a user names (the heatmap's clicks, the Plan tab's fields): merge each
block of original layers, then drop original layers, written as the recipe ops `replay` applies.

Recipe ops take the variant's *current* slot indices, and a merge removes slots, which shifts the
layers after it; this module does that translation once.

Example:
    >>> manual_ops(30, drops=[20], merges=[[3, 4]])       # the merge shifts layer 20 to slot 19
    [{'op': 'merge', 'layers': [3, 4], 'weights': [0.5, 0.5], 'summary': 'merge(3-4; average)'},
     {'op': 'drop', 'layers': [19]}]
"""

from __future__ import annotations

from explorer.core.errors import LayerError
from explorer.core.layer_lists import format_layers

MERGE_RULES = {
    "average": "average: each linear weight becomes the mean of the block's weights",
    "laco": "LaCo (RDSC): first layer + the sum of the other layers' differences from it",
}


def merge_weights(n: int, rule: str) -> list[float]:
    """Weights of the n layers of a merged block (see MERGE_RULES)."""
    if rule == "average":
        return [1.0 / n] * n
    if rule == "laco":
        return [1.0 - (n - 1)] + [1.0] * (n - 1)
    raise LayerError(f"unknown merge rule '{rule}'; use one of {', '.join(MERGE_RULES)}")


def check_layers(num_layers: int, drops: list[int], merges: list[list[int]]) -> None:
    """One-line LayerError for a layer out of range or named twice, a merge block of one layer,
    or a plan that would leave no layer."""
    seen: set[int] = set()
    for i in list(drops) + [i for g in merges for i in g]:
        if not 0 <= i < num_layers:
            raise LayerError(f"layer {i} is out of range: the model has {num_layers} layers "
                             f"(0..{num_layers - 1})")
        if i in seen:
            raise LayerError(f"layer {i} is named twice (in the drops or the merge blocks)")
        seen.add(i)
    if any(len(g) < 2 for g in merges):
        raise LayerError("a merge block needs at least two layers")
    if len(drops) + sum(len(g) - 1 for g in merges) >= num_layers:
        raise LayerError("this plan would leave no layer")


def manual_ops(num_layers: int, drops: list[int], merges: list[list[int]],
               rule: str = "average") -> list[dict]:
    """Recipe ops that merge each block of `merges` (in order of their first layer), then drop
    `drops`; every index given is an original layer index."""
    check_layers(num_layers, drops, merges)
    heads = list(range(num_layers))          # slot -> the original layer heading it
    ops = []
    for g in sorted(merges):
        ops.append({"op": "merge", "layers": [heads.index(i) for i in g],
                    "weights": merge_weights(len(g), rule),
                    "summary": f"merge({format_layers(g)}; {rule})"})
        heads = [i for i in heads if i not in g[1:]]
    if drops:
        ops.append({"op": "drop", "layers": sorted(heads.index(i) for i in drops)})
    return ops
