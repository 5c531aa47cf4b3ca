"""SLEB and BlockPruner (perplexity-guided greedy removal) on a tiny model with a planted
redundant layer.

The model: a 5-layer tiny llama trained for a few steps on the sample text while layer 2's output
projections are held at zero, so layer 2 is exactly an identity and every other layer matters.
"""

from __future__ import annotations

import pytest
import torch

from explorer import LayerError, Variant, load_model, perplexity
from explorer.plan import compress
from explorer.plan.blockpruner import blockpruner_search, removed_parameters
from explorer.plan.ppl_search import PerplexitySearch
from explorer.plan.sleb import sleb_search
from explorer.probe.probe import calibration_windows

PLANTED = 2
SEQ, SAMPLES = 64, 8


@pytest.fixture(scope="module")
def planted(tmp_path_factory, sample_text):
    from tiny import byte_tokenizer, make_tiny_model
    from transformers import AutoModelForCausalLM

    folder = make_tiny_model(tmp_path_factory.mktemp("planted-init"), "llama", 5)
    model = AutoModelForCausalLM.from_pretrained(folder)
    layer = model.model.layers[PLANTED]
    for p in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
        p.data.zero_()
        p.requires_grad_(False)
    tok = byte_tokenizer()
    ids = torch.tensor(tok(sample_text, add_special_tokens=False)["input_ids"])
    w = ids[: ids.numel() // 64 * 64].view(-1, 64)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(20):       # enough for every trained layer to matter (drops cost >= 18%)
        b = w[torch.randint(0, w.shape[0], (4,), generator=g)]
        loss = model(input_ids=b, labels=b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("planted")
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return load_model(str(out))


def _calibration_ppl(lm, text, variant):
    """Independent figure: plain perplexity (no cache) over the same windows SLEB scores on."""
    return perplexity(lm, text, variant=variant, seqlen=SEQ, max_tokens=SEQ * SAMPLES,
                      cache=False).ppl


def test_sleb_removes_the_planted_layer_first(planted, sample_text):
    plan = compress(planted, "sleb", remove=2, calibration=sample_text, seqlen=SEQ,
                    num_samples=SAMPLES, early_barrier=0, latter_barrier=0, early_stop=False)
    assert plan.notes.startswith(f"Removed layers [{PLANTED}, ")
    assert PLANTED in plan.removed and plan.num_layers == 3
    # the first step's score of every layer is that layer's drop, measured independently
    first = plan.scores["ppl when dropped"]
    for j in range(5):
        want = _calibration_ppl(planted, sample_text, Variant.identity(planted).drop([j]))
        assert first[j] == pytest.approx(want, rel=1e-6)
    assert first[PLANTED] == min(first)
    assert first[PLANTED] == pytest.approx(_calibration_ppl(planted, sample_text, None), rel=1e-9)


def test_lower_bounds_lie_below_the_nll_and_meet_it_on_the_whole_vocabulary(planted,
                                                                            sample_text):
    from explorer.core.backbone import run_backbone
    from explorer.evaluate.nll import window_nll_lower_bounds, window_nll_sums
    from explorer.plan.ppl_search import likely_tokens

    ids = calibration_windows(planted, sample_text, SEQ, SAMPLES)
    v = Variant.identity(planted).drop([1])
    with torch.no_grad():
        h = torch.cat([b.hidden for b in run_backbone(planted, ids, variant=v,
                                                      final_norm=True)])
        pre = torch.cat([b.states[v.num_layers] for b in run_backbone(
            planted, ids, variant=v, record=[v.num_layers])])
    exact = window_nll_sums(planted, h, ids)
    V = planted.config.vocab_size
    everything = torch.arange(V)
    assert torch.allclose(window_nll_lower_bounds(planted, h, ids, everything), exact, rtol=1e-6)
    targets = torch.unique(ids[:, 1:])
    few = likely_tokens(planted, pre, ids, 8)
    assert set(targets.tolist()) <= set(few.tolist()) and len(few) < V
    assert torch.equal(few, torch.sort(few).values)
    low = window_nll_lower_bounds(planted, h, ids, few)
    assert (low <= exact * (1 + 1e-9)).all() and (low < exact).any()
    # the subset's own log-sum-exp, written out: the bound is logsumexp(z_S) - z_target
    z = (h[:, :-1] @ planted.model.lm_head.weight.T).reshape(-1, V)
    t = ids[:, 1:].reshape(-1)
    want = (torch.logsumexp(z[:, few], 1) - z[torch.arange(len(t)), t]).view(len(ids), -1)
    assert torch.allclose(low, want.sum(1).double(), rtol=1e-5)
    with pytest.raises(Exception, match="every target"):
        window_nll_lower_bounds(planted, h, ids, few[few != t[0]])


@pytest.mark.parametrize("bound", [None, 8, 4096], ids=["no-bound", "8-tokens", "whole-vocab"])
def test_cached_search_with_early_stops_matches_the_plain_loop(planted, sample_text, bound):
    ids = calibration_windows(planted, sample_text, SEQ, SAMPLES)
    fast = sleb_search(PerplexitySearch(planted, ids, batch_size=2, bound_vocab=bound), 3,
                       early=0, late=0)
    plain = sleb_search(PerplexitySearch(planted, ids, batch_size=2, cache=False,
                                         abandon=False), 3, early=0, late=0)
    assert fast.order == plain.order and fast.order[0] == PLANTED
    assert fast.ppl == pytest.approx(plain.ppl, rel=1e-9)
    for a_step, b_step in zip(fast.steps, plain.steps):
        for a, b in zip(a_step, b_step):
            assert a.key == b.key
            if a.complete:
                assert a.total == pytest.approx(b.total, rel=1e-9)
            else:           # stopped early: a lower bound that already lost
                assert a.total <= b.total * (1 + 1e-6)
                assert a.total > min(s.total for s in b_step)
    assert any(not s.complete for step in fast.steps for s in step)   # early stops happened
    first_stopped = sum(not s.complete for s in fast.steps[0])
    assert plain.estimate_note() == ""
    assert (f" {first_stopped} of the {len(fast.steps[0])} first-step scores are estimates"
            in fast.estimate_note()) == (first_stopped > 0)


def test_waiting_candidates_within_a_memory_cap_give_the_same_choices(planted, sample_text,
                                                                      monkeypatch):
    import explorer.plan.ppl_search as ppl_search

    ids = calibration_windows(planted, sample_text, SEQ, SAMPLES)
    plain = sleb_search(PerplexitySearch(planted, ids, cache=False, abandon=False), 3, 0, 0)
    monkeypatch.setattr(ppl_search, "DEFER_BYTES", 0)       # no candidate may wait
    capped = sleb_search(PerplexitySearch(planted, ids, bound_vocab=8), 3, 0, 0)
    assert capped.order == plain.order
    assert capped.ppl == pytest.approx(plain.ppl, rel=1e-9)


def test_sleb_barriers_and_impossible_sizes(planted, sample_text):
    plan = compress(planted, "sleb", remove=1, calibration=sample_text, seqlen=SEQ,
                    num_samples=4)
    first = plan.scores["ppl when dropped"]
    assert first[0] is None and first[4] is None          # default barriers: 1 and 1
    assert all(x is not None for x in first[1:4])
    with pytest.raises(LayerError, match="only 3 are candidates"):
        compress(planted, "sleb", remove=4, calibration=sample_text, seqlen=SEQ, num_samples=4)


def test_blockpruner_scores_every_block_within_the_parameter_budget(planted, sample_text):
    plan = compress(planted, "blockpruner", remove=1, calibration=sample_text, seqlen=SEQ,
                    num_samples=SAMPLES, early_stop=False)
    dense = _calibration_ppl(planted, sample_text, None)
    scores = {part: plan.scores[f"{part} ppl when dropped"] for part in ("attn", "mlp")}
    for part, ppl in scores.items():
        assert ppl[PLANTED] == pytest.approx(dense, rel=1e-9)     # an identity block: no cost
        for j in range(5):
            want = _calibration_ppl(planted, sample_text,
                                    Variant.identity(planted).drop_part(j, part))
            assert ppl[j] == pytest.approx(want, rel=1e-6)
    best = min((ppl[j], j, part) for part, ppl in scores.items() for j in range(5))
    assert plan.notes.startswith(f"Dropped {best[2]} {best[1]}, ")
    layer = sum(p.numel() for p in planted.original_layers.parameters()) / 5
    assert 0.75 * layer < removed_parameters(plan.variant) <= layer       # one layer's worth

    # the cached search with early stops makes the plain loop's choices; a layer that lost both
    # blocks is deleted
    ids = calibration_windows(planted, sample_text, SEQ, SAMPLES)
    fast = blockpruner_search(PerplexitySearch(planted, ids, batch_size=2), 2)
    plain = blockpruner_search(PerplexitySearch(planted, ids, batch_size=2, cache=False,
                                                abandon=False), 2)
    assert fast.order == plain.order and fast.ppl == pytest.approx(plain.ppl, rel=1e-9)
    emptied = sorted(i for i in range(5) if ("attn", i) in fast.order and ("mlp", i) in fast.order)
    assert fast.variant.removed() == emptied
    assert fast.variant.num_layers == 5 - len(emptied)


def test_blockpruner_says_when_the_blocks_cannot_reach_the_size(planted, sample_text):
    with pytest.raises(LayerError, match="could remove only .* layers' worth of attn blocks"):
        compress(planted, "blockpruner", remove=3, parts="attn", calibration=sample_text,
                 seqlen=SEQ, num_samples=2)


def test_blockpruner_sizes_share_one_search(planted, sample_text):
    from explorer.plan import PlanContext, get_method

    ctx = PlanContext(planted, sample_text, seqlen=SEQ, num_samples=SAMPLES)
    method = get_method("blockpruner")
    shared = method.plans(ctx, [2, 1])
    for k in (1, 2):
        alone = method.plan(ctx, k)
        assert shared[k].notes == alone.notes                  # the same blocks, in order
        assert shared[k].variant.layer_labels() == alone.variant.layer_labels()
