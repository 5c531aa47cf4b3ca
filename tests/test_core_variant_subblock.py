"""Sub-block drops (Variant.drop_part): an attention or MLP block removed alone, on tiny models.

Checked against independent computations: forward hooks that zero the same projections' outputs
on the untouched model, a plain transformers reload of the export, and Variant.drop for a layer
that lost both parts.
"""

from __future__ import annotations

import pytest
import torch

from explorer import LayerError, Recipe, Variant, export, load_model, perplexity
from explorer.evaluate.windows import evaluation_windows

SEQ, TOKENS = 64, 1024


def _ppl(lm, text, variant=None):
    return perplexity(lm, text, variant=variant, seqlen=SEQ, max_tokens=TOKENS).ppl


def _hooked_ppl(lm, text, zeroed):
    """Perplexity of the untouched model with the outputs of the given projections set to zero."""
    def zero(module, args, output):
        return torch.zeros_like(output)
    handles = [m.register_forward_hook(zero) for m in zeroed]
    try:
        return perplexity(lm, text, seqlen=SEQ, max_tokens=TOKENS, cache=False).ppl
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_dropped_parts_match_zeroed_outputs_and_export(tiny_factory, tmp_path, sample_text,
                                                        family):
    from transformers import AutoModelForCausalLM

    lm = load_model(str(tiny_factory(family, num_layers=4)))
    arch = lm.arch
    v = Variant.identity(lm).drop_part(1, "attn").drop_part(2, "mlp")
    got = _ppl(lm, sample_text, v)
    layers = lm.original_layers
    want = _hooked_ppl(lm, sample_text, [arch.part(layers[1], arch.attn_o),
                                         arch.part(layers[2], arch.mlp_down)])
    assert got == pytest.approx(want, rel=1e-6)
    assert got != pytest.approx(_ppl(lm, sample_text), rel=1e-4)   # the drop did something
    # the loaded model's own weights are untouched
    assert arch.part(layers[1], arch.attn_o).weight.abs().sum() > 0

    out = export(v, tmp_path / "parts")
    plain = AutoModelForCausalLM.from_pretrained(out)           # transformers alone
    w = evaluation_windows(lm, sample_text, SEQ, TOKENS)
    with torch.no_grad():
        loss = plain(input_ids=w, labels=w).loss.item()         # mean NLL over every window
    assert torch.exp(torch.tensor(loss)).item() == pytest.approx(got, rel=1e-5)


def test_second_part_drops_the_layer_and_recipe_replays(tiny_lm, sample_text):
    v = Variant.identity(tiny_lm).drop_part(3, "mlp").drop_part(3, "attn")
    assert v.num_layers == tiny_lm.num_layers - 1
    assert _ppl(tiny_lm, sample_text, v) == pytest.approx(
        _ppl(tiny_lm, sample_text, Variant.identity(tiny_lm).drop([3])), rel=1e-6)

    w = Variant.identity(tiny_lm).drop([0]).drop_part(1, "attn")   # slot 1 = original layer 2
    again = Recipe.from_json(Recipe.of(w).to_json()).build(tiny_lm)
    assert again.layer_labels() == w.layer_labels() == ["1", "2-attn", "3", "4", "5"]
    assert _ppl(tiny_lm, sample_text, again) == pytest.approx(_ppl(tiny_lm, sample_text, w),
                                                              rel=1e-6)
    # memory: only the zeroed projection is new, the rest is shared with the model
    o = tiny_lm.arch.part(tiny_lm.original_layers[2], tiny_lm.arch.attn_o)
    assert w.extra_bytes() == o.weight.numel() * o.weight.element_size()


def test_bad_sub_block_drops_are_refused(tiny_lm):
    v = Variant.identity(tiny_lm)
    with pytest.raises(LayerError, match="unknown sub-block 'ffn'"):
        v.drop_part(1, "ffn")
    with pytest.raises(LayerError, match="already dropped"):
        v.drop_part(1, "mlp").drop_part(1, "mlp")
    with pytest.raises(LayerError, match="out of range"):
        v.drop_part(99, "attn")
    with pytest.raises(LayerError, match="'part'"):
        Recipe(model="tiny", num_layers=6, ops=[{"op": "drop_part", "layer": 1}]).build(tiny_lm)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_part_influence_matches_the_stream_with_the_mlp_dropped(tiny_factory, sample_text,
                                                                family):
    """BI of each block, against h_i taken from a variant whose slot i has its MLP dropped."""
    import torch.nn.functional as F

    from explorer.core.backbone import run_backbone
    from explorer.probe.probe import calibration_windows, part_influence

    lm = load_model(str(tiny_factory(family, num_layers=4)))
    ids = calibration_windows(lm, sample_text, 32, 6)
    prof = part_influence(lm, input_ids=ids)
    x = next(run_backbone(lm, ids, record=range(5), batch_size=6)).states
    for i in range(4):
        v = Variant.identity(lm).drop_part(i, "mlp")
        h = next(run_backbone(lm, ids, variant=v, stop=i + 1, record=[i + 1],
                              batch_size=6)).states[i + 1]
        a, m, y = x[i][:, 1:], h[:, 1:], x[i + 1][:, 1:]           # first position left out
        assert prof.attn[i].item() == pytest.approx(
            (1 - F.cosine_similarity(a, m, dim=-1)).mean().item(), rel=1e-5, abs=1e-7)
        assert prof.mlp[i].item() == pytest.approx(
            (1 - F.cosine_similarity(m, y, dim=-1)).mean().item(), rel=1e-5, abs=1e-7)
    assert prof.tokens == ids.shape[0] * (ids.shape[1] - 1)
    assert (prof.attn > 0).all() and (prof.mlp > 0).all()
