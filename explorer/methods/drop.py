"""`drop`: delete the layers the user names (the simplest baseline).

Example:
    >>> plan = compress(lm, "drop", layers=[14, 15])     # remove is implied: 2
    >>> plan.variant.num_layers
    28
"""

from __future__ import annotations

from ..errors import LayerError
from ..variant import Variant
from .layout import Layout
from .registry import Method, Plan, PlanContext, register


@register
class Drop(Method):
    """Parameters:
        layers: list of original layer indices to delete; its length must equal `remove`.
    """

    name = "drop"
    title = "Drop chosen layers"
    paper = "baseline"
    description = ("Deletes exactly the layers you pick. Each remaining layer then reads the output "
                   "of the layer before the gap, so the residual stream skips the removed "
                   "computation. Use it to test your own hypothesis about which layers are "
                   "redundant, for instance after reading the similarity heatmap.")
    defaults = {"layers": []}

    def implied_remove(self, params: dict) -> int | None:
        return len(params["layers"]) or None

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        layers = params["layers"]
        if not isinstance(layers, (list, tuple)) or not layers:
            raise LayerError("method 'drop' needs layers: the list of layers to delete")
        if len(layers) != remove:
            raise LayerError(f"drop: {len(layers)} layers named but remove={remove}")
        v = Variant.identity(ctx.lm).drop(list(layers))
        lay = Layout.identity(ctx.lm.num_layers).drop(layers)
        return Plan(self.name, {**params, "layers": sorted(layers)}, v,
                    lay.removed(ctx.lm.num_layers), [], {},
                    f"Dropped the chosen layers {sorted(layers)}.")
