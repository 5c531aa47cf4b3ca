"""Perplexity-guided greedy removal, the search behind SLEB and BlockPruner.

Each step scores every candidate edit of the current model (drop a layer; drop an attention or MLP
sub-block) by the calibration perplexity of the result, and keeps the lowest; the next step
re-scores everything on the edited model. What makes it affordable (docs/search.md):

- Prefix states: a candidate equals the current model up to the slot k it edits, so it runs from
  the current model's residual stream stored at boundary k (`dense_cache.PrefixStates`), not from
  the embeddings; after each step the states are brought up to date from the edited slot on.
- Early stop: windows run in a spread order and a candidate stops as soon as its NLL summed over
  the windows run so far exceeds the best complete candidate's total. Every token's NLL is >= 0,
  so such a candidate cannot win: the choice is the one a full evaluation of every candidate
  makes. Candidates are run in the order of their previous step's scores, so a strong one sets
  the bar early.
- Bounds before the head: on a small model the vocabulary head costs as much as several layers
  per candidate. Each candidate first runs its layers on every window and gets a lower bound of its
  NLL from the logits of a few thousand likely tokens only (`BOUND_VOCAB`: the current model's
  most probable ones plus every target; a log-sum-exp over a subset is smaller than over the
  whole vocabulary); a candidate whose bound already exceeds the best total stops there. The
  others wait and pay the full head best first (lowest bound first, each only while its bound
  is under the best total so far). Still exact, and most candidates of a step stop.
  A stopped candidate's score is a lower bound or the perplexity over the windows it ran: an
  estimate, used to order the next step.
- Ranks (torchrun, explorer/core/ranks.py, docs/scale.md): each rank runs every candidate on its
  shard of the windows; the per-window NLLs (bounds or exact) are collected in window order, so
  every total and every decision is taken on the whole set of windows, the same on every rank,
  and the search picks what one process picks. The stops within a pass (after a batch, or
  midway through the full head) would need a collective per batch, so under ranks they are off:
  a candidate stops only on the bound test after its layers, decided on the collected bounds.

Example:
    >>> search = PerplexitySearch(lm, ids)                    # ids: (W, T) calibration windows
    >>> search.set_current(Variant.identity(lm))
    >>> best, scored = search.step([Candidate(("layer", 3), "layer 3", lambda: v.drop([3]))])
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch

from explorer.core.dense_cache import CACHE, PrefixStates, checkpoints
from explorer.core.errors import ExplorerError
from explorer.core.ranks import agree, from_rank0, gather_rows, shard, sum_tensors, world
from explorer.evaluate.perplexity import BOUND_SLACK, WindowPass, finish_pass, run_windows
from explorer.evaluate.nll import LOGIT_CHUNK, final_logits
from explorer.core.model import LoadedModel
from explorer.core.progress import Progress
from explorer.core.variant import Variant


# Tokens in the vocabulary of the lower bounds (plus every target of the windows); how many
# candidates each size stops, and how tight the bounds are: docs/search.md.
BOUND_VOCAB = 4096
# Final hidden states that candidates waiting for their full head may hold, at most (8 x 128
# tokens of SmolLM2: 2.4 MB a candidate; of a 4096-wide model: 17 MB).
DEFER_BYTES = 512 * 2**20


@dataclass
class Candidate:
    """One edit of the current model: `build()` returns the edited variant (built when scored,
    so that only one candidate's new modules are alive at a time)."""

    key: Hashable                 # stable across steps, e.g. ("layer", 12) in original indices
    label: str                    # for progress and notes, e.g. "layer 12", "mlp 12"
    build: Callable[[], Variant]


@dataclass
class Scored:
    """A candidate's calibration figure."""

    key: Hashable
    label: str
    total: float                  # NLL summed over the windows run (a lower bound if stopped)
    ppl: float                    # perplexity over the windows run
    windows: int                  # windows run
    complete: bool                # every window ran (not stopped early)
    variant: Variant | None = None   # kept for the step's winner only


@dataclass
class SearchResult:
    """What a greedy search removed and what it measured."""

    variant: Variant                      # the result (its `groups`: the originals behind each slot)
    order: list                           # what was removed, in order (layer indices or blocks)
    ppl: float                            # calibration perplexity of the result
    scores: dict[str, list[float | None]]  # first step: each candidate's ppl, per layer
    steps: list[list[Scored]]             # every step's scores
    ppls: list[float]                     # calibration perplexity after each step

    def estimate_note(self) -> str:
        """'' or a sentence saying how many first-step scores are estimates (early stops)."""
        n = sum(not s.complete for s in self.steps[0]) if self.steps else 0
        return (f" {n} of the {len(self.steps[0])} first-step scores are estimates (those "
                "candidates stopped early, on a lower bound); early_stop=False makes them all "
                "exact.") if n else ""


class PerplexitySearch:
    """Scores candidate variants on calibration windows `ids` (W, T), from the current model's
    stored states (cache=True) and with early stops (abandon=True); cache=False, abandon=False
    runs every candidate from the embeddings over every window, as a plain perplexity loop would.

    Under ranks every rank builds the same search on the same `ids`: it runs its shard
    (`self.mine`) and takes every decision on the windows of all ranks (module docstring).
    """

    def __init__(self, lm: LoadedModel, ids: torch.Tensor, *, cache: bool = True,
                 abandon: bool = True, bound_vocab: int | None = BOUND_VOCAB,
                 batch_size: int | None = None, progress: Progress | None = None) -> None:
        self.lm, self.ids = lm, ids.cpu()
        self.ranked = world()[1] > 1
        self.mine = shard(ids.shape[0])        # this rank's windows (all of them in one process)
        self.local = self.ids[self.mine]
        if self.ranked:
            digest = hashlib.sha256(self.ids.numpy().tobytes()).hexdigest()[:16]
            agree((lm.num_layers, lm.num_parameters, digest), "model and calibration windows")
        self.cache, self.abandon = cache, abandon
        self.bound_size = bound_vocab if abandon else None     # None: no bounds
        self.batch_size, self.progress = batch_size, progress
        self.reference: PrefixStates | None = None
        self.current: Variant | None = None
        self.bound: torch.Tensor | None = None   # sorted token ids of the lower bounds
        self.hint: dict[Hashable, float] = {}    # last step's scores: the order to run in

    def set_current(self, variant: Variant) -> None:
        """Make `variant` the model the next candidates edit; store its states (from the slot
        where it differs from the previous current model on) and pick the bound's vocabulary
        from its predictions."""
        self.current = variant
        L = variant.num_layers
        marks = []
        if self.cache:
            W, T = self.ids.shape
            W = -(-W // world()[1])       # the largest shard: the same marks on every rank
            per_boundary = (W * T * self.lm.config.hidden_size
                            * torch.finfo(self.lm.dtype).bits // 8)
            marks = checkpoints(L, per_boundary, CACHE.budget(self.lm.device))
        if self.bound_size:
            marks = [*marks, L]                  # the last boundary, for the likely tokens
        if not marks:
            return
        p = run_windows(self.lm, self.local, variant=variant,
                        reference=self.reference if self.cache else None, record=marks,
                        batch_size=self.batch_size)
        if self.bound_size:
            self.bound = likely_tokens(self.lm, p.states.pop(L), self.ids, self.bound_size,
                                       variant.head_module())
        if self.cache:
            kept = {b: s for b, s in (self.reference.states.items() if self.reference else ())
                    if b < p.start}                    # the unchanged prefix stays valid
            self.reference = PrefixStates(variant, self.local, {**kept, **p.states})

    def _collected(self, p: WindowPass) -> WindowPass:
        """`p` (this rank's shard) as the pass over every window: its per-window NLLs (bounds or
        exact) collected from every rank in window order; `p` itself in one process."""
        if not self.ranked:
            return p
        W = self.ids.shape[0]
        nll = gather_rows(p.nll, W)
        evaluated = gather_rows(p.evaluated.to(torch.uint8), W).bool()
        return WindowPass(nll=nll, evaluated=evaluated, predicted=p.predicted, start=p.start,
                          seconds=p.seconds, abandoned=p.abandoned, head=p.head)

    def step(self, candidates: Sequence[Candidate],
             report: Callable[[int, str], None] | None = None, *, keep: int = 1,
             limit: float | None = None) -> tuple[Scored | None, list[Scored]]:
        """Score every candidate; returns (the lowest-NLL complete one, all scores in the order
        given). Ties go to the earlier candidate in `candidates`. report(k, label) is called
        before the k-th candidate runs.

        keep: how many of the lowest totals must be exact (a selection that keeps several): the
        bar is then the keep-th lowest complete total so far, so each of the `keep` best is
        complete. limit: a total known in advance that a candidate must beat to matter (e.g. the
        parent's in an evolutionary search): it caps the bar, and the best is None when every
        candidate stopped above it.

        With bounds, best first: the first candidate runs in full (its total is the first bar),
        every later one stops if its bound passes the bar, and the survivors wait with their
        final states to be finished in the order of their bounds, lowest first, each only if its
        bound is still under the best total by then (DEFER_BYTES caps what waits).
        """
        if not candidates:
            raise ExplorerError("no candidate left to remove")
        position = {c.key: k for k, c in enumerate(candidates)}
        order = sorted(candidates, key=lambda c: (self.hint.get(c.key, math.inf), position[c.key]))
        best: Scored | None = None
        best_variant: Variant | None = None
        scored: dict[Hashable, Scored] = {}
        waiting: list[tuple[WindowPass, WindowPass, Candidate, Variant]] = []   # (mine, whole, ...)
        finished: list[float] = []              # complete totals, ascending

        def bar() -> float | None:
            if not self.abandon:
                return None
            bars = [finished[keep - 1]] if len(finished) >= keep else []
            if limit is not None:
                bars.append(limit)
            return min(bars) if bars else None

        def take(p: WindowPass, cand: Candidate, variant: Variant) -> None:
            nonlocal best, best_variant
            s = Scored(cand.key, cand.label, p.total,
                       math.exp(min(p.mean, 700.0)) if math.isfinite(p.mean) else math.inf,
                       p.done, not p.abandoned)
            scored[cand.key] = s
            if s.complete and math.isfinite(s.total):
                bisect.insort(finished, s.total)
            if s.complete and math.isfinite(s.total) and (
                    best is None or s.total < best.total
                    or (s.total == best.total and position[cand.key] < position[best.key])):
                best, best_variant = s, variant

        def finish_lowest() -> None:
            waiting.sort(key=lambda w: w[1].total)
            p, whole, cand, variant = waiting.pop(0)
            limit = bar()
            if limit is not None and whole.total > limit * (1 + BOUND_SLACK):
                whole.abandoned, p.waiting = True, []  # its bound lost to a later finisher
                take(whole, cand, variant)
                return
            # ranks: every window's exact NLL (a stop midway would need a collective per batch)
            take(self._collected(finish_pass(self.lm, p, None if self.ranked else limit)),
                 cand, variant)

        for k, cand in enumerate(order):
            if report:
                report(k, cand.label)
            variant = cand.build()
            above = bar()
            if self.ranked and above is not None:
                # no stop within this rank's pass: bounds on every window (or the exact NLL),
                # the bound test below on the collected bounds
                above = math.inf if self.bound is not None else None
            p = run_windows(self.lm, self.local, variant=variant,
                            reference=self.reference if self.cache else None,
                            abandon_above=above, bound=self.bound,
                            defer=True, batch_size=self.batch_size)
            whole = self._collected(p)
            if p.waiting:
                limit = bar()
                if self.ranked and limit is not None and \
                        whole.total > limit * (1 + BOUND_SLACK):
                    whole.abandoned, p.waiting = True, []     # the summed bounds lost
                    take(whole, cand, variant)
                    continue
                waiting.append((p, whole, cand, variant))
                # rank 0's memory decides, so every rank finishes the same candidates
                while from_rank0(sum(_waiting_bytes(w[0]) for w in waiting) > DEFER_BYTES):
                    finish_lowest()
            else:
                take(whole, cand, variant)
        while waiting:
            finish_lowest()
        self.hint = {key: s.total / max(1, s.windows) for key, s in scored.items()}
        if best is None:
            if limit is not None:       # none finished under the limit (or all were NaN)
                return None, [scored[c.key] for c in candidates]
            raise ExplorerError("every candidate made the model produce NaN or inf")
        best.variant = best_variant
        return best, [scored[c.key] for c in candidates]


def _waiting_bytes(p: WindowPass) -> int:
    return sum(h.numel() * h.element_size() for _, h, _ in p.waiting)

def likely_tokens(lm: LoadedModel, states: torch.Tensor, ids: torch.Tensor, size: int,
                  head: torch.nn.Module | None = None) -> torch.Tensor:
    """Sorted token ids: the `size` tokens with the most probability mass summed over every
    position of windows `ids` (W, T), given the residual stream `states` (W, T, H) at the last
    boundary, plus every target token of the windows (a lower bound needs each target).
    Under ranks `states` are this rank's shard of `ids`: the mass is added across ranks (float64,
    rank order), so every rank holds the same tokens.
    head: the searched variant's vocabulary head (None: the loaded model's)."""
    H = states.shape[-1]
    with torch.no_grad():
        h = lm.arch.norm(lm.model)(states[:, :-1].to(lm.device)).reshape(-1, H)
        mass = None
        for s in range(0, h.shape[0], LOGIT_CHUNK):
            p = torch.softmax(final_logits(lm, h[s:s + LOGIT_CHUNK], head=head),
                              dim=-1).sum(dim=0)                                         # (V,)
            mass = p if mass is None else mass + p
    mass = sum_tensors([mass], "adding the likely tokens' mass")[0]   # ranks: every rank's shard
    top = torch.topk(mass, min(size, mass.numel())).indices
    return torch.unique(torch.cat([top, ids[:, 1:].reshape(-1).to(top.device)]))
