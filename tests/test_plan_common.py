"""Every method on a tiny model: the result runs, has finite perplexity, generates, leaves the
loaded model's weights bit-identical, and its recipe replays to the same outputs."""

import math

import pytest
import torch

from explorer import Recipe, generate, perplexity
from explorer.apply import fitted
from explorer.plan import METHODS, Method, PlanContext, compress
from tiny import same_weights

# every registered method with each parameter set it declares (`Method.examples`): a method added
# to the registry is covered here without editing this file
CASES = {f"{name}-{k}": (name, params) for name, m in METHODS.items()
         for k, params in enumerate(m.examples)}


def test_every_registered_method_has_a_case():
    assert {name for name, _ in CASES.values()} == set(METHODS)
    for name, params in CASES.values():
        METHODS[name].resolve(params)                 # the examples are valid parameters


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_result_runs_and_replays(tiny_lm, sample_text, case, tmp_path):
    lm = tiny_lm
    before = {k: t.clone() for k, t in lm.model.state_dict().items()}
    name, params = CASES[case]
    plan = compress(lm, name, remove=2, calibration=sample_text, seqlen=32, num_samples=4,
                    **params)
    v = plan.variant
    assert plan.method == name and all(0 <= i < 6 for i in plan.removed)
    # 2 layers' worth removed: whole layers, or sub-blocks counted in parameters (blockpruner)
    m = METHODS[name]
    assert m.removed_count(PlanContext(lm, sample_text), plan) == 2
    if type(m).removed_count is Method.removed_count:
        assert v.num_layers == 4 and len(plan.removed) == 2
    assert set(plan.params) >= set(params) and plan.notes
    r = perplexity(lm, sample_text, variant=v, seqlen=32, max_tokens=256)
    assert math.isfinite(r.ppl) and r.ppl > 1
    out = generate(lm, ["The quick brown"], variant=v, max_new_tokens=4)
    assert isinstance(out[0], str)
    after = lm.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert lm.config.num_hidden_layers == 6
    # the recipe survives JSON; saved with its fitted tensors it rebuilds the same bits without
    # this process's memory of the plan, and from the JSON alone the same model (fitted again)
    recipe = Recipe.from_json(plan.recipe().to_json())
    assert recipe.method == name and recipe.params == plan.params
    recipe.save(tmp_path / "recipe.json", lm)
    fitted.RESULTS.clear()
    assert same_weights(Recipe.load(tmp_path / "recipe.json").build(lm), v)
    fitted.RESULTS.clear()
    said = []
    rebuilt = recipe.build(lm, report=said.append)
    assert len(said) == len(recipe.fitted_ops())
    ids = lm.tokenizer("numbers like 37 appear", return_tensors="pt").input_ids
    with torch.no_grad():
        with v.applied() as model:
            want = model(ids).logits
        with rebuilt.applied() as model:
            got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
