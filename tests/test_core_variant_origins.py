"""The origin map on Variant: which original layers each slot stands for, the one place that
answers it for the methods, the plans, the report and the app."""

import pytest

from explorer import LayerError, Variant
from explorer.apply.recipe import Recipe, replay
from explorer.heal.cuts import with_slot


def test_the_variant_tracks_original_indices(tiny_lm):
    """The origin map on Variant: merges, drops and a trained stand-in, in slot indices, keep
    saying which original layers each slot stands for (tiny_lm has 6 layers)."""
    v = Variant.identity(tiny_lm).merge([1, 2], [0.5, 0.5]).drop([0])     # (1,2) 3 4 5
    v = v.merge([2, 3], [0.5, 0.5])                                       # (1,2) 3 (4,5)
    assert v.groups == ((1, 2), (3,), (4, 5))
    assert v.removed() == [0, 2, 5] and v.merged() == [[1, 2], [4, 5]]
    assert v.slot_of(5) == 2 and v.slot_of(3) == 1 and v.origin(2) == 4
    with pytest.raises(LayerError, match="dropped"):
        v.slot_of(0)
    with pytest.raises(LayerError, match="out of range"):
        v.slot_of(6)
    healed = with_slot(v, 0, v.layer(0), "fit")        # a stand-in keeps the block it replaces
    assert healed.groups == v.groups
    part = v.drop_part(1, "mlp")                       # half a layer still stands for it
    assert part.groups == v.groups and part.removed() == v.removed()
    assert part.drop_part(1, "attn").groups == ((1, 2), (4, 5))   # both parts gone: dropped


def test_the_origin_map_survives_a_recipe(tiny_lm):
    """A replayed recipe gives the same groups as the variant it was made from."""
    v = Variant.identity(tiny_lm).merge([3, 4], [0.5, 0.5]).drop([1]).merge([0, 1], [0.7, 0.3])
    assert v.groups == ((0, 2), (3, 4), (5,))
    again = replay(tiny_lm, Recipe.of(v).ops)
    assert again.groups == v.groups and again.removed() == [1, 2, 4]
