"""What one browser session keeps (in `gr.State`): names, small lists and numbers, never tensors.

    {"model": "smollm2-135m", "num_layers": 30, "text": "wiki", "text_label": "...",
     "analysis": {"key": [...], "measure": "cosine"} | None,
     "plan": {"method": "manual", "params": {}, "ops": [...], "removed": [...], "merged": [[...]],
              "notes": ""},
     "history": [{"label": ..., "method": ..., "removed": 2, "ppl": 27.1, ...}, ...]}

The plan is a list of recipe ops (`explorer.recipe`), which rebuild the variant on the shared model
whenever it is needed; `removed` and `merged` name *original* layers, for display.

Also here: turning the user's picks (layers to drop, blocks to merge, in original numbering) into
recipe ops, whose indices refer to the layer stack as it is at each step.
"""

from __future__ import annotations

from ..cli import parse_layers
from ..errors import LayerError

MERGE_RULES = {
    "average": "average: each linear weight becomes the mean of the block's weights",
    "laco": "LaCo (RDSC): first layer + the sum of the other layers' differences from it",
}


def new_state(text: str = "wiki") -> dict:
    return {"model": None, "num_layers": 0, "text": text, "text_label": text, "analysis": None,
            "plan": empty_plan(), "history": []}


def empty_plan() -> dict:
    return {"method": "manual", "params": {}, "ops": [], "removed": [], "merged": [], "notes": ""}


def format_layers(layers: list[int]) -> str:
    """[3, 7, 10, 11, 12] -> '3,7,10-12' (the syntax `parse_layers` reads)."""
    out, run = [], []
    for i in sorted(set(layers)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def parse_groups(text: str | None) -> list[list[int]]:
    """'10-12; 20,21' -> [[10, 11, 12], [20, 21]]: blocks of layers to merge, ';'-separated."""
    groups = [sorted(set(parse_layers(part))) for part in (text or "").split(";") if part.strip()]
    return [g for g in groups if g]


def format_groups(groups: list[list[int]]) -> str:
    return "; ".join(format_layers(g) for g in groups)


def merge_weights(n: int, rule: str) -> list[float]:
    """Weights of the n layers of a merged block (see MERGE_RULES)."""
    if rule == "average":
        return [1.0 / n] * n
    if rule == "laco":
        return [1.0 - (n - 1)] + [1.0] * (n - 1)
    raise LayerError(f"unknown merge rule '{rule}'; use one of {', '.join(MERGE_RULES)}")


def manual_plan(num_layers: int, drops: list[int], merges: list[list[int]],
                rule: str = "average") -> dict:
    """A plan (see module docstring) that merges each block, then drops the given layers.

    All indices are original layer indices; they are translated into the slot indices each recipe
    op expects (a merge removes slots, which shifts the layers after it).
    """
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
    current = list(range(num_layers))          # slot -> original layer
    ops = []
    for g in sorted(merges):
        slots = [current.index(i) for i in g]
        ops.append({"op": "merge", "layers": slots, "weights": merge_weights(len(g), rule),
                    "summary": f"merge({format_layers(g)}; {rule})"})
        current = [i for i in current if i not in g[1:]]
    if drops:
        ops.append({"op": "drop", "layers": sorted(current.index(i) for i in drops)})
    return {"method": "manual", "params": {"merge_rule": rule} if merges else {}, "ops": ops,
            "removed": sorted(drops), "merged": sorted(merges), "notes": ""}


def layers_removed(plan: dict, num_layers: int = 0) -> int:
    """Layers the plan takes away: drops, plus all but one layer of each merged block (a method's
    plan states its resulting size, which also covers replacements)."""
    if "layers_after" in plan and num_layers:
        return num_layers - int(plan["layers_after"])
    return len(plan.get("removed", [])) + sum(len(g) - 1 for g in plan.get("merged", []))


def toggle_block(drops_text: str, merges_text: str, start: int, stop: int,
                 action: str) -> tuple[str, str]:
    """Add the block of layers start..stop-1 to the drops or the merges (remove it if present)."""
    block = list(range(start, stop))
    drops = sorted(set(parse_layers(drops_text)))
    merges = parse_groups(merges_text)
    if action == "merge":
        if len(block) < 2:
            raise LayerError("a merge needs a block of at least two layers: click a cell two or "
                             "more steps away from the diagonal")
        merges = [g for g in merges if g != block] if block in merges else \
            [g for g in merges if not set(g) & set(block)] + [block]
    else:
        drops = sorted(set(drops) - set(block)) if set(block) <= set(drops) \
            else sorted(set(drops) | set(block))
    return format_layers(drops), format_groups(sorted(merges))
