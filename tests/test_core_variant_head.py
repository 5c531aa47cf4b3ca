"""The head slot of a variant (`Variant.head`): tail-finetune trains lm_head with the last k layers
as "Reassessing Layer Pruning" does, the loaded model (whose head is its embedding here, as in
SmolLM2) stays bit-identical, and every path that computes logits uses the variant's head: the
perplexity passes, capability, generation, the export (untied, reloaded by plain transformers),
the streamed export and GGUF."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from explorer import Variant, export, load_model, perplexity
from explorer.evaluate.windows import evaluation_windows
from explorer.evaluate.perplexity import run_windows
from explorer.evaluate.generate import generate
from explorer.heal import heal
from explorer.heal.data import held_out_ppl
from explorer.core.new_layers import head_copy
from tiny import SAMPLE_TEXT, kl_to_dense, state_checksum

SMALL = dict(calibration=SAMPLE_TEXT, seqlen=32, windows=24, held_out=4)


@pytest.fixture(scope="module")
def tied(tiny_factory):
    """A tiny llama whose layers matter (as test_heal's `structured`) and whose head is its input
    embedding, as SmolLM2's and Gemma's are."""
    lm = load_model(str(tiny_factory("llama", num_layers=6, initializer_range=0.15,
                                     tie_word_embeddings=True)))
    assert lm.model.lm_head.weight is lm.model.get_input_embeddings().weight
    return lm


@pytest.fixture(scope="module")
def untied(tiny_factory):
    """The same tiny llama with a head of its own (tie_word_embeddings False)."""
    lm = load_model(str(tiny_factory("llama", num_layers=6, initializer_range=0.15)))
    assert lm.model.lm_head.weight is not lm.model.get_input_embeddings().weight
    return lm


def _with_new_head(lm, seed=0):
    """A variant with a layer dropped and a head of its own, changed from the loaded one (what a
    training leaves; random here, so these tests do not depend on a training)."""
    head = head_copy(lm.model.lm_head)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.add_(0.05 * torch.randn(head.weight.shape, generator=g))
    return Variant.identity(lm).drop([4]).with_head(head)


def _plain_ppl(model, w):
    """exp(mean next-token NLL) of windows w (W, T) from a plain transformers forward."""
    with torch.no_grad():
        logits = model(input_ids=w).logits[:, :-1].float()
    return math.exp(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          w[:, 1:].reshape(-1))))




def _held_out_windows(lm, n=8, T=32, offset=40):
    ids = lm.tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[offset * T:(offset + n) * T]).view(n, T)


def test_tail_finetune_trains_the_head_and_leaves_the_model_alone(tied):
    lm = tied
    before = state_checksum(lm.model)
    loaded_head = lm.model.lm_head.weight.detach().clone()
    v = Variant.identity(lm).drop([4, 5])                  # the tail plan
    r = heal(v, "tail-finetune", k=2, steps=30, lr=1e-3, head_lr=1e-3, **SMALL)
    assert r.healed_head and r.healed_slots == [2, 3] and "the head" in r.variant.describe()
    head = r.variant.head
    assert isinstance(head, torch.nn.Linear) and not torch.equal(head.weight, loaded_head)
    assert head.weight.data_ptr() != lm.model.lm_head.weight.data_ptr()
    ids = _held_out_windows(lm)
    assert kl_to_dense(lm, r.variant, ids) < 0.9 * kl_to_dense(lm, v, ids)
    # the trained head takes part: the same layers with the loaded head do worse on held-out KL
    assert kl_to_dense(lm, r.variant, ids) < kl_to_dense(lm, r.variant.with_head(None), ids)
    assert state_checksum(lm.model) == before
    assert lm.model.lm_head.weight is lm.model.get_input_embeddings().weight
    assert lm.config.tie_word_embeddings is True
    # an own head of a tied model adds its weight to the count (the export is untied)
    assert r.variant.num_parameters() == v.num_parameters() + head.weight.numel()


def test_head_false_trains_the_layers_only(tied):
    v = Variant.identity(tied).drop([4, 5])
    r = heal(v, "tail-finetune", k=2, steps=3, head=False, **SMALL)
    assert r.variant.head is None and not r.healed_head and r.healed_slots == [2, 3]
    assert r.variant.head_module() is tied.model.lm_head


def test_keep_best_restores_the_head(tied):
    """A head learning rate that only makes things worse: keep-best keeps step 0, the head's
    start (the loaded head's bits) included."""
    v = Variant.identity(tied).drop([4, 5])
    r = heal(v, "tail-finetune", k=2, steps=4, lr=0.0, head_lr=0.5, check_every=1, **SMALL)
    assert all(h["held_out_ppl"] > r.held_out_before for h in r.history)
    assert r.steps == 0
    assert torch.equal(r.variant.head.weight, tied.model.lm_head.weight)


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_every_path_uses_the_variants_head(which, request, tmp_path):
    from transformers import AutoModelForCausalLM

    from explorer.evaluate.capability import next_token_accuracy

    lm = request.getfixturevalue(which)
    is_tied = which == "tied"
    loaded_head = lm.model.lm_head
    before = state_checksum(lm.model)
    hv = _with_new_head(lm)
    w = evaluation_windows(lm, SAMPLE_TEXT, 32, 1024)
    with hv.applied() as model:
        assert model.lm_head is hv.head and model.config.tie_word_embeddings is False
        plain = _plain_ppl(model, w)
        with torch.no_grad():
            pred = model(input_ids=w).logits[:, :-1].argmax(-1)
    assert lm.model.lm_head is loaded_head                                     # restored
    assert (lm.model.lm_head.weight is lm.model.get_input_embeddings().weight) == is_tied
    assert lm.config.tie_word_embeddings is is_tied
    dense = perplexity(lm, SAMPLE_TEXT, seqlen=32, max_tokens=1024).ppl   # fills the cache
    cached = perplexity(lm, SAMPLE_TEXT, variant=hv, seqlen=32, max_tokens=1024)
    uncached = perplexity(lm, SAMPLE_TEXT, variant=hv, seqlen=32, max_tokens=1024, cache=False)
    p = run_windows(lm, w, variant=hv)
    layers_only = perplexity(lm, SAMPLE_TEXT, variant=hv.with_head(None), seqlen=32,
                             max_tokens=1024).ppl
    assert abs(layers_only / plain - 1) > 1e-3 and abs(dense / plain - 1) > 1e-3   # it matters
    for got in (cached.ppl, uncached.ppl, math.exp(p.mean), held_out_ppl(lm, hv, w)):
        assert got == pytest.approx(plain, rel=1e-5)
    acc, n = next_token_accuracy(lm, w, variant=hv)
    assert acc == pytest.approx(float((pred == w[:, 1:]).float().mean()), abs=1e-9)
    # the export: untied config, lm_head.weight written, plain transformers gives the same figure
    out = export(hv, tmp_path / "with-head")
    back = AutoModelForCausalLM.from_pretrained(out)
    assert back.config.tie_word_embeddings is False
    assert back.lm_head.weight is not back.get_input_embeddings().weight
    assert torch.equal(back.lm_head.weight, hv.head.weight)
    assert torch.equal(back.get_input_embeddings().weight, lm.model.get_input_embeddings().weight)
    assert _plain_ppl(back, w) == pytest.approx(plain, rel=1e-5)
    assert sum(t.numel() for t in {id(t): t for t in back.parameters()}.values()) == \
        hv.num_parameters()
    from explorer.evaluate.footprint import weights_bytes

    head_bytes = hv.head.weight.numel() * hv.head.weight.element_size()
    # deployed, an own head adds its bytes to a tied model and replaces an untied one's; in this
    # process it is memory on top of the loaded model either way
    assert weights_bytes(hv) == weights_bytes(hv.with_head(None)) + head_bytes * is_tied
    assert hv.extra_bytes() == head_bytes
    assert hv.num_parameters() == hv.with_head(None).num_parameters() + \
        hv.head.weight.numel() * is_tied
    # greedy generation goes through applied(): the same text as the reloaded export's
    prompt = "The tiny model says"
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        theirs = back.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                               do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    assert generate(lm, [prompt], variant=hv, max_new_tokens=8) == \
        [lm.tokenizer.decode(theirs[0, ids.shape[1]:], skip_special_tokens=True)]
    assert state_checksum(lm.model) == before


def test_streamed_export_writes_the_head(tied, tiny_factory, tmp_path):
    """A model whose layers stay in CPU RAM exports layer by layer (stream.save_streamed): the
    variant's head is written there too."""
    from transformers import AutoModelForCausalLM

    folder = tiny_factory("llama", num_layers=6, initializer_range=0.15, tie_word_embeddings=True)
    ram = load_model(str(folder), offload="cpu")
    assert ram.weights is not None
    hv = _with_new_head(ram)
    out = export(hv, tmp_path / "streamed")
    back = AutoModelForCausalLM.from_pretrained(out)
    assert back.config.tie_word_embeddings is False
    assert torch.equal(back.lm_head.weight, hv.head.weight)
    w = evaluation_windows(ram, SAMPLE_TEXT, 32, 512)
    ours = perplexity(ram, SAMPLE_TEXT, variant=hv, seqlen=32, max_tokens=512, cache=False).ppl
    assert _plain_ppl(back, w) == pytest.approx(ours, rel=1e-5)


def test_gguf_writes_the_head(tied, tmp_path, monkeypatch):
    from explorer.export.gguf import export_gguf

    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    hv = _with_new_head(tied)
    path = tmp_path / "head.gguf"
    export_gguf(hv, path, quant="f16")
    back = load_model(str(path))
    assert back.model.lm_head.weight is not back.model.get_input_embeddings().weight
    assert torch.allclose(back.model.lm_head.weight.float(), hv.head.weight, atol=1e-3)
    want = perplexity(tied, SAMPLE_TEXT, variant=hv, seqlen=32, max_tokens=512).ppl
    got = perplexity(back, SAMPLE_TEXT, seqlen=32, max_tokens=512).ppl
    assert abs(got / want - 1) < 0.01
