"""The damage map: what removing each single layer and each contiguous block really costs.

The similarity heatmaps (explorer/measure/measures.py) say how alike two layer boundaries are; every
similarity-based method assumes that alike means safe to remove. The damage map measures it: for
every block of up to `max_block` consecutive layers, the model without that block is run on the
calibration windows and compared with the dense model, in the heatmaps' cell coordinates:

    cell (a, b), a < b  =  remove layers a..b-1  (the b - a layers of the block)
    ppl   exp(mean NLL) of the cut model on the windows
    nll   its mean NLL minus the dense model's (the NLL increase, nats per predicted token)
    kl    mean over predicted tokens of KL(p_dense || p_cut), nats

Each candidate runs only from its cut onward: one dense pass records the residual stream at
every boundary (W, T, H), and the candidate without layers a..b-1 starts at boundary a with the
dense states there (the layers before the cut are the dense model's, so their output is already
known). Removing a block at depth a therefore costs L - (b - a) - a layers plus the head, and the
whole map of blocks up to n costs about n * L * L / 2 layer-passes.

The perplexity follows the protocol of `evaluate.perplexity` (README.md, "Perplexity protocol"):
the same windows give the same figure as `eval --drop a..b-1`, to float rounding
(tests/test_measure_damage.py). KL needs the dense distribution at every position: its
probabilities (W, T-1, V) and each position's sum of p log p are kept when they fit
`KL_CACHE_BYTES`, else recomputed chunk by chunk from the dense final-norm states next to each
candidate's (one more head product per candidate). A candidate's KL is then one row-wise dot
product of p with its own log-probabilities (KL = sum p log p - sum p log q), next to the
log-softmax its NLL needs anyway: no second log-softmax, no exp per candidate. The head
is a large part of each candidate's cost (49k x 576 for SmolLM2: about 8 of its 30 layers), so
`kl=False` (the NLL alone) is cheaper still.

Live fill-in and Stop: every finished candidate reports an `Event` (stage "damage map", step =
candidates done, figure = its perplexity) and calls `on_cell(map)` with the map so far. A
`CancelToken` ends the work at the next candidate: the cells done are kept and the map is marked
`partial` (a Stop inside a candidate's pass drops only that candidate).

Ranks (torchrun, explorer/core/ranks.py): each rank runs the dense pass and every candidate on its
shard of the windows; the per-window NLL and KL sums are collected in window order
(`ranks.gather_rows`), so every rank holds the one-process map. Rank 0 decides a Stop, at
candidate boundaries (`ranks.from_rank0`), so the ranks end on the same candidate.

Example:
    >>> dm = damage_map(lm, ids, max_block=4)       # ids: (W, T) calibration windows
    >>> dm.matrix("nll")                            # (L+1, L+1), NaN where not measured
    >>> dm.cell(10, 13)                             # {'ppl': ..., 'nll': ..., 'kl': ...}
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from explorer.core import ranks
from explorer.core.backbone import run_backbone
from explorer.core.errors import LayerError, TextError
from explorer.evaluate.nll import LOGIT_CHUNK, NonFiniteError, final_logits, window_nll_sums
from explorer.core.model import LoadedModel
from explorer.core.params import Param, help_text, resolve
from explorer.core.progress import Cancelled, CancelToken, Event, Progress, watched
from explorer.core.tokens import auto_batch_size
from explorer.core.variant import Variant

METRICS = ("nll", "kl", "ppl")
# what each metric is, in words (one source: the app's labels, the plots' titles, the plan's
# explanations), and the titles with their units
METRIC_NAMES = {"nll": "NLL increase", "kl": "KL to the dense model",
                "ppl": "perplexity after removal"}
METRIC_UNITS = {"nll": "nats/token", "kl": "nats/token", "ppl": ""}
METRIC_TITLES = {m: f"{name} ({METRIC_UNITS[m]})" if METRIC_UNITS[m] else name
                 for m, name in METRIC_NAMES.items()}

# The map's parameters where it is asked for by name (`similarity --measure damage --param ...`,
# the app's Analyse tab), declared once like a measure's.
PARAMS = (
    Param("max_block", int, 4, "measure every block of 1..max_block consecutive layers", min=1,
          label="Largest block"),
    Param("metric", str, "nll", "what the matrix shows: the NLL increase, the KL to the dense "
          "model, or the perplexity after removal", choices=METRICS, label="Damage shown",
          choice_labels=tuple(METRIC_TITLES.items())),
)
TITLE = "Measured damage (removal, not similarity)"


def resolve_params(given: dict) -> dict:
    """Every damage-map parameter from `given` or its default; a one-line ParamError else."""
    return resolve(PARAMS, given, "damage")


def params_help() -> str:
    return help_text([("damage", TITLE, PARAMS)])


@dataclass
class DamageMap:
    """Measured cost of removing each block (a, b) = layers a..b-1 of `base`, on windows (W, T).

    The matrices are (L+1, L+1) float64, symmetric, NaN where no candidate was measured; the
    diagonal holds the dense model (ppl = dense_ppl, nll and kl 0).
    """

    num_layers: int
    max_block: int
    windows: int                    # W
    seqlen: int                     # T (BOS included)
    dense_nll: float                # mean NLL per predicted token of the base model
    ppl: torch.Tensor               # (L+1, L+1)
    nll: torch.Tensor               # (L+1, L+1) NLL increase over the base model
    kl: torch.Tensor                # (L+1, L+1) mean KL(p_base || p_cut)
    window_nll: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # (W,) each
    window_kl: dict[tuple[int, int], list[float]] = field(default_factory=dict)   # (W,) each
    done: list[tuple[int, int]] = field(default_factory=list)   # cells measured, in order
    total: int = 0                  # cells asked for
    partial: bool = False           # stopped before every cell was measured
    seconds: float = 0.0            # wall time, dense pass included
    dense_seconds: float = 0.0

    @property
    def dense_ppl(self) -> float:
        return math.exp(self.dense_nll)

    @property
    def tokens(self) -> int:
        """Predicted tokens per candidate: W x (T - 1)."""
        return self.windows * (self.seqlen - 1)

    def matrix(self, metric: str = "nll") -> torch.Tensor:
        """(L+1, L+1) of one metric: 'nll' (increase), 'kl' or 'ppl'."""
        if metric not in METRICS:
            raise LayerError(f"unknown damage metric '{metric}'; use one of: {', '.join(METRICS)}")
        return getattr(self, metric)

    def cell(self, a: int, b: int) -> dict[str, float]:
        return {m: float(self.matrix(m)[a, b]) for m in METRICS}

    def cells(self, size: int | None = None) -> list[tuple[int, int]]:
        """The measured cells, blocks of `size` layers only when given, in (a, b) order."""
        return sorted(c for c in self.done if size is None or c[1] - c[0] == size)

    def snapshot(self) -> "DamageMap":
        """A copy that later candidates do not change (for a live view drawn in another thread
        while the map fills in)."""
        return replace(self, ppl=self.ppl.clone(), nll=self.nll.clone(), kl=self.kl.clone(),
                       window_nll=dict(self.window_nll), window_kl=dict(self.window_kl),
                       done=list(self.done))

    @property
    def progress_note(self) -> str:
        """'k of n candidates': how far the map got."""
        return f"{len(self.done)} of {self.total} candidates"

    def to_dict(self) -> dict:
        """JSON-ready: every measured cell with its figures, and the three matrices."""
        def rows(m: torch.Tensor) -> list[list[float | None]]:
            return [[None if math.isnan(v) else round(v, 6) for v in r] for r in m.tolist()]
        return {"measure": "damage", "num_layers": self.num_layers, "max_block": self.max_block,
                "windows": self.windows, "seqlen": self.seqlen, "tokens": self.tokens,
                "dense_ppl": round(self.dense_ppl, 6), "dense_nll": round(self.dense_nll, 8),
                "partial": self.partial, "cells_done": len(self.done), "cells_total": self.total,
                "seconds": round(self.seconds, 2),
                "cells": [dict(a=a, b=b, layers=block_label(a, b),
                               **{m: round(v, 8) for m, v in self.cell(a, b).items()})
                          for a, b in self.cells()],
                "matrix": {m: rows(self.matrix(m)) for m in METRICS}}

    def to_csv(self) -> str:
        """One row per measured cell: a, b, layers, ppl, nll (increase), kl."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["a", "b", "layers", "ppl", "nll_increase", "kl"])
        for a, b in self.cells():
            c = self.cell(a, b)
            w.writerow([a, b, block_label(a, b), f"{c['ppl']:.8g}", f"{c['nll']:.8g}",
                        f"{c['kl']:.8g}"])
        return out.getvalue()


