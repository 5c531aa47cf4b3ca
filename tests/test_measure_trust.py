"""The trust panel's statistics against independent computations, on a real (tiny) damage map."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from explorer.measure import measures as M
from explorer.measure.damage import damage_map
from explorer.probe.probe import calibration_windows, probe
from explorer.measure.trust import kendall, scatter_points, spearman, trust_rows, trust_table


def ranks(v):
    """Average ranks, 1-based, by a plain loop."""
    v = list(v)
    return [sum(1 for u in v if u < x) + (sum(1 for u in v if u == x) + 1) / 2 for x in v]


def loop_spearman(x, y):
    rx, ry = np.array(ranks(x)), np.array(ranks(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float(rx @ ry / math.sqrt((rx @ rx) * (ry @ ry)))


def loop_kendall_b(x, y):
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            tx += 1
        elif sy == 0:
            ty += 1
        elif sx == sy:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / math.sqrt((conc + disc + tx) * (conc + disc + ty))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_correlations_match_plain_loops(seed):
    g = np.random.default_rng(seed)
    x = g.integers(0, 6, 25).astype(float)            # ties on purpose
    y = x + g.normal(0, 2, 25).round(0)
    assert spearman(x, y) == pytest.approx(loop_spearman(x, y), abs=1e-12)
    assert kendall(x, y) == pytest.approx(loop_kendall_b(x, y), abs=1e-12)
    assert spearman(x, -x) == pytest.approx(-1.0) and kendall(x, 2 * x + 1) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(kendall([1], [2]))


@pytest.fixture(scope="module")
def setup(tiny_lm, sample_text):
    ids = calibration_windows(tiny_lm, sample_text, seqlen=32, num_samples=4)
    return damage_map(tiny_lm, ids, max_block=2), probe(tiny_lm, input_ids=ids)


def test_trust_rows_rank_and_pick(setup):
    dmap, _ = setup
    truth = dmap.matrix("nll").clone()
    # a "distance" equal to the measured damage ranks perfectly; as a similarity, backwards
    perfect = trust_rows(dmap, "mine", truth, higher_is_similar=False)
    assert [r.size for r in perfect] == [1, 2] and [r.candidates for r in perfect] == [6, 5]
    assert all(r.spearman == pytest.approx(1) and r.kendall == pytest.approx(1)
               and r.picks_best and r.pick == r.best for r in perfect)
    worst = trust_rows(dmap, "mine", truth, higher_is_similar=True)
    assert all(r.spearman == pytest.approx(-1) and r.pick_rank == r.candidates for r in worst)
    singles = [float(truth[i, i + 1]) for i in range(6)]
    assert perfect[0].best == (int(np.argmin(singles)), int(np.argmin(singles)) + 1)
    # a score that swaps the two least damaging singles: its pick is the second best
    order = np.argsort(singles)
    swapped = truth.clone()
    i, j = int(order[0]), int(order[1])
    swapped[i, i + 1], swapped[j, j + 1] = truth[j, j + 1], truth[i, i + 1]
    row = trust_rows(dmap, "mine", swapped, higher_is_similar=False)[0]
    assert row.pick == (j, j + 1) and row.pick_rank == 2 and not row.picks_best


def test_trust_table_of_real_similarities(setup):
    dmap, pr = setup
    sims = {name: M.similarity(pr, name) for name in ("cosine", "bi", "angular")}
    rows = trust_table(dmap, sims)
    assert [(r.measure, r.size) for r in rows] == [(m, s) for m in sims for s in (1, 2)]
    by = {(r.measure, r.size): r for r in rows}
    # cosine and BI rank identically (BI = 1 - cosine)
    assert by["cosine", 1].spearman == pytest.approx(by["bi", 1].spearman)
    cos = sims["cosine"]
    pred = [-float(cos[a, b]) for a, b in dmap.cells(1)]
    meas = [float(dmap.nll[a, b]) for a, b in dmap.cells(1)]
    assert by["cosine", 1].spearman == pytest.approx(loop_spearman(pred, meas), abs=1e-9)
    d = by["cosine", 1].to_dict()
    assert set(d) >= {"spearman", "kendall", "pick", "pick_rank", "picks_best", "best"}
    pts = scatter_points(dmap, cos, 2)
    assert len(pts) == 5 and pts[0]["label"] == "0-1" and pts[0]["cell"] == (0, 2)
    assert pts[0]["score"] == pytest.approx(float(cos[0, 2]))


def test_learn_tab_teaches_similar_is_not_removable():
    from explorer.ui.learn_tab import learn_markdown

    text = learn_markdown()
    assert "## Similar is not removable" in text
    for paper in ("2605.14075", "2604.24938"):
        assert f"(https://arxiv.org/abs/{paper})" in text
    assert "Massive activations" in text and "Late layers" in text and "Spikes" in text
