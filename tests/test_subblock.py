"""Sub-block drops (Variant.drop_part): an attention or MLP block removed alone, on tiny models.

Checked against independent computations: forward hooks that zero the same projections' outputs
on the untouched model, a plain transformers reload of the export, and Variant.drop for a layer
that lost both parts.
"""

from __future__ import annotations

import pytest
import torch

from explorer import LayerError, Recipe, Variant, export, load_model, perplexity
from explorer.evaluate import evaluation_windows

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
