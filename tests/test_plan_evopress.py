"""EvoPress (evolutionary search over drop sets) on tiny random models: it finds the drop set that
a brute force over every subset finds, does no worse than greedy SLEB, replays from its seed, keeps
its budgets, and refuses a budget of 0 in one line. Also the two things it added to
PerplexitySearch.step (keep several exact, a known limit), checked against the plain loop."""

from __future__ import annotations

import io
import itertools
from functools import partial

import pytest

from explorer import Variant, cli, perplexity
from explorer.core.errors import ParamError
from explorer.plan import PlanContext, compress, get_method
from explorer.plan.evopress import evopress_search, mutate
from explorer.plan.ppl_search import Candidate, PerplexitySearch
from explorer.plan.sleb import sleb_search
from explorer.probe.probe import calibration_windows
from test_plan_sleb import planted  # noqa: F401  (the trained model with a planted identity layer)

LAYERS, REMOVE, SEQ, SAMPLES = 8, 3, 32, 8


@pytest.fixture(scope="module")
def lm8(tiny_factory):
    from explorer import load_model

    return load_model(str(tiny_factory("llama", num_layers=LAYERS)))


@pytest.fixture(scope="module")
def brute(lm8, sample_text):
    """Every drop set of REMOVE layers scored by the plain loop (from the embeddings, every
    window, no bounds): {drop set: NLL summed over the windows}."""
    ids = calibration_windows(lm8, sample_text, SEQ, SAMPLES)
    search = PerplexitySearch(lm8, ids, cache=False, abandon=False)
    identity = Variant.identity(lm8)
    sets = list(itertools.combinations(range(LAYERS), REMOVE))
    _, scored = search.step([Candidate(d, str(d), partial(identity.drop, d)) for d in sets])
    assert all(s.complete for s in scored)
    return {s.key: s.total for s in scored}


def _plan(lm, text, **params):
    return compress(lm, "evopress", remove=REMOVE, calibration=text, seqlen=SEQ,
                    num_samples=SAMPLES, **params)


def test_evopress_finds_the_brute_force_best_and_beats_greedy(lm8, sample_text, brute):
    best = min(brute, key=brute.get)
    plan = _plan(lm8, sample_text, generations=12, first_windows=2)
    assert tuple(plan.removed) == best
    # its figure, measured independently, is the brute force's best
    r = perplexity(lm8, sample_text, variant=plan.variant, seqlen=SEQ, max_tokens=SEQ * SAMPLES,
                   cache=False)
    assert r.nll * r.tokens == pytest.approx(brute[best], rel=1e-6)
    # the start (angular's or ShortGPT's plan) was not already the best: the search moved
    starts = [tuple(get_method(m).plan(PlanContext(lm8, sample_text, seqlen=SEQ,
                                                   num_samples=SAMPLES), REMOVE).removed)
              for m in ("angular", "shortgpt")]
    assert best not in starts
    assert f"from {'angular' if brute[starts[0]] <= brute[starts[1]] else 'shortgpt'}'s plan" \
        in plan.notes
    # greedy SLEB on the same windows does no better
    ids = calibration_windows(lm8, sample_text, SEQ, SAMPLES)
    greedy = sleb_search(PerplexitySearch(lm8, ids), REMOVE, early=0, late=0)
    assert brute[best] <= brute[tuple(sorted(greedy.order))]


def test_same_seed_same_search_and_a_time_budget_replays(lm8, sample_text):
    a = _plan(lm8, sample_text, generations=3, seed=5)
    b = _plan(lm8, sample_text, generations=3, seed=5)
    assert a.removed == b.removed and a.notes == b.notes and a.params == b.params
    assert a.params["generations"] == 3 and "after 3 generations" in a.notes
    timed = _plan(lm8, sample_text, generations=1000, seconds=1, seed=2)
    ran = timed.params["generations"]
    assert 1 <= ran < 1000 and timed.params["seconds"] is None
    assert f"generations={ran} replays it" in timed.notes
    again = _plan(lm8, sample_text, **timed.params)       # the recorded parameters replay it
    assert again.removed == timed.removed
    assert again.notes.split(" The time budget")[0] == timed.notes.split(" The time budget")[0]


