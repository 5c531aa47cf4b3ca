"""MKA and LaCo: the merged weights follow the papers' formulas exactly."""

import math

import pytest
import torch

from explorer import LayerError, load_model
from explorer.measure.measures import similarity
from explorer.plan import PlanContext, compress, get_method

KW = dict(seqlen=32, num_samples=4)


def linear_names(layer):
    return [n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]


def check_mix(merged, first, second, a):
    """Every linear weight of `merged` is a*first + (1-a)*second; every norm is first's."""
    fm, sm = dict(first.named_modules()), dict(second.named_modules())
    for name, mod in merged.named_modules():
        if isinstance(mod, torch.nn.Linear):
            expect = a * fm[name].weight + (1 - a) * sm[name].weight
            torch.testing.assert_close(mod.weight, expect, rtol=0, atol=1e-7)
    norms = [n for n, p in merged.named_parameters() if "norm" in n]
    assert norms
    for n in norms:
        assert torch.equal(merged.get_parameter(n), first.get_parameter(n))


def test_mka_merges_the_most_similar_adjacent_pair_with_a_equal_to_similarity(tiny_lm, sample_text):
    ctx = PlanContext(tiny_lm, sample_text, **KW)
    plan = get_method("mka").plan(ctx, 1, measure="cosine")
    sim = similarity(ctx.probe(), "cosine")                       # (7, 7) independent measure
    outs = [float(sim[i + 1, i + 2]) for i in range(5)]           # outputs of layers i and i+1
    l = max(range(5), key=lambda i: outs[i])
    assert plan.merged == [[l, l + 1]] and plan.removed == [l + 1]
    a = min(1.0, max(0.0, outs[l]))
    layers = tiny_lm.arch.layer_list(tiny_lm.model)
    check_mix(plan.variant.layer(l), layers[l], layers[l + 1], a)
    assert plan.variant.num_layers == 5


def test_mka_code_weight_rule_and_user_pairs(tiny_lm, sample_text):
    ctx = PlanContext(tiny_lm, sample_text, **KW)
    plan = get_method("mka").plan(ctx, 1, measure="cosine", weight_rule="code", pairs=[[1, 4]])
    sim = similarity(ctx.probe(), "cosine")[1:, 1:]               # layer outputs (6, 6)
    row = [(float(sim[i].sum()) - float(sim[i, i])) / 5 for i in range(6)]
    a = 1 / (1 + math.exp(-row[1] / (row[1] + row[4])))
    assert 0.55 < a < 0.7                                          # the code's ~0.62
    layers = tiny_lm.arch.layer_list(tiny_lm.model)
    check_mix(plan.variant.layer(1), layers[1], layers[4], a)      # non-adjacent, placed at 1
    assert plan.merged == [[1, 4]] and plan.removed == [4]
    assert plan.variant.slots[0] == 0 and plan.variant.slots[2:] == (2, 3, 5)
    # user pairs are original indices, also after an earlier merge
    plan2 = compress(tiny_lm, "mka", pairs=[[2, 3], [3, 4]], measure="cosine",
                     calibration=sample_text, **KW)
    assert plan2.merged == [[2, 3, 4]] and plan2.variant.num_layers == 4
    with pytest.raises(LayerError, match="already merged"):
        compress(tiny_lm, "mka", pairs=[[2, 3], [3, 2]], measure="cosine",
                 calibration=sample_text, **KW)


@pytest.fixture()
def constant_layers(tiny_factory):
    """A private 4-layer tiny llama whose layers 0, 1, 2 have every linear weight 1, 2, 4 and
    distinct norm weights."""
    lm = load_model(str(tiny_factory("llama", num_layers=4)))
    layers = lm.arch.layer_list(lm.model)
    with torch.no_grad():
        for i, value in enumerate((1.0, 2.0, 4.0)):
            for name in linear_names(layers[i]):
                layers[i].get_submodule(name).weight.fill_(value)
            layers[i].input_layernorm.weight.fill_(10.0 + i)
    return lm


@pytest.mark.parametrize("rule,value", [("paper", 5.0), ("code", 4.0)])
def test_laco_rdsc_rule_on_layers_with_weights_1_2_4(constant_layers, sample_text, rule, value):
    lm = constant_layers
    plan = compress(lm, "laco", remove=2, C=3, T=-1.0, rule=rule, calibration=sample_text, **KW)
    assert plan.merged == [[0, 1, 2]] and plan.variant.num_layers == 2   # walk starts at H-C = 0
    merged = plan.variant.layer(0)
    for name in linear_names(merged):
        assert torch.all(merged.get_submodule(name).weight == value), name
    assert torch.all(merged.input_layernorm.weight == 10.0)               # layer 0's norms


def test_laco_threshold_and_walk(tiny_lm, sample_text):
    # the paper's walk: l = H-C = 2, 1, 0 all rejected -> it cannot reach the size and says why
    with pytest.raises(LayerError, match=r"LaCo: the paper's walk \(3 layers per merge\) ended "
                       r"after removing 0 of 2 layers: accepted 0 of 3 merges at an acceptance "
                       r"threshold \(T\) of 1.0 .*\(mode=target\)$"):
        compress(tiny_lm, "laco", remove=2, C=3, T=1.0, mode="walk", calibration=sample_text, **KW)
    plan = compress(tiny_lm, "laco", remove=3, C=2, T=-1.0, mode="walk", calibration=sample_text,
                    **KW)
    # C=2 merges one pair at a time from l = H-C = 3 down by I=1: (3,4), (2,3+4), (1,2+3+4)
    assert plan.merged == [[1, 2, 3, 4]] and plan.variant.num_layers == 3
    assert "accepted 3 of 3" in plan.notes


def test_laco_target_mode_accepts_the_best_candidate_when_none_passes(tiny_lm, sample_text):
    """Nothing passes T=1: each pass accepts its highest-cosine candidate, recomputed here."""
    from explorer import Variant
    from explorer.plan.laco import final_states, mean_cosine, rdsc_weights

    plan = compress(tiny_lm, "laco", remove=2, C=3, T=1.0, calibration=sample_text, **KW)
    assert plan.variant.num_layers == 4 and "1 pass(es) had no merge above the threshold" in plan.notes
    ctx = PlanContext(tiny_lm, sample_text, **KW)
    ids = ctx.input_ids[:8]
    ref = final_states(ctx, Variant.identity(tiny_lm), ids)
    # C=3 on 6 layers: blocks of 3 starting at l = H-C = 2, 1, 0
    cos = {l: mean_cosine(final_states(ctx, Variant.identity(tiny_lm).merge(
        [l, l + 1, l + 2], rdsc_weights(2)), ids), ref) for l in (2, 1, 0)}
    best = max(cos, key=cos.get)
    assert plan.merged == [[best, best + 1, best + 2]]
    assert plan.scores["cosine of tried merges"] == pytest.approx([cos[2], cos[1], cos[0]])
    # default C in target mode is scaled to the depth: max(2, round(7 * 6 / 40)) = 2
    auto = compress(tiny_lm, "laco", remove=2, calibration=sample_text, **KW)
    assert auto.variant.num_layers == 4 and "2 layers per merge" in auto.notes
