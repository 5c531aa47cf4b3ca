"""The no-download capability check: next-token top-1 and last-word cloze accuracy, each equal to
an independent computation (plain forward pass, greedy generation), and lower for a broken
variant of the real model."""

from __future__ import annotations

import pytest
import torch

from explorer import TextError
from explorer.evaluate.capability import (capability, cloze_accuracy, cloze_batch, cloze_items,
                                          multiple_choice, next_token_accuracy)
from explorer.evaluate.windows import evaluation_windows
from explorer.core.variant import Variant


def test_items_come_from_the_text(wiki):
    items = cloze_items(wiki.evaluation, 50)
    assert len(items) == 50 and items == cloze_items(wiki.evaluation, 50)      # deterministic
    for it in items:
        assert f"{it.context} {it.word}." in wiki.evaluation and it.word.isalpha()
    for it, mc in zip(items, multiple_choice(items)):
        assert mc["choices"][mc["answer"]] == " " + it.word and len(set(mc["choices"])) == 4
    with pytest.raises(TextError, match="no sentence long enough"):
        cloze_items("Too short. Really.", 5)


def test_next_token_accuracy_matches_a_plain_forward(tiny_lm, sample_text):
    w = evaluation_windows(tiny_lm, sample_text, 64, 1024)
    variant = Variant.identity(tiny_lm).drop([2])
    got, n = next_token_accuracy(tiny_lm, w, variant)
    with torch.no_grad(), variant.applied() as model:
        pred = model(w).logits[:, :-1].argmax(-1)                        # (W, T-1)
    assert n == pred.numel() and got == pytest.approx((pred == w[:, 1:]).float().mean().item())


@pytest.mark.slow
def test_real_model_cloze_and_a_broken_variant(smol, wiki):
    items = cloze_items(wiki.evaluation, 24)
    ids, spans = cloze_batch(smol, items, 48)
    # Independent: greedy generation from each row's context must give the word's tokens.
    right = 0
    with torch.no_grad():
        for row, (first, word) in enumerate(spans):
            ctx = ids[row:row + 1, :first]
            out = smol.model.generate(ctx, attention_mask=torch.ones_like(ctx), do_sample=False,
                                      max_new_tokens=len(word), pad_token_id=0)
            right += out[0, first:].tolist() == word
    assert cloze_accuracy(smol, ids, spans) == pytest.approx(right / len(spans))

    r = capability(smol, wiki.evaluation, variant=Variant.identity(smol).drop([29]), seqlen=128,
                   max_tokens=512, num_items=24, context_tokens=48, source=wiki.source)
    d, c = r.dense, r.compressed
    assert d.cloze_accuracy == pytest.approx(right / len(spans)) and d.cloze_items == len(spans)
    assert d.next_token_top1 > 0.3 and c.next_token_top1 < d.next_token_top1 - 0.05
    assert c.cloze_accuracy <= d.cloze_accuracy and c.num_layers == 29
    assert set(r.to_dict()) == {"source", "protocol", "dense", "compressed", "generation"}
    assert r.generation.token_agreement < 1 and r.generation.mean_first_disagreement < 32


def test_cli_capability(tiny_factory, sample_text, tmp_path, capsys):
    import json

    from explorer import cli

    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    assert cli.main(["eval", "--model", str(tiny_factory("llama", num_layers=4)), "--text",
                     str(text), "--seqlen", "64", "--max-tokens", "256", "--drop", "1",
                     "--capability", "--json"]) == 0
    cap = json.loads(capsys.readouterr().out)["capability"]
    assert cap["dense"]["num_layers"] == 4 and cap["compressed"]["num_layers"] == 3
    assert 0 <= cap["compressed"]["next_token_top1"] <= 1 and cap["dense"]["cloze_items"] > 0


def _naive_greedy(model, prompt: torch.Tensor, k: int) -> list[int]:
    """Greedy continuation without a KV cache: the whole sequence again at every step."""
    ids = prompt.clone()
    for _ in range(k):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[0, prompt.shape[1]:].tolist()


def test_generative_agreement_matches_a_naive_greedy_loop(tiny_lm, sample_text):
    from explorer.evaluate.capability import generation_prompts, generative_agreement

    variant = Variant.identity(tiny_lm).drop([1, 4])
    K = 12
    prompts = generation_prompts(tiny_lm, sample_text, num_prompts=5, prompt_tokens=16)
    assert prompts.shape[0] == 5
    firsts, equal, forced = [], 0, 0
    with torch.no_grad():
        with Variant.identity(tiny_lm).applied() as model:
            dense = [_naive_greedy(model, prompts[i:i + 1], K) for i in range(5)]
        with variant.applied() as model:
            comp = [_naive_greedy(model, prompts[i:i + 1], K) for i in range(5)]
            for i in range(5):                    # fed the dense continuation
                full = torch.cat([prompts[i:i + 1], torch.tensor([dense[i]])], dim=1)
                pred = model(full).logits[0, prompts.shape[1] - 1:-1].argmax(-1).tolist()
                forced += sum(p == d for p, d in zip(pred, dense[i]))
    for d, c in zip(dense, comp):
        firsts.append(next((j for j in range(K) if d[j] != c[j]), K))
        equal += sum(a == b for a, b in zip(d, c))
    g = generative_agreement(tiny_lm, sample_text, variant, num_prompts=5, prompt_tokens=16,
                             new_tokens=K)
    assert g.prompts == 5 and g.new_tokens == K
    assert g.mean_first_disagreement == pytest.approx(sum(firsts) / 5)
    assert g.token_agreement == pytest.approx(equal / (5 * K))
    assert g.forced_agreement == pytest.approx(forced / (5 * K))
    # the dense model agrees with itself on every token
    same = generative_agreement(tiny_lm, sample_text, Variant.identity(tiny_lm), num_prompts=5,
                                prompt_tokens=16, new_tokens=K)
    assert same.mean_first_disagreement == K and same.token_agreement == 1.0 == \
        same.forced_agreement


def test_capability_report_carries_the_generative_check(tiny_lm, sample_text):
    r = capability(tiny_lm, sample_text, variant=Variant.identity(tiny_lm).drop([2]), seqlen=64,
                   max_tokens=512, num_items=5, context_tokens=16, num_prompts=4,
                   prompt_tokens=16, new_tokens=8)
    g = r.to_dict()["generation"]
    assert g["prompts"] == 4 and g["new_tokens"] == 8 and 0 <= g["token_agreement"] <= 1
    assert 0 <= g["mean_first_disagreement"] <= 8 and "greedy new tokens" in r.protocol()
    alone = capability(tiny_lm, sample_text, variant=Variant.identity(tiny_lm).drop([2]),
                       seqlen=64, max_tokens=512, num_items=5, context_tokens=16, dense=False)
    assert alone.generation is None and "generation" not in alone.to_dict()