def block_label(a: int, b: int) -> str:
    """Cell (a, b) for people: the layers removed, '7' or '10-12'."""
    return str(a) if b == a + 1 else f"{a}-{b - 1}"


def check_block(max_block: int, num_layers: int) -> int:
    """`max_block` as an int in 1..L-1, or one line saying why not."""
    if isinstance(max_block, bool) or not isinstance(max_block, int) or max_block < 1:
        raise LayerError(f"the damage map's block size must be a whole number >= 1 "
                         f"(got {max_block!r})")
    if max_block > num_layers:
        raise LayerError(f"block size {max_block} is larger than the model ({num_layers} "
                         "layers)")
    if max_block == num_layers:
        raise LayerError(f"block size {max_block} would remove every layer of the model; use at "
                         f"most {num_layers - 1}")
    return max_block


def candidate_cells(num_layers: int, max_block: int,
                    sizes: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """Cells (a, b) of every block of 1..max_block layers (or of the given sizes), singles first,
    then by depth: the order the map fills in."""
    chosen = range(1, max_block + 1) if sizes is None else sorted(set(sizes))
    return [(a, a + n) for n in chosen for a in range(num_layers - n + 1)]


# The dense log-probabilities KL needs, (W, T-1, V) float32, are kept when they fit in this many
# bytes (16 windows of 128 tokens of SmolLM2's 49k vocabulary: 400 MB); beyond it they are
# recomputed from the dense final-norm states for every candidate (one more head product each).
KL_CACHE_BYTES = 2 ** 30


class _DenseDistribution:
    """The dense model's next-token distribution on the windows, for KL: its probabilities p and
    each position's sum of p log p, stored whole when they fit `KL_CACHE_BYTES`, else recomputed
    chunk by chunk from its final-norm states.

    Kept as probabilities (not log-probabilities) so that a candidate's KL costs one product
    over the vocabulary: KL(p || q) = sum p log p - sum p log q, the first sum the dense model's
    own, once per position."""

    def __init__(self, lm: LoadedModel, W: int, T: int, head: torch.nn.Module) -> None:
        self.lm, self.head = lm, head
        V = head.weight.shape[0]
        self.stored = W * (T - 1) * V * 4 <= KL_CACHE_BYTES
        self.data: torch.Tensor | None = None    # (W, T-1, V) probabilities, or (W, T, H) states
        self.neg_entropy = torch.zeros((W, T - 1), dtype=torch.float64)   # sum p log p
        self.shape = (W, T - 1, V)

    def _distribution(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p (n, V) float32, sum p log p (n,) float64) of final-norm states h (n, H)."""
        logp = F.log_softmax(final_logits(self.lm, h, head=self.head), dim=-1)
        p = logp.exp()
        return p, (p * logp).sum(-1, dtype=torch.float64)

    def add(self, rows: slice, hidden: torch.Tensor) -> None:
        """The dense pass's batch: final-norm states (b, T, H) of windows `rows`."""
        b, T, H = hidden.shape
        if self.stored:
            h = hidden[:, :-1].reshape(-1, H)
            parts = [self._distribution(h[s:s + LOGIT_CHUNK])
                     for s in range(0, h.shape[0], LOGIT_CHUNK)]
            block = torch.cat([p for p, _ in parts]).view(b, T - 1, -1)
            self.neg_entropy[rows] = torch.cat([n for _, n in parts]).view(b, T - 1).cpu()
        else:
            block = hidden
        if self.data is None:
            self.data = torch.empty(self.shape if self.stored else
                                    (self.shape[0],) + tuple(hidden.shape[1:]),
                                    dtype=block.dtype, device=block.device)
        self.data[rows] = block

    def chunks(self, rows: slice) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
        """(s, e) -> (p (e - s, V), sum p log p (e - s,)) of flattened positions s..e-1 of
        windows `rows`."""
        if self.stored:
            flat = self.data[rows].reshape(-1, self.shape[2])              # (b*(T-1), V)
            ne = self.neg_entropy[rows].reshape(-1)
            return lambda s, e: (flat[s:e], ne[s:e])
        h = self.data[rows][:, :-1].reshape(-1, self.data.shape[-1])       # (b*(T-1), H)
        return lambda s, e: self._distribution(h[s:e])


@torch.no_grad()
def damage_map(lm: LoadedModel, ids: torch.Tensor, *, max_block: int = 4,
               sizes: Iterable[int] | None = None, base: Variant | None = None,
               kl: bool = True, batch_size: int | None = None,
               progress: Progress | None = None, cancel: CancelToken | None = None,
               on_cell: Callable[[DamageMap], None] | None = None) -> DamageMap:
    """Measure the removal of every block of up to `max_block` layers of `base` (default: the
    loaded model) on windows `ids` (W, T).

    sizes: only blocks of these sizes (each <= max_block), e.g. (3,) for one off-diagonal.
    kl: also measure the KL to `base` (False: NaN; the NLL alone costs less).
    progress: an Event per candidate (and the dense pass's per batch).
    cancel: checked before every candidate; once set the map returns `partial`. A progress
        that raises `Cancelled` (`progress.watched`, the app's Stop) does the same.
    on_cell: called with the map after each candidate (live fill-in).
    """
    base = base or Variant.identity(lm)
    L = base.num_layers
    check_block(max_block, L)
    if sizes is not None:
        for n in sizes:
            check_block(n, L)
            if n > max_block:
                raise LayerError(f"block size {n} is larger than max_block {max_block}")
    if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 2:
        raise TextError(f"the damage map needs at least one window of 2 tokens (got windows of "
                        f"shape {tuple(ids.shape)}): give more text or a smaller seqlen")
    W, T = ids.shape
    batch_size = batch_size or auto_batch_size(lm.device, T)
    cells = candidate_cells(L, max_block, sizes)
    mine = ids[ranks.shard(W)]       # ranks: this one's windows (all of them in one process)
    together = ranks.world()[1] > 1
    nan = torch.full((L + 1, L + 1), math.nan, dtype=torch.float64)
    t0 = time.perf_counter()

    # the dense pass: the residual stream at every boundary a cut can start from (in the
    # model's dtype on its device, (W, T, H) each), its distribution (for KL) and its NLL
    starts = sorted({a for a, _ in cells})
    states: dict[int, torch.Tensor] = {}
    Wm = mine.shape[0]
    dense = _DenseDistribution(lm, Wm, T, base.head_module()) if kl else None
    dense_w = torch.zeros(Wm, dtype=torch.float64)                    # per-window NLL sums
    for batch in run_backbone(lm, mine, variant=base, record=starts, final_norm=True,
                              batch_size=batch_size, label="damage map: dense pass",
                              progress=watched(progress, None if together else cancel)):
        for k, h in batch.states.items():                                  # (b, T, H)
            if k not in states:
                states[k] = torch.empty((Wm,) + tuple(h.shape[1:]), dtype=h.dtype,
                                        device=h.device)
            states[k][batch.rows] = h
        if dense is not None:
            dense.add(batch.rows, batch.hidden)
        dense_w[batch.rows], _ = _window_figures(lm, batch.hidden, None, batch.ids,
                                                 base.head_module())
    dense_nll = float(ranks.gather_rows(dense_w, W).sum()) / (W * (T - 1))
    ppl, inc, kls = nan.clone(), nan.clone(), nan.clone()
    for m, v in ((ppl, math.exp(dense_nll)), (inc, 0.0), (kls, 0.0)):
        m.fill_diagonal_(v)
    out = DamageMap(L, max_block, W, T, dense_nll, ppl, inc, kls, total=len(cells),
                    dense_seconds=time.perf_counter() - t0)

    for k, (a, b) in enumerate(cells):
        if ranks.from_rank0(cancel is not None and cancel.cancelled):
            out.partial = True
            break
        cut = base.drop(range(a, b))
        try:       # ranks: a Stop only between candidates, where rank 0 decides it for all
            w_nll, w_kl = _candidate(lm, mine, cut, a, states, dense, batch_size,
                                     watched(None, None if together else cancel))
        except Cancelled:
            out.partial = True
            break
        w_nll, w_kl = ranks.gather_rows(torch.stack([w_nll, w_kl], 1), W).unbind(1)
        mean_nll = float(w_nll.sum()) / (W * (T - 1))
        if not math.isfinite(mean_nll):
            raise NonFiniteError(f"removing layers {block_label(a, b)} made the model produce "
                                 "NaN or inf")
        for m, v in ((ppl, math.exp(min(mean_nll, 700.0))), (inc, mean_nll - dense_nll),
                     (kls, float(w_kl.sum()) / (W * (T - 1)) if kl else math.nan)):
            m[a, b] = m[b, a] = v
        out.window_nll[(a, b)] = (w_nll / (T - 1)).tolist()
        if kl:
            out.window_kl[(a, b)] = (w_kl / (T - 1)).tolist()
        out.done.append((a, b))
        out.seconds = time.perf_counter() - t0
        if on_cell:
            on_cell(out)
        try:      # a Stop arrives through a watched progress: the cells done stay
            if progress:
                progress(Event("damage map", (k + 1) / len(cells), step=k + 1,
                               total=len(cells), unit="candidates", figure=float(ppl[a, b]),
                               seconds=out.seconds, note=f"without layers {block_label(a, b)}"))
            stopped = False
        except Cancelled:
            stopped = True
        if ranks.from_rank0(stopped):
            out.partial = k + 1 < len(cells)
            break
    out.seconds = time.perf_counter() - t0
    return out


def _candidate(lm: LoadedModel, ids: torch.Tensor, cut: Variant, a: int,
               states: dict[int, torch.Tensor], dense: _DenseDistribution | None,
               batch_size: int, report: Progress | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W,) NLL sums and (W,) KL sums of the variant `cut`, which equals the base before slot a:
    run from the dense states at boundary a."""
    W = ids.shape[0]
    nll = torch.zeros(W, dtype=torch.float64)
    kl = torch.zeros(W, dtype=torch.float64)
    start_states = states[a] if a > 0 else None
    for batch in run_backbone(lm, ids, variant=cut, start=a, start_states=start_states,
                              final_norm=True, batch_size=batch_size, label="damage map",
                              progress=report):
        ref = dense.chunks(batch.rows) if dense is not None else None
        n, k = _window_figures(lm, batch.hidden, ref, batch.ids, cut.head_module())
        nll[batch.rows], kl[batch.rows] = n, k
    return nll, kl


def _window_figures(lm: LoadedModel, hidden: torch.Tensor,
                    dense: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]] | None,
                    ids: torch.Tensor, head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window NLL sums and KL(p_dense || p) sums, (b,) float64 each, CPU.

    hidden: (b, T, H) final-norm states of the variant; position t predicts token t+1 (as
    `evaluate.nll.window_nll_sums`, chunk by chunk so the (b*T, V) logits never exist whole).
    dense: (s, e) -> the dense probabilities (n, V) and sum p log p (n,) of flattened positions
        s..e-1 (None: no KL).
    head: the variant's vocabulary head."""
    b, T, H = hidden.shape
    if dense is None:                    # the NLL alone: evaluate's own sums
        return (window_nll_sums(lm, hidden, ids.to(hidden.device), head=head).cpu(),
                torch.zeros(b, dtype=torch.float64))
    h = hidden[:, :-1].reshape(-1, H)                                    # (b*(T-1), H)
    targets = ids[:, 1:].reshape(-1).to(h.device)
    nll = torch.empty(targets.numel(), dtype=torch.float64, device=h.device)
    kl = torch.zeros(targets.numel(), dtype=torch.float64, device=h.device)
    for s in range(0, h.shape[0], LOGIT_CHUNK):
        e = min(s + LOGIT_CHUNK, h.shape[0])
        logq = F.log_softmax(final_logits(lm, h[s:e], head=head), dim=-1)  # (n, V) fp32
        # -log q(target): what F.cross_entropy computes from the same log_softmax, bit for bit
        nll[s:e] = -logq.gather(1, targets[s:e, None]).squeeze(1)
        p, neg_entropy = dense(s, e)                                       # (n, V), (n,)
        # KL = sum p log p - sum p log q: one row-wise dot product over the vocabulary
        kl[s:e] = (neg_entropy.to(kl.device) - _row_dots(p, logq)).clamp_min(0)
    return nll.view(b, T - 1).sum(1).cpu(), kl.view(b, T - 1).sum(1).cpu()


def _row_dots(a: torch.Tensor, b: torch.Tensor, block: int = 128) -> torch.Tensor:
    """sum_v a[i, v] b[i, v] of every row, (n,) float64, for (n, V) float32 a and b with unit
    column stride: float32 products summed in blocks of `block` columns, the blocks' sums added
    in float64. One float32 dot product over a 49k vocabulary drifts by about 2e-4 nats here,
    enough to swamp the KL of a harmless layer; the blocked sums err like the elementwise
    formula (about 1e-6) at a tenth of its cost."""
    n, V = a.shape
    m = V - V % block

    def blocks(t: torch.Tensor) -> torch.Tensor:                          # (n, m/block, block)
        return t.as_strided((n, m // block, block), (t.stride(0), block, 1))

    out = torch.einsum("nkv,nkv->nk", blocks(a), blocks(b)).double().sum(-1)
    if m < V:
        out += (a[:, m:] * b[:, m:]).sum(-1, dtype=torch.float64)
    return out