def test_the_generation_budget_bounds_the_work(lm8, sample_text):
    ids = calibration_windows(lm8, sample_text, SEQ, SAMPLES)
    calls = []
    start = [("angular", (2, 3, 4))]
    r = evopress_search(lm8, ids[:2], ids, REMOVE, start, generations=2, offspring=5,
                        survivors=2, report=lambda f, note="", **k: calls.append(note))
    assert r.generations == 2
    assert r.evaluated == 2 * (5 + 2)        # 5 children on the first windows, 2 on all
    assert sum("children on 2 windows" in m for m in calls) == 2
    assert r.start == "angular" and r.start_ppl >= r.ppl


def test_mutation_keeps_the_size_and_the_seed_fixes_it():
    import random

    rng, again = random.Random(3), random.Random(3)
    parent = (1, 4, 6)
    kids = [mutate(parent, LAYERS, rng) for _ in range(200)]
    assert kids == [mutate(parent, LAYERS, again) for _ in range(200)]
    for kid in kids:
        assert len(kid) == 3 and list(kid) == sorted(set(kid)) and kid != parent
        assert all(0 <= i < LAYERS for i in kid)
    swaps = [len(set(parent) - set(kid)) for kid in kids]
    assert set(swaps) == {1, 2, 3} and swaps.count(1) > swaps.count(2) > swaps.count(3)


@pytest.mark.parametrize("bad", [dict(generations=0), dict(seconds=0), dict(offspring=0),
                                 dict(starts="evopress"), dict(starts=""),
                                 dict(starts="mka")])
def test_bad_budgets_and_starts_get_one_line(lm8, sample_text, bad):
    with pytest.raises(ParamError) as info:
        _plan(lm8, sample_text, **bad)
    assert "\n" not in str(info.value) and str(info.value).startswith("evopress")


def test_cli_budget_of_zero_is_one_line(tiny_factory, sample_text, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    code = cli.main(["compress", "--model", str(tiny_factory("llama", num_layers=6)), "--text",
                     str(text), "--method", "evopress", "--remove", "2", "--param",
                     "generations=0"], stderr=(errors := io.StringIO()))
    err = errors.getvalue()
    assert code == 2 and err.count("\n") == 1
    assert "evopress: generations must be an integer >= 1 (got" in err


def test_step_keeps_several_exact_and_honours_a_limit(planted, sample_text):
    """keep=k: the k best of the bounded search are complete and are the plain loop's k best;
    limit: candidates that cannot beat it stop, and none beating it gives None. On the trained
    5-layer model of test_sleb (drops differ by 18% or more, so bounds stop candidates)."""
    ids = calibration_windows(planted, sample_text, 64, SAMPLES)
    identity = Variant.identity(planted)
    cands = [Candidate(d, str(d), partial(identity.drop, d))
             for d in itertools.combinations(range(5), 2)]
    plain = PerplexitySearch(planted, ids, cache=False, abandon=False)
    exact = {s.key: s.total for s in plain.step(cands)[1]}
    ranked = sorted(exact, key=exact.get)
    search = PerplexitySearch(planted, ids, bound_vocab=8)
    search.set_current(identity)
    best, scored = search.step(cands, keep=3)
    done = sorted((s for s in scored if s.complete), key=lambda s: s.total)
    assert [s.key for s in done[:3]] == ranked[:3] and best.key == ranked[0]
    for s in done[:3]:
        assert s.total == pytest.approx(exact[s.key], rel=1e-6)
    assert any(not s.complete for s in scored)                  # the bar stopped the others
    limit = exact[ranked[1]]                                    # only the best beats it
    best, scored = search.step(cands, limit=limit)
    assert best.key == ranked[0]
    for s in scored:           # a stopped one could not beat the limit; a complete one is exact
        if s.complete:
            assert s.total == pytest.approx(exact[s.key], rel=1e-6)
        else:
            assert exact[s.key] > limit and s.total <= exact[s.key] * (1 + 1e-6)
    assert any(not s.complete for s in scored)
    best, _ = search.step(cands, limit=exact[ranked[0]] * 0.9)  # nothing beats it
    assert best is None
