"""Method `damage`: its plans are the argmin of the measured map, recomputed after each greedy
removal; several sizes share one search and agree with single plans."""

from __future__ import annotations

import pytest

from explorer.measure.damage import damage_map
from explorer.plan import PlanContext, get_method
from explorer.core.variant import Variant


@pytest.fixture(scope="module")
def ctx(tiny_lm, sample_text):
    return PlanContext(tiny_lm, sample_text, seqlen=32, num_samples=4)


def test_block_mode_removes_the_measured_least_damaging_block(tiny_lm, ctx):
    dm = damage_map(tiny_lm, ctx.input_ids[:3], max_block=2)
    plans = get_method("damage").plans(ctx, [1, 2], samples=3)
    for n, plan in plans.items():
        best = min(dm.cells(n), key=lambda c: (float(dm.nll[c]), c[0]))
        assert plan.removed == list(range(*best))
        assert plan.variant.num_layers == 6 - n
    assert plans[2].removed == get_method("damage").plan(ctx, 2, samples=3).removed


def test_greedy_measures_again_after_each_removal(tiny_lm, ctx):
    ids = ctx.input_ids[:3]
    plan = get_method("damage").plan(ctx, 2, mode="greedy", samples=3, metric="kl")
    first = damage_map(tiny_lm, ids, max_block=1)
    l1 = min(range(6), key=lambda i: (float(first.kl[i, i + 1]), i))
    # the second removal: the singles of the model without l1, in its own slot numbering
    base = Variant.identity(tiny_lm).drop([l1])
    second = damage_map(tiny_lm, ids, max_block=1, base=base)
    s2 = min(range(5), key=lambda i: (float(second.kl[i, i + 1]), i))
    assert plan.removed == sorted([l1, base.slots[s2]])
    costs = plan.scores["kl of each removal"]
    assert costs[0] == pytest.approx(float(first.kl[l1, l1 + 1]))
    assert costs[1] == pytest.approx(float(second.kl[s2, s2 + 1]))


def test_notes_name_the_measured_damage_as_the_map_does(tiny_lm, ctx):
    """The plan's notes quote the damage it measured, in the map's own words and units."""
    from explorer.measure.damage import METRIC_NAMES

    dm = damage_map(tiny_lm, ctx.input_ids[:2], max_block=2)
    plan = get_method("damage").plan(ctx, 2, samples=2)
    least = min(float(dm.nll[c]) for c in dm.cells(2))
    assert f"measured {METRIC_NAMES['nll']} was {least:.4f} nats/token" in plan.notes
    greedy = get_method("damage").plan(ctx, 1, mode="greedy", metric="kl", samples=2)
    assert f"least measured {METRIC_NAMES['kl']} among the layers left" in greedy.notes
    labels = dict(next(p for p in get_method("damage").params if p.name == "metric").choice_labels)
    assert labels == {"nll": METRIC_NAMES["nll"], "kl": METRIC_NAMES["kl"]}
