"""Perplexity with an explicit protocol.

Protocol (README.md, "Perplexity protocol"; reported with every figure): the evaluation documents joined with
"\n\n" are tokenized once without special tokens, cut into non-overlapping windows of `seqlen`
tokens (a BOS token in front of each when the BOS rule says so), and
    PPL = exp( mean over every predicted token of -log p(token | window prefix) ).
A window of T text tokens predicts T-1 of them (T with BOS in front).

Speed: windows run in batches through the backbone only (`backbone.run_backbone`: no KV cache,
torch.no_grad), sized by a token budget per forward pass (BATCH_TOKENS); the vocabulary
projection and the cross-entropy run on chunks of positions, so the (batch x seqlen x vocab)
logits tensor is never materialised whole (49k vocab x 8 x 512 in fp32 would be 800 MB).
`compute_dtype="bfloat16"` runs the layers' matrix products under bf16 autocast (residual stream,
norms, head and loss stay in fp32); the figure moves slightly (bench/RESULTS.md says how much).
It only pays on CPUs with native bf16 (AVX512-BF16, AMX): elsewhere it is slower than fp32
(bench/RESULTS.md), so the default keeps the model's own dtype, the exact figure. On CUDA
the model is already loaded in bf16 (`load_model`).

Cache (explorer/core/dense_cache.py, docs/search.md): the dense figure is computed once per model
weights, windows and dtype (then read from memory or disk), and its pass keeps the residual
stream at layer boundaries; a variant whose first change is at slot k then runs from the stored
boundary at or below k, not from the embeddings. Same figure, to float rounding.

Live figure: windows are evaluated in an order spread over the text (`spread_order`), so the
running figure is an estimate of the final one from the first batch on; progress messages carry
it with a 95% band from the spread of the per-window NLL (finite-population corrected, so it
closes on the final figure). For a variant, when the dense figure is cached, the estimate is the
dense figure plus the mean change over the windows run so far, which settles much sooner. The
result keeps each window's NLL (`PPLResult.window_nll`) and gives the band of the figure over the
text's windows (`PPLResult.interval`).

Cost: FLOPs per predicted token ~ 2 x N, N = the parameters a token passes through (every weight
matrix once, vocabulary head included; Kaplan et al. 2020, arXiv 2001.08361, eq. 2.1), plus
attention scores 2 x n_layers x seqlen x d_attn, small at seqlen 512.

Example:
    >>> r = perplexity(lm, load_texts("wiki").evaluation, seqlen=512, max_tokens=4096)
    >>> round(r.ppl, 1), r.tokens
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch
import torch.nn as nn

from explorer.core.model import LoadedModel
from explorer.core.progress import Event, Progress
from explorer.core.ranks import agree, gather_rows, shard, world
from explorer.core.backbone import run_backbone
from explorer.core.dense_cache import CACHE, PrefixStates, checkpoints, first_change
from explorer.core.dense_key import dense_key
from explorer.core.variant import Variant
from explorer.evaluate.nll import (NonFiniteError, autocast, compute_dtype_of,
                                   window_nll_lower_bounds, window_nll_sums)
from explorer.evaluate.windows import evaluation_windows, nll_band, running_event, spread_order


@dataclass(frozen=True)
class PPLResult:
    """A perplexity figure and the protocol that produced it."""

    ppl: float
    nll: float           # mean negative log-likelihood per predicted token (nats)
    tokens: int          # predicted tokens
    windows: int
    seqlen: int          # text tokens per window
    bos: bool            # whether each window started with BOS
    source: str          # name of the text source
    seconds: float
    window_nll: tuple[float, ...] = ()   # mean NLL of each window, in text order
    start: int = 0       # the boundary the pass started from (0: a full pass; dense_cache)
    cached: bool = False  # the dense figure was read from the cache: no pass was run

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """(low, high) band of the perplexity over the text's windows: exp(mean NLL +- z x the
        standard error of the per-window means). (ppl, ppl) with fewer than two windows."""
        if len(self.window_nll) < 2:
            return self.ppl, self.ppl
        return nll_band(self.window_nll, len(self.window_nll), z, finite=False)

    def protocol(self) -> str:
        return (f"{self.source}: {self.windows} non-overlapping windows of {self.seqlen} tokens"
                f"{' + BOS' if self.bos else ''}, {self.tokens} predicted tokens, "
                "PPL = exp(mean NLL)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window_nll"] = list(self.window_nll)
        d["ppl_low"], d["ppl_high"] = self.interval()
        d["protocol"] = self.protocol()
        return d

    @staticmethod
    def from_dict(d: dict) -> "PPLResult":
        """The result `to_dict` wrote (its derived keys ignored)."""
        kw = {k: v for k, v in d.items() if k in PPLResult.__dataclass_fields__}
        kw["window_nll"] = tuple(kw.get("window_nll", ()))
        return PPLResult(**kw)


# -- one pass over the windows ---------------------------------------------------------------------

@dataclass
class WindowPass:
    """The NLL of each window after one (possibly partial) pass of a variant over windows (W, T)."""

    nll: torch.Tensor                 # (W,) float64 NLL sum per window
    evaluated: torch.Tensor           # (W,) bool: the windows with a figure (all unless abandoned;
                                      # a pass stopped on bounds holds bounds for some)
    predicted: int                    # predicted tokens per window (T - 1)
    start: int                        # the boundary the pass started from
    seconds: float
    states: dict[int, torch.Tensor] = field(default_factory=dict)  # recorded: (W, T, H)
    abandoned: bool = False           # stopped once the running total passed `abandon_above`
    # windows whose `nll` is still a lower bound, as (window indices (b,), final-norm hidden
    # (b, T, H), ids (b, T)), for `finish_pass` (run_windows with bound and defer=True)
    waiting: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    head: nn.Module | None = None     # the variant's vocabulary head (None: the loaded model's)

    @property
    def done(self) -> int:
        return int(self.evaluated.sum())

    @property
    def total(self) -> float:
        """Sum of the NLL of every evaluated token (a lower bound of the full total when
        abandoned or waiting: every token's NLL is >= 0, and a waiting window holds a bound).
        NaN or inf when the model produced them."""
        return float(self.nll[self.evaluated].sum())

    @property
    def mean(self) -> float:
        return self.total / max(1, self.done * self.predicted)


# Relative slack on the bound test of `run_windows`: the bound and the exact NLL come from two
# different matrix products, so a candidate whose bound lies within float rounding of the bar is
# run in full rather than stopped on a rounding error.
BOUND_SLACK = 1e-5


def run_windows(lm: LoadedModel, ids: torch.Tensor, *, variant: Variant | None = None,
                reference: PrefixStates | None = None, record: Sequence[int] = (),
                order: Sequence[int] | None = None, batch_size: int | None = None,
                compute_dtype: str | torch.dtype | None = None,
                abandon_above: float | None = None, bound: torch.Tensor | None = None,
                defer: bool = False, progress: Progress | None = None,
                label: str = "perplexity", control: Sequence[float] | None = None,
                layer_major: bool | None = None, checkpoint=None) -> WindowPass:
    """Per-window NLL of `variant` on windows `ids` (W, T): the one evaluation loop.

    reference: stored states of a variant that shares a prefix with this one (dense_cache): the
        pass starts at the stored boundary at or below the first slot where they differ.
    record: boundaries (from the start on) to keep for every window, as (W, T, H) tensors.
    order: the order windows are run in (default `spread_order`: the running figure reported
        through `progress` is an estimate of the final one from the first batch on).
    abandon_above: stop once the NLL summed so far exceeds this; since every token's NLL is
        >= 0 the full total would too (a search uses it to drop a candidate that cannot win).
    bound: with abandon_above, sorted token ids holding every target (`window_nll_lower_bounds`):
        every window first runs the layers and gets a cheap lower bound of its NLL, and the pass
        stops as soon as the bounds so far exceed abandon_above; a pass that survives them all
        then pays the full head (`finish_pass`), stopping when exact NLL so far plus the bounds
        of the rest pass the bar. The final hidden states (W, T, H) wait in memory meanwhile.
        A stopped pass holds bounds, not exact figures, for the windows not finished.
    defer: with bound, return before the full head, the windows `waiting` (a search finishes
        the most promising of its candidates first).
    control: (W,) mean NLL of each window under the dense model: the running figure is then the
        dense figure plus the mean change so far (`running_event`).
    layer_major: run the layers one at a time over every window (explorer/core/stream.py; the same
        figures, no early stop before the last layer); None: when the model streams its layers.
    checkpoint: a `resume.LayerCheckpoint`: the pass runs layer by layer, saves each layer and
        goes on from the saved one when resuming (explorer/core/resume.py).
    """
    variant = variant or Variant.identity(lm)
    if checkpoint is not None:          # a pass that saves its layers runs layer by layer
        layer_major = True
    W, T = ids.shape
    perm = torch.as_tensor(spread_order(W) if order is None else list(order), dtype=torch.long)
    start, ref_states = 0, None
    if reference is not None and reference.ids.shape == ids.shape and torch.equal(reference.ids,
                                                                                   ids.cpu()):
        start, ref_states = reference.start_for(variant)
    starts = None
    if ref_states is not None:
        perm_dev = perm.to(ref_states.device)

        def starts(rows: slice) -> torch.Tensor:        # (b, T, H) for the batch's windows
            return ref_states.index_select(0, perm_dev[rows])
    record = sorted(b for b in set(record) if start <= b <= variant.num_layers)
    dt = compute_dtype_of(lm.dtype, compute_dtype)
    bar = abandon_above
    bounded = bound is not None and bar is not None
    head = variant.head_module()
    p = WindowPass(nll=torch.zeros(W, dtype=torch.float64),
                   evaluated=torch.zeros(W, dtype=torch.bool), predicted=T - 1, start=start,
                   seconds=0.0, head=head)
    means: list[float] = []
    done_control: list[float] = []
    control_mean = sum(control) / len(control) if control is not None else 0.0
    t0 = time.perf_counter()
    batches = run_backbone(lm, ids[perm], variant=variant, start=start, start_states=starts,
                           final_norm=True, record=record, batch_size=batch_size,
                           layer_major=layer_major,
                           progress=progress if _streams(lm, layer_major) else None,
                           label=label, checkpoint=checkpoint)
    try:
        with autocast(lm.device, lm.dtype, dt):
            for batch in batches:
                rows = perm[batch.rows]                               # window indices (b,)
                for b, h in batch.states.items():                     # h: (b, T, H)
                    if b not in p.states:
                        p.states[b] = torch.empty((W,) + tuple(h.shape[1:]), dtype=h.dtype,
                                                  device=h.device)
                    p.states[b][rows.to(h.device)] = h
                if bounded:
                    sums = window_nll_lower_bounds(lm, batch.hidden, batch.ids, bound,
                                                   head).cpu()
                    p.waiting.append((rows, batch.hidden, batch.ids))
                else:
                    sums = window_nll_sums(lm, batch.hidden, batch.ids, head=head).cpu()
                p.nll[rows] = sums
                p.evaluated[rows] = True
                if not bounded:
                    means.extend((sums / (T - 1)).tolist())
                    if control is not None:
                        done_control.extend(control[i] for i in rows.tolist())
                    if progress:
                        progress(running_event(
                            means, W, label, done_control if control is not None else None,
                            control_mean))
                if bar is not None and p.total > bar * (1 + BOUND_SLACK * bounded) and \
                        (bounded or batch.rows.stop < W):
                    p.abandoned, p.waiting = True, []
                    break
    finally:
        batches.close()          # restores the model's layers at once, also after a break
    p.seconds = time.perf_counter() - t0
    return p if defer else finish_pass(lm, p, bar)


def _streams(lm: LoadedModel, layer_major: bool | None) -> bool:
    return bool(layer_major) or (layer_major is None and lm.weights is not None)


def finish_pass(lm: LoadedModel, p: WindowPass, abandon_above: float | None = None
                ) -> WindowPass:
    """Replace the lower bounds `p` holds for its waiting windows by their exact NLL (the full
    head), batch by batch; stop once exact NLL so far plus the bounds of the rest exceed
    abandon_above (then `p.abandoned`, and the rest keep their bounds). Returns `p`."""
    t0 = time.perf_counter()
    while p.waiting:
        rows, hidden, ids = p.waiting.pop(0)
        p.nll[rows] = window_nll_sums(lm, hidden, ids, head=p.head).cpu()
        if abandon_above is not None and p.waiting and \
                p.total > abandon_above * (1 + BOUND_SLACK):
            p.abandoned, p.waiting = True, []
    p.seconds += time.perf_counter() - t0
    return p


# -- perplexity ------------------------------------------------------------------------------------

def dense_checkpoints(lm: LoadedModel, ids: torch.Tensor) -> list[int]:
    """The boundaries the dense cache keeps for windows `ids` (W, T) within its budget."""
    W, T = ids.shape
    per_boundary = W * T * lm.config.hidden_size * torch.finfo(lm.dtype).bits // 8
    return checkpoints(lm.num_layers, per_boundary, CACHE.budget(lm.device))


def perplexity(lm: LoadedModel, text: str, *, variant: Variant | None = None, seqlen: int = 512,
               max_tokens: int | None = 16384, batch_size: int | None = None, bos: str = "auto",
               source: str = "text", progress: Progress | None = None,
               compute_dtype: str | torch.dtype | None = None, cache: bool = True,
               layer_major: bool | None = None, checkpoint=None) -> PPLResult:
    """Perplexity of the model (or of `variant`) on `text` under the protocol above.

    max_tokens: evaluate at most this many text tokens (None: the whole text).
    batch_size: windows per forward pass (None: `auto_batch_size`, from the device's budget).
    compute_dtype: None/"auto" (default) runs in the model's dtype, the exact figure;
        "bfloat16" runs the decoder layers under bf16 autocast (faster on CPU, the value moves
        by ~1e-3 relative; the head and the loss stay in fp32).
    cache: use the dense cache (explorer/core/dense_cache.py): the dense figure is computed once per
        weights, windows and dtype, and a variant runs from the stored states before its first
        change. False runs every layer (for a model whose forward pass is patched by hooks, which
        the cache's key cannot see).
    layer_major: run layer by layer (explorer/core/stream.py): the same figure with one layer's
        weights on the device at a time; None: when the model streams its layers (load_model's
        offload).
    checkpoint: a `resume.LayerCheckpoint` (the `eval` command's --checkpoint): the pass runs
        layer by layer, saves each layer's frontier and, resuming, goes on from the saved layer;
        the dense cache is bypassed (a resumed pass must run the pass it saved).
    """
    w = evaluation_windows(lm, text, seqlen, max_tokens, bos)
    variant = variant or Variant.identity(lm)
    dt = compute_dtype_of(lm.dtype, compute_dtype)
    t0 = time.perf_counter()
    kw = dict(variant=variant, batch_size=batch_size, compute_dtype=dt, progress=progress,
              layer_major=layer_major, checkpoint=checkpoint)

    def result(p: WindowPass) -> PPLResult:
        W = w.shape[0]
        count = p.predicted * W
        mean = p.total / count
        if not math.isfinite(mean):
            raise NonFiniteError("the model produced NaN or inf on the evaluation text: this "
                                 "variant is broken (try merging fewer or other layers)")
        return PPLResult(ppl=math.exp(mean), nll=mean, tokens=count, windows=W, seqlen=seqlen,
                         bos=w.shape[1] > seqlen, source=source,
                         seconds=time.perf_counter() - t0,
                         window_nll=tuple((p.nll / p.predicted).tolist()), start=p.start)

    if world()[1] > 1:                # ranks: each its shard of the windows, NLLs collected
        return result(sharded_windows(lm, w, **kw))
    if not cache or checkpoint is not None:
        return result(run_windows(lm, w, **kw))
    key = dense_key(lm, w, dt)
    marks = dense_checkpoints(lm, w)
    dense = Variant.identity(lm)
    if variant.is_identity():
        with CACHE.building(key):          # a second session waits, then finds the figure
            fig = CACHE.figure(key)
            if fig is not None:
                r = replace(PPLResult.from_dict(fig), source=source, cached=True,
                            seconds=time.perf_counter() - t0)
                if progress:
                    progress(Event("perplexity", 1.0, figure=r.ppl, note="the dense figure, cached"))
                return r
            p = run_windows(lm, w, record=marks, **kw)
            r = result(p)
            CACHE.store_figure(key, r.to_dict())
            CACHE.store_states(key, PrefixStates(dense, w, p.states))
            CACHE.save_states(key, PrefixStates(dense, w, p.states))
            return r
    ref = _nearest_states(key, variant, w, marks, dense)
    fig = CACHE.figure(key)              # its per-window NLL steadies the running figure
    control = fig.get("window_nll") if fig else None
    if control is not None and len(control) != w.shape[0]:
        control = None
    p = run_windows(lm, w, reference=ref, record=_missing(ref, marks, variant, dense),
                    control=control, **kw)
    if p.states:   # the pass went through unchanged layers: keep their states for later variants
        CACHE.store_states(key, PrefixStates(dense, w, {**(ref.states if ref else {}),
                                                        **p.states}))
    return result(p)


def sharded_windows(lm: LoadedModel, w: torch.Tensor, **kw) -> WindowPass:
    """`run_windows` on this rank's shard of windows `w` (W, T) (`explorer.core.ranks`), its
    per-window NLL sums collected from every rank in window order: the pass of one process,
    without the dense cache (each rank would key it by its own shard)."""
    W = w.shape[0]
    digest = hashlib.sha256(w.cpu().numpy().tobytes()).hexdigest()[:16]
    agree((lm.num_layers, lm.num_parameters, digest), "model and evaluation windows")
    p = run_windows(lm, w[shard(W)], **kw)
    p.nll = gather_rows(p.nll, W)
    p.evaluated = gather_rows(p.evaluated.to(torch.uint8), W).bool()
    return p


def _nearest_states(key, variant: Variant, w: torch.Tensor, marks: list[int],
                    dense: Variant) -> PrefixStates | None:
    """The dense states in memory, joined by the boundary on disk nearest below `variant`'s first
    change when memory has none as close (a new process, or states evicted)."""
    ref = CACHE.states(key, variant.lm)
    k = first_change(dense, variant)
    best = max((b for b in marks if b <= k), default=0)
    if ref is not None and ref.start_for(variant)[0] >= best:
        return ref
    disk = CACHE.states_from_disk(key, variant, w)
    if disk is None:
        return ref
    ref = PrefixStates(dense, w, {**(ref.states if ref else {}), **disk.states})
    CACHE.store_states(key, ref)
    return ref


def _missing(ref: PrefixStates | None, marks: list[int], variant: Variant,
             dense: Variant) -> list[int]:
    """Checkpoints the cache lacks that a pass of `variant` computes as the dense model would:
    boundaries up to its first change (a pass after a restart fills the cache this way)."""
    k = first_change(dense, variant)
    have = set(ref.states) if ref is not None else set()
    return [b for b in marks if b <= k and b not in have]


# The prompts the app and the HTML report continue: a fact, an explanation and code, three kinds
# of text that removing layers tends to harm differently.
