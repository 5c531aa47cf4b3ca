"""The first-order (Taylor) estimate against finite differences of the real loss, and the
fewer-windows estimate against the full map."""

from __future__ import annotations

import pytest
import torch

from explorer.core.backbone import run_backbone
from explorer.measure.damage import damage_map
from explorer.measure.damage_estimate import taylor_map
from explorer.evaluate.nll import window_nll_sums
from explorer.probe.probe import calibration_windows
from explorer.measure.trust import trust_rows


@pytest.fixture(scope="module")
def ids(tiny_lm, sample_text):
    return calibration_windows(tiny_lm, sample_text, seqlen=32, num_samples=4)


def mean_nll_from(lm, ids, b, x):
    """Mean NLL per predicted token of the dense model run from states x (W, T, H) at b."""
    total = 0.0
    for batch in run_backbone(lm, ids, start=b, start_states=x, final_norm=True):
        total += float(window_nll_sums(lm, batch.hidden, batch.ids).sum())
    return total / (ids.shape[0] * (ids.shape[1] - 1))


def test_taylor_is_the_directional_derivative(tiny_lm, ids):
    est = taylor_map(tiny_lm, ids, max_block=2, batch_size=3)
    states = {}
    for batch in run_backbone(tiny_lm, ids, record=range(7)):
        for k, h in batch.states.items():
            states[k] = h
    eps = 1e-2
    for a, b in [(0, 1), (2, 4), (5, 6), (3, 4)]:
        d = states[a] - states[b]               # removing the block moves x_b to x_a
        fd = (mean_nll_from(tiny_lm, ids, b, states[b] + eps * d)
              - mean_nll_from(tiny_lm, ids, b, states[b] - eps * d)) / (2 * eps)
        assert float(est.matrix[a, b]) == pytest.approx(fd, rel=2e-2, abs=1e-5), (a, b)
        assert est.matrix[b, a] == est.matrix[a, b]
    assert torch.isnan(est.matrix[0, 3]) and est.tokens == 4 * 31


def test_estimates_ranked_against_the_full_map(tiny_lm, ids):
    full = damage_map(tiny_lm, ids, max_block=2)
    fewer = damage_map(tiny_lm, ids[:2], max_block=2)
    rows = trust_rows(full, "fewer windows", fewer.matrix("nll"), higher_is_similar=False)
    assert [r.size for r in rows] == [1, 2]
    assert all(-1 <= r.spearman <= 1 for r in rows)
    same = trust_rows(full, "same", full.matrix("nll"), higher_is_similar=False)
    assert same[0].spearman == pytest.approx(1.0)
    taylor = trust_rows(full, "taylor", taylor_map(tiny_lm, ids, max_block=2).matrix,
                        higher_is_similar=False)
    assert len(taylor) == 2
