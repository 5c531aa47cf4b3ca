"""`drop`: delete the layers the user names (the simplest baseline).

Example:
    >>> plan = compress(lm, "drop", layers=[14, 15])     # remove is implied: 2
    >>> plan.variant.num_layers
    28
"""

from __future__ import annotations

from explorer.core.errors import LayerError
from explorer.core.params import Param
from explorer.plan.registry import Method, Plan, PlanContext, register


@register
class Drop(Method):

    name = "drop"
    title = "Drop chosen layers"
    paper = "baseline"
    description = ("Deletes exactly the layers you pick. Each remaining layer then reads the output "
                   "of the layer before the gap, so the residual stream skips the removed "
                   "computation. Use it to test your own hypothesis about which layers are "
                   "redundant, for instance after reading the similarity heatmap.")
    params = (Param("layers", list, [], "original layer indices to delete, e.g. [14, 15] or "
                    "14-15; their number is the layers removed",
                    label="Layers to drop"),)
    examples = ({"layers": [1, 3]},)

    def implied_remove(self, params: dict) -> int | None:
        return len(params["layers"]) or None

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        layers = params["layers"]
        if not layers:
            raise LayerError("method 'drop' needs layers: the list of layers to delete")
        if len(layers) != remove:
            raise LayerError(f"drop: {len(layers)} layers named but remove={remove}")
        return self.drop_plan(ctx, {**params, "layers": sorted(layers)}, layers, {},
                              f"Dropped the chosen layers {sorted(layers)}.")
