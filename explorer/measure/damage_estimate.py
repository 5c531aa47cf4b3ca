"""Cheaper estimates of the damage map (explorer/measure/damage.py), to be judged against it.

Two kinds:
- the map itself on fewer windows: `damage_map(lm, ids[:k])` (the cost falls with the tokens;
  how well its ranking holds is `trust.trust_rows` of it against the full map);
- `taylor_map`: a first-order Taylor estimate of every cell from one forward and one backward
  pass of the dense model.

The Taylor estimate. Removing layers a..b-1 hands boundary b the state x_a instead of x_b, and the
rest of the model runs unchanged. To first order the mean NLL then changes by

    dL(a, b) ~ g_b . (x_a - x_b),    g_b = dL / dx_b   (summed over tokens, per predicted token)

where x_a - x_b is minus the block's summed residual update. One backward pass gives g_b at
every boundary, so every cell costs one dot product over the tokens. The gradient is taken with
respect to the activations only (the weights do not require it), so the backward pass costs
about one more forward pass. It ignores everything after the first order: a removal that moves
x_b far (an early layer, a massive activation) is beyond its reach, which the comparison with
the measured map shows.

Example:
    >>> est = taylor_map(lm, ids, max_block=4)
    >>> trust_rows(dmap, "taylor", est.matrix, higher_is_similar=False)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from explorer.core.backbone import run_backbone
from explorer.measure.damage import candidate_cells, check_block
from explorer.core.errors import TextError
from explorer.evaluate.nll import LOGIT_CHUNK, final_logits
from explorer.core.model import LoadedModel
from explorer.core.progress import Event, Progress
from explorer.core.tokens import auto_batch_size


@dataclass
class TaylorEstimate:
    """First-order estimates of the NLL increase of removing each block (a, b) = layers a..b-1."""

    matrix: torch.Tensor         # (L+1, L+1) float64, symmetric, NaN beyond max_block, 0 diagonal
    max_block: int
    tokens: int                  # predicted tokens the gradient was taken on
    seconds: float


def taylor_map(lm: LoadedModel, ids: torch.Tensor, *, max_block: int = 4,
               batch_size: int | None = None, progress: Progress | None = None
               ) -> TaylorEstimate:
    """g_b . (x_a - x_b) per predicted token for every block of up to `max_block` layers of the
    loaded model, on windows `ids` (W, T)."""
    L = lm.num_layers
    check_block(max_block, L)
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise TextError(f"the estimate needs windows of at least 2 tokens (got {tuple(ids.shape)})")
    W, T = ids.shape
    batch_size = batch_size or auto_batch_size(lm.device, T)
    cells = candidate_cells(L, max_block)
    acc = {c: 0.0 for c in cells}
    count = W * (T - 1)
    t0 = time.perf_counter()
    # boundaries 0 and 1 without a graph (the first layer's input has no gradient to give: the
    # weights do not require one), then layers 1..L with x_1 as the leaf of the graph
    first = {}
    for batch in run_backbone(lm, ids, stop=1, record=(0, 1), batch_size=batch_size):
        for k, h in batch.states.items():                                 # (b, T, H)
            first.setdefault(k, []).append(h)
    x0, x1 = torch.cat(first[0]), torch.cat(first[1])
    x1 = x1.detach().requires_grad_(True)
    for batch in run_backbone(lm, ids, start=1, start_states=x1, record=range(1, L + 1),
                              final_norm=True, batch_size=batch_size, grad=True,
                              label="first-order estimate"):
        h = batch.hidden[:, :-1].reshape(-1, batch.hidden.shape[-1])     # (b*(T-1), H)
        targets = batch.ids[:, 1:].reshape(-1)
        loss = 0.0
        for s in range(0, h.shape[0], LOGIT_CHUNK):
            logits = final_logits(lm, h[s:s + LOGIT_CHUNK])                 # (n, V)
            loss = loss + F.cross_entropy(logits, targets[s:s + LOGIT_CHUNK], reduction="sum")
        bounds = list(range(1, L + 1))
        grads = torch.autograd.grad(loss, [batch.states[k] for k in bounds])
        g = dict(zip(bounds, grads))                                         # (b, T, H) each
        x = {k: v.detach() for k, v in batch.states.items()}
        x[0] = x0[batch.rows]
        for a, b in cells:
            acc[(a, b)] += float((g[b].double() * (x[a].double() - x[b].double())).sum())
        if progress:
            progress(Event("first-order estimate", batch.rows.stop / W, step=batch.rows.stop,
                           total=W, unit="windows"))
    m = torch.full((L + 1, L + 1), math.nan, dtype=torch.float64)
    m.fill_diagonal_(0.0)
    for (a, b), v in acc.items():
        m[a, b] = m[b, a] = v / count
    return TaylorEstimate(m, max_block, count, time.perf_counter() - t0)
