"""The web app through gradio_client, on the real default model (SmolLM2-135M-Instruct (Q4_1)): two sessions that
apply different plans at the same time each get their own, correct perplexity (the same number as
explorer.perplexity run directly), see only their own history, and leave the shared model's weights
bit-identical."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tiny import state_checksum as checksum

gradio_client = pytest.importorskip("gradio_client")

PLANS = [("5", ""), ("", "20-22")]   # session A drops layer 5; session B merges layers 20..22
# no model resident at the start; the real model makes it slow
pytestmark = [pytest.mark.usefixtures("clean_registry"), pytest.mark.slow]


def run_session(url: str, drops: str, merges: str) -> tuple[dict, list]:
    c = gradio_client.Client(url, verbose=False)
    c.predict("smollm2-135m", "", api_name="/load_model")
    c.predict("wiki", "", None, api_name="/set_text")
    c.predict(drops, merges, "average", api_name="/update_plan")
    out = c.predict(api_name="/apply")
    return out[1], out[2]          # (details JSON, this session's history table)


def test_two_sessions_at_once_do_not_interfere(live_app):
    from explorer import load_texts, perplexity
    from explorer.core import session
    from explorer.core.layer_lists import parse_groups, parse_layers
    from explorer.ui.state import manual_plan
    from explorer.apply.recipe import replay

    url, s = live_app.url, live_app.settings
    lm = session.get_model("smollm2-135m")      # the app runs in this process: same object
    weights = checksum(lm.model)
    layers = list(lm.arch.layer_list(lm.model))

    with ThreadPoolExecutor(len(PLANS)) as pool:
        results = list(pool.map(lambda p: run_session(url, *p), PLANS))

    evaluation = load_texts("wiki").evaluation
    base = perplexity(lm, evaluation, seqlen=s.ppl_seqlen, max_tokens=s.ppl_max_tokens)
    for (drops, merges), (details, history) in zip(PLANS, results):
        plan = manual_plan(30, parse_layers(drops), parse_groups(merges), "average")
        expect = perplexity(lm, evaluation, variant=replay(lm, plan.ops), seqlen=s.ppl_seqlen,
                            max_tokens=s.ppl_max_tokens)
        assert details["ppl_after"] == pytest.approx(expect.ppl, rel=1e-5), (drops, merges)
        assert details["ppl_before"] == pytest.approx(base.ppl, rel=1e-5)
        assert details["layers_after"] == 30 - len(parse_layers(drops)) - \
            sum(len(g) - 1 for g in parse_groups(merges))
        assert "non-overlapping windows" in details["protocol"]
        rows = history["data"] if isinstance(history, dict) else history
        assert len(rows) == 1, rows                        # only this session's own variant
    assert results[0][0]["ppl_after"] != results[1][0]["ppl_after"]

    # the shared model is back exactly as it was
    assert checksum(lm.model) == weights
    assert list(lm.arch.layer_list(lm.model)) == layers
    assert lm.config.num_hidden_layers == 30
