"""Every method on a tiny model: the result runs, has finite perplexity, generates, leaves the
loaded model's weights bit-identical, and its recipe replays to the same outputs."""

import math

import pytest
import torch

from explorer import Recipe, generate, perplexity
from explorer.methods import compress

CASES = {
    "drop": dict(layers=[1, 3]),
    "tail": {},
    "shortgpt": {},
    "angular": {},
    "mka": {},                                   # NPIB, adjacent pairs, paper weights
    "laco": dict(C=3, T=-1.0),                   # accept every merge: the walk must still stop
    "streamline": dict(steps=3),                 # a trained decoder layer
    "streamline-linear": dict(replacement="linear"),
    "come": {},
    "evopress": dict(generations=2, seed=1),     # a search of two generations from angular
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_result_runs_and_replays(tiny_lm, sample_text, case):
    lm = tiny_lm
    before = {k: t.clone() for k, t in lm.model.state_dict().items()}
    name = case.split("-")[0]
    plan = compress(lm, name, remove=2, calibration=sample_text, seqlen=32, num_samples=4,
                    **CASES[case])
    v = plan.variant
    assert v.num_layers == 4 and plan.method == name
    assert len(plan.removed) == 2 and all(0 <= i < 6 for i in plan.removed)
    assert set(plan.params) >= set(CASES[case]) and plan.notes
    r = perplexity(lm, sample_text, variant=v, seqlen=32, max_tokens=256)
    assert math.isfinite(r.ppl) and r.ppl > 1
    out = generate(lm, ["The quick brown"], variant=v, max_new_tokens=4)
    assert isinstance(out[0], str)
    after = lm.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert lm.config.num_hidden_layers == 6
    # the recipe survives JSON and rebuilds the same model
    recipe = Recipe.from_json(plan.recipe().to_json())
    assert recipe.method == name and recipe.params == plan.params
    rebuilt = recipe.build(lm)
    ids = lm.tokenizer("numbers like 37 appear", return_tensors="pt").input_ids
    with torch.no_grad():
        with v.applied() as model:
            want = model(ids).logits
        with rebuilt.applied() as model:
            got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
