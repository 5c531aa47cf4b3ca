"""Evaluation windows and what is said about a partial pass: the text cut into non-overlapping
windows of `seqlen` tokens, an order that covers the text early, and the confidence band of the
running perplexity while windows come in."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from explorer.core.errors import TextError
from explorer.core.model import LoadedModel
from explorer.core.progress import Event
from explorer.core.tokens import tokenize, use_bos, windows



def evaluation_windows(lm: LoadedModel, text: str, seqlen: int, max_tokens: int | None,
                       bos: str = "auto") -> torch.Tensor:
    """(W, seqlen [+1 with BOS]) windows of `text` under the protocol above: what `perplexity`
    evaluates (the benchmarks give the same windows to their baselines)."""
    ctx = getattr(lm.config, "max_position_embeddings", None)
    with_bos = use_bos(lm.tokenizer, bos, lm.arch.needs_bos)
    if ctx and seqlen + int(with_bos) > ctx:
        raise TextError(f"seqlen {seqlen} is longer than the model's context of {ctx} tokens")
    ids = tokenize(lm.tokenizer, text, max_tokens=max_tokens)
    return windows(ids, seqlen, bos_id=lm.tokenizer.bos_token_id if with_bos else None)


# -- the live figure -------------------------------------------------------------------------------

def spread_order(n: int) -> list[int]:
    """0..n-1 in an order that covers the range evenly from the start: the van der Corput
    sequence 0, 1/2, 1/4, 3/4, 1/8, ... scaled to n, repeats skipped (8 -> [0, 4, 2, 6, 1, 5, 3,
    7]). After m windows no gap between evaluated ones exceeds about 2n/m, so a running mean
    settles early instead of following the text from its start."""
    def radical_inverse(k: int) -> float:          # k's binary digits mirrored after the point
        x, f = 0.0, 0.5
        while k:
            x += f * (k & 1)
            k >>= 1
            f /= 2
        return x
    order: list[int] = []
    seen: set[int] = set()
    k = 0
    while len(order) < n:      # ends within 2n steps: 2^m >= n hits every 1/n-wide cell
        i = int(radical_inverse(k) * n)
        if i not in seen:
            seen.add(i)
            order.append(i)
        k += 1
    return order


def nll_band(window_nll: Sequence[float], total: int, z: float = 1.96, finite: bool = True,
             offset: float = 0.0) -> tuple[float, float]:
    """(low, high) perplexity band from the mean NLL of k evaluated windows out of `total`:
    exp(offset + mean +- z x s / sqrt(k)), s the windows' standard deviation. finite=True
    multiplies the standard error by sqrt((total - k) / (total - 1)) (sampling without
    replacement): the band is then about the final figure over all `total` windows and closes on
    it. (nan, nan) for k < 2. With `offset` the values are per-window changes (see
    `running_event`)."""
    k = len(window_nll)
    if k < 2:
        return math.nan, math.nan
    mean = sum(window_nll) / k
    var = sum((y - mean) ** 2 for y in window_nll) / (k - 1)
    se = math.sqrt(var / k)
    if finite and total > 1:
        se *= math.sqrt(max(0.0, (total - k) / (total - 1)))
    mid = offset + mean
    return math.exp(min(mid - z * se, 700.0)), math.exp(min(mid + z * se, 700.0))


def running_event(window_nll: Sequence[float], total: int, label: str = "perplexity",
                  control: Sequence[float] | None = None, control_mean: float = 0.0) -> Event:
    """The progress event of a perplexity pass after len(window_nll) of `total` windows: the figure
    so far and its 95% band (no band after one window, nor at the end, where it has closed on the
    figure). Described: 'perplexity: 8/32 windows, 23.41 so far (95% band 22.8-24.1)'.

    control: the same windows' NLL under a reference model (the dense one), and control_mean its
    mean over all `total` windows: the figure is then estimated as control_mean + the mean change
    over the windows run (a difference estimator: the change varies far less from window to
    window than the NLL itself, so the estimate settles after a few windows)."""
    k = len(window_nll)
    if k == total or control is None:
        values, offset = list(window_nll), 0.0
    else:
        values, offset = [a - b for a, b in zip(window_nll, control)], control_mean
    ppl = math.exp(min(offset + sum(values) / max(1, k), 700.0))
    band = nll_band(values, total, offset=offset) if 2 <= k < total else None
    return Event(label, k / max(1, total), step=k, total=total, unit="windows", figure=ppl,
                 band=band)
