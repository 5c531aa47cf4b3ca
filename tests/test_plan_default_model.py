"""End to end on the real default model (SmolLM2-135M-Instruct (Q4_1), 30 layers): the methods find its redundant
middle layers and the result stays a usable model."""

import math

import pytest

from explorer import generate, perplexity
from explorer.plan import compress


@pytest.mark.slow
def test_shortgpt_and_linear_streamline_on_smollm2(smol, wiki):
    kw = dict(calibration=wiki.calibration, seqlen=128, num_samples=8)
    ppl = lambda v=None: perplexity(smol, wiki.evaluation, variant=v, seqlen=256,
                                    max_tokens=1024).ppl
    base = ppl()
    plan = compress(smol, "shortgpt", remove=1, **kw)
    assert len(plan.scores["bi"]) == 30 and 8 <= plan.removed[0] <= 20   # a middle layer
    assert base < ppl(plan.variant) < 1.3 * base
    plan = compress(smol, "streamline", remove=2, replacement="linear", **kw)
    assert "likely overfits" in plan.notes          # 8 x 127 tokens for 577 unknowns per output
    plan = compress(smol, "streamline", remove=2, replacement="linear", **dict(kw, num_samples=32))
    assert "overfits" not in plan.notes and plan.variant.num_layers == 28 and 8 <= plan.merged[0][0] <= 20
    after = ppl(plan.variant)
    assert math.isfinite(after) and after < 2 * base
    assert generate(smol, ["The capital of France is"], variant=plan.variant, max_new_tokens=6)[0]
