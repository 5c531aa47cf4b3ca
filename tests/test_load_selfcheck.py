"""The self-checks of issue 29 on tiny random models: at load the explorer's logits must be the
model's own (Granite's logits_scaling, OPT's output projection after the final norm), a model
it cannot match is refused in one line, and an export whose config cannot describe the
variant's layers is refused instead of written (Jamba's period pattern, SmolLM3's
no_rope_layers). The reference is always plain transformers: the model's own forward, with
forward hooks that pass a dropped layer's input through."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from explorer import Variant, export, load_model, perplexity
from explorer.core.errors import LayerError, ModelLoadError
from conformance import dropped_logits
from tiny import SAMPLE_TEXT, VOCAB, byte_tokenizer

BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, num_hidden_layers=4)


def build(folder, model_type: str, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **{**BASE, **overrides})
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return str(folder)


IDS = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(5))


def test_granite_perplexity_is_the_models_own(tmp_path):
    """Granite divides its logits by logits_scaling: the explorer's perplexity equals the one
    from the model's own logits (it was 21% too high before the logit rule)."""
    lm = load_model(build(tmp_path, "granite", logits_scaling=4.0, embedding_multiplier=3.0,
                          residual_multiplier=0.5, attention_multiplier=0.3))
    assert lm.self_check.passed and lm.arch.logits.scale == pytest.approx(0.25)
    r = perplexity(lm, SAMPLE_TEXT, seqlen=32, max_tokens=320)
    ids = torch.tensor(lm.tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"][:320])
    with torch.no_grad():
        logits = lm.model(input_ids=ids.view(10, 32)).logits.float()
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids.view(10, 32)[:, 1:].reshape(-1))
    assert r.ppl == pytest.approx(float(torch.exp(nll)), rel=1e-5)


def test_a_model_the_explorer_cannot_match_is_refused(tmp_path, monkeypatch, capsys):
    """Were the explorer blind to Granite's logits_scaling (as it was), the self-check finds the
    difference and loading stops with one line; the CLI prints that line."""
    from explorer.load import arch
    from explorer.cli import main

    folder = build(tmp_path, "granite", logits_scaling=4.0)
    monkeypatch.setattr(arch, "logit_rule", lambda model: arch.LogitRule())
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    msg = str(info.value)
    assert "granite family fails the self-check" in msg and "\n" not in msg
    assert main(["eval", "--model", folder, "--seqlen", "16"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {msg}"


def test_opt_tail_holds_the_output_projection(tmp_path):
    """OPT with word_embed_proj_dim < hidden applies final_layer_norm then project_out after the
    last layer: found by watching its forward; a drop equals plain transformers'."""
    lm = load_model(build(tmp_path, "opt", ffn_dim=64, word_embed_proj_dim=16))
    assert lm.arch.final_norm == ("model.decoder.final_layer_norm", "model.decoder.project_out")
    assert lm.self_check.passed
    from explorer.load.selfcheck import variant_logits

    v = Variant.identity(lm).drop([2])
    assert torch.allclose(variant_logits(v, IDS), dropped_logits(lm, IDS, [2]), atol=1e-5)


def test_jamba_pattern_is_rewritten_or_the_export_refused(tmp_path):
    """Jamba's attention layers are those with i % attn_layer_period == attn_layer_offset: a drop
    that leaves a periodic pattern is written with the new period and reloads equal; one that
    does not is refused in one line naming the field, and nothing is written."""
    lm = load_model(build(tmp_path / "m", "jamba", num_experts=4, attn_layer_period=2,
                          attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1))
    assert lm.arch.is_hybrid and lm.arch.is_moe
    v = Variant.identity(lm).drop([1])          # mamba, mamba, attention: period 3, offset 2
    out = export(v, tmp_path / "ok")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["attn_layer_period"], cfg["attn_layer_offset"]) == (3, 2)
    check = json.loads((out / "layer_explorer_check.json").read_text())
    assert check["checked"] and check["max_diff"] <= check["tolerance"]
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(str(out))
    with torch.no_grad():
        got = back(input_ids=IDS, use_cache=False).logits.float()
    assert torch.allclose(got, dropped_logits(lm, IDS, [1]), atol=1e-5)
    bad = Variant.identity(lm).drop([2])        # mamba, attention, attention: no period
    with pytest.raises(LayerError) as info:
        export(bad, tmp_path / "bad")
    assert "attn_layer_period" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "bad").exists()


def test_smollm3_export_keeps_each_layers_rope(tmp_path, monkeypatch):
    """SmolLM3's no_rope_layers follows the kept layers (the export gave a layer RoPE that had
    none); an export whose config lost that list is caught by the reload check."""
    from explorer.apply import layer_config

    lm = load_model(build(tmp_path / "m", "smollm3", no_rope_layers=[1, 1, 0, 1]))
    v = Variant.identity(lm).drop([1])
    out = export(v, tmp_path / "ok")
    assert json.loads((out / "config.json").read_text())["no_rope_layers"] == [1, 0, 1]
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(str(out))(input_ids=IDS).logits.float()
    assert torch.allclose(got, dropped_logits(lm, IDS, [1]), atol=1e-5)
    real = layer_config.updates

    def forgetful(original, config, origins):       # the old rewrite: layer count only
        fields = real(original, config, origins)
        return {k: v for k, v in fields.items() if k != "no_rope_layers"}

    monkeypatch.setattr(layer_config, "updates", forgetful)
    with pytest.raises(LayerError, match="reloads with logits that differ"):
        export(v, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
