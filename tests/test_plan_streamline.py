"""LLM-Streamline: block choice, the closed-form linear fit, the trained replacements, export rule."""

import pytest
import torch

from explorer import ExplorerError, LayerError, export, load_model
from explorer.measure.measures import similarity
from explorer.plan import PlanContext, compress, get_method
from explorer.core.passes import LayerCall
from explorer.plan.fitting import Pair
from explorer.plan.streamline import FFNReplacement, LinearReplacement, fit_linear

KW = dict(seqlen=32, num_samples=4)


def test_linear_fit_recovers_an_exactly_linear_map():
    g = torch.Generator().manual_seed(1)
    H = 16
    A = torch.randn(H, H, generator=g)
    c = torch.randn(H, generator=g)
    pairs = []
    for _ in range(3):                                   # streamed over three batches
        x = torch.randn(2, 20, H, generator=g)
        y = x @ A.T + c
        y[:, 0] = 1e4                                    # first position: left out of the fit
        pairs.append(Pair(x, y, LayerCall((), {})))
    mod = fit_linear(pairs, skip_first=True, ridge=0.0)
    torch.testing.assert_close(mod.proj.weight, A, rtol=0, atol=1e-4)
    torch.testing.assert_close(mod.proj.bias, c, rtol=0, atol=1e-4)
    x = torch.randn(1, 5, H, generator=g)
    torch.testing.assert_close(mod(x, None, foo=1), x @ A.T + c, rtol=0, atol=1e-3)


@pytest.mark.parametrize("kind", ["linear", "ffn", "layer"])
def test_streamline_replaces_the_most_similar_block(tiny_lm, sample_text, kind):
    ctx = PlanContext(tiny_lm, sample_text, **KW)
    plan = get_method("streamline").plan(ctx, 2, replacement=kind, steps=8)
    sim = similarity(ctx.probe(), "cosine")
    j = max(range(4), key=lambda i: float(sim[i, i + 3]))        # blocks of remove + 1 = 3 layers
    assert plan.merged == [[j, j + 1, j + 2]] and plan.variant.num_layers == 4
    new = plan.variant.layer(j)
    expected = {"linear": LinearReplacement, "ffn": FFNReplacement,
                "layer": type(tiny_lm.arch.layer_list(tiny_lm.model)[0])}[kind]
    assert type(new) is expected
    assert "MSE" in plan.notes and plan.recipe().ops[0]["op"] == "streamline"


def test_trained_layer_gets_closer_to_the_block_output(tiny_lm, sample_text):
    from explorer.plan.fitting import block_mse, capture_block

    ctx = PlanContext(tiny_lm, sample_text, **KW)
    plan = get_method("streamline").plan(ctx, 2, replacement="layer", steps=30, lr=1e-3)
    j = plan.merged[0][0]
    pairs = capture_block(tiny_lm, plan.variant.__class__.identity(tiny_lm), ctx.input_ids, j, j + 3)
    start = block_mse(tiny_lm.arch.layer_list(tiny_lm.model)[j], pairs)   # the initialisation
    assert block_mse(plan.variant.layer(j), pairs) < 0.9 * start


def test_only_the_layer_replacement_exports(tiny_lm, sample_text, tmp_path):
    kw = dict(calibration=sample_text, **KW)
    lin = compress(tiny_lm, "streamline", remove=1, replacement="linear", **kw)
    with pytest.raises(LayerError, match="LinearReplacement"):
        export(lin.variant, tmp_path / "lin")
    layer = compress(tiny_lm, "streamline", remove=1, steps=2, **kw)
    out = export(layer.variant, tmp_path / "layer", recipe=layer.recipe())
    assert load_model(str(out)).num_layers == 5


def test_ffn_replacement_needs_separate_projections(tiny_factory, sample_text):
    lm = load_model(str(tiny_factory("gpt2", num_layers=3)))
    with pytest.raises(ExplorerError, match="gate/up/down"):
        compress(lm, "streamline", remove=1, replacement="ffn", calibration=sample_text, **KW)
    plan = compress(lm, "streamline", remove=1, replacement="layer", steps=2,
                    calibration=sample_text, **KW)
    assert plan.variant.num_layers == 2


@pytest.mark.parametrize("slot", [0, 2])
def test_generation_with_a_stand_in_uses_the_kv_cache_correctly(tiny_lm, slot):
    """A linear stand-in has no attention and never fills its KV-cache slot (slot 0 is the one
    transformers asks for the cached length): greedy generation with the cache must still give
    the tokens of a plain greedy loop without any cache."""
    from explorer import Variant

    H = tiny_lm.config.hidden_size
    rep = LinearReplacement(H)
    with torch.no_grad():      # near the identity, so that the tokens depend on the context
        rep.proj.weight.copy_(torch.eye(H) + 0.05 * torch.randn(H, H, generator=torch.Generator()
                                                                  .manual_seed(1)))
        rep.proj.bias.zero_()
    variant = Variant.identity(tiny_lm).replace([slot, slot + 1], rep, "linear")
    ids = tiny_lm.tokenizer("Hello world, this", return_tensors="pt").input_ids
    with variant.applied() as model:
        cached = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
        loop = ids
        for _ in range(12):
            nxt = model(loop, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            loop = torch.cat([loop, nxt], dim=1)
    assert cached.tolist() == loop[0, ids.shape[1]:].tolist()
    assert len(set(cached.tolist())) > 1          # not a degenerate constant continuation


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_capture_block_replays_each_slot_exactly(tiny_factory, sample_text, family):
    """A layer run standalone with the captured call reproduces the block output exactly: the call
    is the one the model made to that slot (gemma3 gives sliding and full layers different masks
    and rotary embeddings)."""
    from explorer import Variant
    from explorer.plan.fitting import block_mse, capture_block

    lm = load_model(str(tiny_factory(family, num_layers=6)))
    types = getattr(lm.config, "layer_types", None) or ["full_attention"] * 6
    ctx = PlanContext(lm, sample_text, seqlen=40, num_samples=5)
    v = Variant.identity(lm)
    for j in range(6):
        pairs = capture_block(lm, v, ctx.input_ids, j, j + 1, batch_size=2)
        assert [p.x.shape[0] for p in pairs] == [2, 2, 1]
        assert block_mse(v.layer(j), pairs, skip_first=False) == 0.0, (j, types[j])
    if family == "gemma3_text":
        assert len(set(types)) == 2          # both kinds of layer were checked
