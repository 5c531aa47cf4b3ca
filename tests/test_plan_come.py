"""CoMe: the concatenation merge computes the parallel sum of the two layers when their parts fit
in one layer's width, keeps shapes exportable, and refuses families it cannot merge."""

import pytest
import torch

from explorer import ExplorerError, Variant, export, load_model
from explorer.plan import PlanContext, compress
from explorer.plan.come import merge_pair

KW = dict(seqlen=32, num_samples=4)


@pytest.fixture()
def half_zero(tiny_factory):
    """A private 6-layer tiny llama (4 query heads, 2 KV groups of 2, head dim 8, 64 channels)
    where layer 2 only uses KV group 0 and channels 0..31, and layer 3 only KV group 1 and
    channels 32..63 (the other parts' output weights are zero), so both fit in one layer."""
    lm = load_model(str(tiny_factory("llama", num_layers=6)))
    layers = lm.arch.layer_list(lm.model)
    with torch.no_grad():
        layers[2].self_attn.o_proj.weight[:, 16:] = 0
        layers[2].mlp.down_proj.weight[:, 32:] = 0
        layers[3].self_attn.o_proj.weight[:, :16] = 0
        layers[3].mlp.down_proj.weight[:, :32] = 0
        for layer in layers:                            # distinct norms, so folding matters
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    return lm


def test_merged_layer_is_the_parallel_sum_of_both_layers(half_zero, sample_text):
    lm = half_zero
    before = {k: t.clone() for k, t in lm.model.state_dict().items()}
    ctx = PlanContext(lm, sample_text, **KW)
    v, label = merge_pair(ctx, Variant.identity(lm), 2, {"recover_steps": 0, "recover_lr": 1e-4})
    assert v.num_layers == 5 and "heads 1:1, channels 32:32" in label
    op = v.steps[-1]
    assert op["groups"] == [[0], [1]] and op["channels"] == [list(range(32)), list(range(32, 64))]
    a, b = lm.arch.layer_list(lm.model)[2], lm.arch.layer_list(lm.model)[3]
    merged = v.layer(2)
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(7)[None]
    pe = lm.model.model.rotary_emb(x, pos)
    with torch.no_grad():
        attn = lambda layer, h: layer.self_attn(layer.input_layernorm(h), position_embeddings=pe,
                                                attention_mask=None)[0]
        mlp = lambda layer, h: layer.mlp(layer.post_attention_layernorm(h))
        h = x + attn(a, x) + attn(b, x)                 # both attention parts read x
        want = h + mlp(a, h) + mlp(b, h)                # both FFN parts read h
        got = merged(x, position_embeddings=pe, attention_mask=None)
        got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.all(merged.input_layernorm.weight == 1)
    assert all(torch.equal(before[k], t) for k, t in lm.model.state_dict().items())


def test_come_keeps_the_most_sensitive_parts_and_exports(tiny_lm, sample_text, tmp_path):
    plan = compress(tiny_lm, "come", remove=2, calibration=sample_text, **KW)
    assert plan.variant.num_layers == 4 and sum(len(g) - 1 for g in plan.merged) == 2
    for op in plan.recipe().ops:
        assert len(op["groups"][0]) + len(op["groups"][1]) == 2
        assert len(op["channels"][0]) + len(op["channels"][1]) == 64
    out = export(plan.variant, tmp_path / "come", recipe=plan.recipe())
    lm2 = load_model(str(out))
    ids = plan.variant.lm.tokenizer("the quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad(), plan.variant.applied() as model:
        want = model(ids).logits
    torch.testing.assert_close(lm2.model(ids).logits, want, rtol=1e-4, atol=1e-4)


def test_come_recovery_lowers_the_pair_error(tiny_lm, sample_text):
    from explorer.plan.fitting import block_mse, capture_block

    ctx = PlanContext(tiny_lm, sample_text, **KW)
    base = Variant.identity(tiny_lm)
    plain, _ = merge_pair(ctx, base, 1, {"recover_steps": 0, "recover_lr": 1e-3})
    healed, _ = merge_pair(ctx, base, 1, {"recover_steps": 30, "recover_lr": 1e-3})
    pairs = capture_block(tiny_lm, base, ctx.input_ids, 1, 3)
    assert block_mse(healed.layer(1), pairs) < block_mse(plain.layer(1), pairs)
    assert "calibration" in healed.steps[-1]


@pytest.mark.parametrize("family", ["phi3", "gpt2", "gemma3_text", "qwen3"])
def test_come_refuses_layers_it_cannot_merge(tiny_factory, sample_text, family):
    lm = load_model(str(tiny_factory(family, num_layers=3)))
    with pytest.raises(ExplorerError, match="cannot merge"):
        compress(lm, "come", remove=1, calibration=sample_text, **KW)
