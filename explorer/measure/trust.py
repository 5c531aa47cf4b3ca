"""How far each similarity can be trusted: its ranking of removal candidates against the measured
damage (explorer/measure/damage.py).

A similarity-based method removes the block it scores most alike. For the candidates the damage
map measured (every block of k consecutive layers, k = 1..max_block), each similarity gives a
score in the same cell (a, b); we turn it into a *predicted damage* (the distance itself, or minus
a similarity: higher = predicted to hurt more) and compare rankings, block size by block size:

    spearman   rank correlation of predicted and measured damage (1: the same order)
    kendall    Kendall's tau-b (the share of candidate pairs ordered alike minus the share
               ordered the other way; ties counted as tau-b does)
    pick       the candidate the similarity calls most removable
    pick_rank  its rank by measured damage (1 = the least damaging; the similarity's plan is
               then the measured best)

Blocks of different sizes are never ranked together: every score grows with the block, so a
pooled correlation would say mostly that longer blocks hurt more.

Example:
    >>> rows = trust_table(dmap, {"cosine": sim_cos, "cka": sim_cka})
    >>> [(r.measure, r.size, round(r.spearman, 2), r.pick_rank) for r in rows]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy import stats

from explorer.measure.damage import DamageMap, block_label
from explorer.core.errors import ExplorerError
from explorer.measure.measures import get_measure

# What the app's Learn tab and the HTML report say about similarity against damage.
LESSON = """A similarity heatmap says how alike two layer boundaries are. Every similarity-based
method reads "alike" as "safe to remove", and that is an assumption, not a measurement. The damage
map measures it: each candidate block is removed and the model is run without it, against the
dense model (the NLL increase, or the KL between their next-token distributions). Three things
make the two disagree.

- **Massive activations.** A few tokens (often the first, or one after a line break) carry a
  residual-stream norm hundreds of times the median. A layer that writes or cancels them barely
  moves the cosine of the other tokens, yet removing it breaks every attention pattern that keys
  on them.
- **Late layers.** Near the output the stream's direction changes little while the distribution
  over the vocabulary still does: the last layers look alike by cosine and are among the most
  damaging to remove.
- **Spikes.** A smooth similarity profile hides the single layer whose removal costs far more
  than its neighbours' (in one measurement on SmolLM2-135M a middle layer ranked 27th of 30 by
  measured damage while cosine called it the 10th most removable). The scatter of score against
  damage shows such points far from the trend.

The trust panel gives, for each similarity, its Spearman and Kendall rank correlation with the
measured damage, and the measured rank of the block it would remove. "Rethinking Layer Relevance
Beyond Cosine Similarity" (arXiv:2605.14075) argues that cosine is a poor proxy for the damage a
removal does; "Calibration matters more than search" (arXiv:2604.24938) finds that what the
candidates are measured on matters more than how cleverly they are searched. Measure before you
trust a heatmap, on the model and the text at hand."""


@dataclass(frozen=True)
class TrustRow:
    """One similarity against the measured damage, for the blocks of one size."""

    measure: str
    size: int                        # layers per block
    candidates: int
    spearman: float                  # NaN when a ranking is constant
    kendall: float
    pick: tuple[int, int]            # the cell the similarity calls most removable
    pick_rank: int                   # its rank by measured damage, 1 = least damaging
    best: tuple[int, int]            # the measured least damaging cell

    @property
    def picks_best(self) -> bool:
        return self.pick_rank == 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(pick=block_label(*self.pick), best=block_label(*self.best),
                 picks_best=self.picks_best,
                 spearman=_round(self.spearman), kendall=_round(self.kendall))
        return d


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than 2 points or a
    constant sequence."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b; NaN for fewer than 2 points or a constant sequence."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.kendalltau(x, y, variant="b").statistic)


def predicted_damage(matrix: torch.Tensor | np.ndarray, higher_is_similar: bool) -> np.ndarray:
    """(L+1, L+1) a similarity's cells as predicted damage: higher = predicted to hurt more."""
    m = np.asarray(matrix, dtype=float)
    return -m if higher_is_similar else m


def least_first(values: Sequence[float]) -> list[int]:
    """Indices of `values` from the lowest up, ties by index (the order a plan takes)."""
    return sorted(range(len(values)), key=lambda i: (values[i], i))


def trust_rows(dmap: DamageMap, measure: str, matrix: torch.Tensor | np.ndarray,
               higher_is_similar: bool | None = None, metric: str = "nll") -> list[TrustRow]:
    """One `TrustRow` per block size the map holds (1..max_block, sizes with >= 2 cells)."""
    if higher_is_similar is None:
        higher_is_similar = get_measure(measure).higher_is_similar
    pred = predicted_damage(matrix, higher_is_similar)
    if pred.shape != (dmap.num_layers + 1,) * 2:
        raise ExplorerError(f"the {measure} matrix is {pred.shape[0]} boundaries wide, the damage "
                            f"map {dmap.num_layers + 1}: they come from different models")
    measured = dmap.matrix(metric).double().numpy()
    rows = []
    for size in range(1, dmap.max_block + 1):
        cells = dmap.cells(size)
        if len(cells) < 2:
            continue
        p = [float(pred[a, b]) for a, b in cells]
        d = [float(measured[a, b]) for a, b in cells]
        by_damage = least_first(d)
        pick = least_first(p)[0]
        rows.append(TrustRow(measure, size, len(cells), spearman(p, d), kendall(p, d),
                             cells[pick], by_damage.index(pick) + 1, cells[by_damage[0]]))
    return rows


def trust_table(dmap: DamageMap, matrices: Mapping[str, torch.Tensor | np.ndarray],
                metric: str = "nll") -> list[TrustRow]:
    """`trust_rows` of every (registered) similarity in `matrices`, measure by measure."""
    return [r for name, m in matrices.items() for r in trust_rows(dmap, name, m, metric=metric)]


def scatter_points(dmap: DamageMap, matrix: torch.Tensor | np.ndarray, size: int,
                   metric: str = "nll") -> list[dict]:
    """The points of a score-against-damage scatter for blocks of `size`: the similarity's raw
    score (as the heatmap shows it), the measured damage, the layers removed and the cell."""
    m = np.asarray(matrix, dtype=float)
    measured = dmap.matrix(metric)
    return [{"score": float(m[a, b]), "damage": float(measured[a, b]),
             "label": block_label(a, b), "cell": (a, b)} for a, b in dmap.cells(size)]
