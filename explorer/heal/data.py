"""What every healing mode needs: calibration windows split into fit and held-out parts, the dense
model's states and next-token distributions on them (computed once, cached), and a held-out
perplexity to watch while training.

The dense answers live in the one dense-state service (`explorer.core.dense_cache`: `DenseAnswers`
under a `heal_key`, the fingerprint of the weights, the windows and the fit/held-out split), so
the same model and windows reach the same answers whichever `LoadedModel` object holds them,
and a changed model or text never does.

All forward passes go through `explorer.core.backbone.run_backbone`. States are kept on the CPU in
float32, (W, T, H) per boundary: 256 windows x 128 tokens x 576 floats = 75 MB for SmolLM2.

Under torchrun (`explorer.core.ranks`) every pass here is shared out: each rank runs its shard of
the windows, and the dense states and top-k answers are copied into every rank's tensors in place
(`ranks.fill_rows`), the held-out figure's per-window NLL sums collected in window order
(`ranks.gather_rows`). Every rank then holds what one process would, the training steps index
any window, and the passes take 1/N of the time.

Example:
    >>> data = HealData.build(lm, load_texts("wiki").calibration, seqlen=128, windows=128,
    ...                       held_out=8, owner="example")
    >>> x24 = data.dense_states([24])[24]          # (128, 128, 576) dense residual stream
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from explorer.core.backbone import run_backbone
from explorer.core.dense_cache import CACHE, DenseAnswers
from explorer.core.dense_key import heal_key
from explorer.core.errors import TextError
from explorer.core.ranks import fill_rows, gather_rows, shard, shard_bounds, world
from explorer.evaluate.nll import LOGIT_CHUNK, final_logits, window_nll_sums
from explorer.core.model import LoadedModel
from explorer.core.progress import Progress
from explorer.probe.probe import calibration_windows
from explorer.core.tokens import tokenize
from explorer.core.variant import Variant


def split_windows(lm: LoadedModel, text: str, seqlen: int, windows: int, held_out: int,
                  owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held-out) calibration windows, (windows, T) and (held_out, T): the first `windows`
    windows of the text are fitted on, the next `held_out` ones only watched.

    Too short a text is refused with how many tokens the setting needs.
    """
    need = seqlen * (windows + held_out)
    have = tokenize(lm.tokenizer, text, max_tokens=need).numel()
    if have < need:
        raise TextError(f"{owner} needs {need} calibration tokens ({windows} + {held_out} "
                        f"held-out windows of {seqlen}); the text gives {have}: give more text or "
                        "fewer windows")
    ids = calibration_windows(lm, text, seqlen, windows + held_out)
    return ids[:windows], ids[windows:]


@dataclass
class HealData:
    """Calibration windows and caches of the dense model's answers on them."""

    lm: LoadedModel
    store: DenseAnswers

    @property
    def ids(self) -> torch.Tensor:
        """(W, T) windows fitted on."""
        return self.store.ids

    @property
    def held_out(self) -> torch.Tensor:
        """(V, T) windows never fitted on: the running perplexity."""
        return self.store.held_out

    @staticmethod
    def build(lm: LoadedModel, text: str, *, seqlen: int, windows: int, held_out: int,
              owner: str) -> "HealData":
        """The data for these settings. The last set built is kept (dense states are tens of MB)
        and reused when the same model, text and settings come again: trying a second mode after
        a first pays no dense pass."""
        fit, val = split_windows(lm, text, seqlen, windows, held_out, owner)
        return HealData(lm, CACHE.answers(heal_key(lm, fit, val), fit, val))

    @property
    def num_windows(self) -> int:
        return self.ids.shape[0]

    def dense_states(self, boundaries: list[int], progress: Progress | None = None
                     ) -> dict[int, torch.Tensor]:
        """The dense model's residual stream at these boundaries, (W, T, H) float32 on the CPU."""
        st = self.store
        with st.lock:
            missing = sorted(set(boundaries) - set(st.states))
            if missing:           # run from the deepest cached state below them, not from 0
                start = max((b for b in st.states if b <= missing[0]), default=0)
                st.states.update(variant_states(self.lm, Variant.identity(self.lm), self.ids,
                                                missing, progress, "dense states", start,
                                                st.states.get(start)))
            return {b: st.states[b] for b in boundaries}

    def states(self, v: Variant, b: int, progress: Progress | None = None) -> torch.Tensor:
        """The residual stream of `v` at its boundary b, (W, T, H) float32 on the CPU.

        The slots `v` shares with the dense model at its start are not run again: the pass starts
        from the cached dense state where they end (a cut after slot 17 needs slot 17 run, not
        slots 0..17)."""
        start = min(shared_prefix(v), b)
        if start == b:
            return self.dense_states([b], progress)[b]
        x = self.dense_states([start], progress)[start] if start > 0 else None
        return variant_states(self.lm, v, self.ids, [b], progress, f"states at slot {b}", start,
                              x)[b]

    def dense_topk(self, k: int, progress: Progress | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense model's top-k next-token log-probabilities at every position of every window:
        (indices (W, T, k) long, log-probs (W, T, k) float32), computed once."""
        with self.store.lock:
            return self._dense_topk(k, progress)

    def _dense_topk(self, k: int, progress: Progress | None) -> tuple[torch.Tensor, torch.Tensor]:
        st = self.store
        if st.topk is None or st.topk[0].shape[-1] != k:
            W, T = self.ids.shape
            mine = shard(W)                        # ranks: this one's windows
            idx = torch.empty((W, T, k), dtype=torch.long)
            lp = torch.empty((W, T, k), dtype=torch.float32)
            start = max(st.states, default=0)      # continue from the deepest cached state
            x = st.states.get(start)
            for b in run_backbone(self.lm, self.ids[mine], start=start, final_norm=True,
                                  start_states=x[mine] if x is not None else None,
                                  progress=progress, label="dense next-token distributions"):
                flat = b.hidden.reshape(-1, b.hidden.shape[-1])                 # (b*T, H)
                ti, tv = [], []
                for s in range(0, flat.shape[0], LOGIT_CHUNK):   # (chunk, V) logits at a time
                    top = F.log_softmax(final_logits(self.lm, flat[s:s + LOGIT_CHUNK]), -1).topk(k)
                    ti.append(top.indices.cpu())
                    tv.append(top.values.float().cpu())
                rows = slice(mine.start + b.rows.start, mine.start + b.rows.stop)   # of all W
                idx[rows] = torch.cat(ti).view(*b.hidden.shape[:2], k)
                lp[rows] = torch.cat(tv).view(*b.hidden.shape[:2], k)
            for t in (idx, lp):
                fill_rows(t, shard_bounds(W), "collecting the dense next-token distributions")
            st.topk = (idx, lp)
        return st.topk


def shared_prefix(v: Variant) -> int:
    """How many leading slots of `v` are the original layers 0, 1, ... unchanged."""
    n = 0
    while n < v.num_layers and type(v.slots[n]) is int and v.slots[n] == n:
        n += 1
    return n


def variant_states(lm: LoadedModel, v: Variant, ids: torch.Tensor, boundaries: list[int],
                   progress: Progress | None = None, label: str = "states", start: int = 0,
                   start_states: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """Residual stream of `v` at `boundaries` (all >= start) for windows `ids`, running from
    boundary `start` with the given states there: {b: (W, T, H) float32 CPU}. Under ranks each
    rank runs its shard of the windows and every rank ends with all of them."""
    W = ids.shape[0]
    mine = shard(W)
    out: dict[int, torch.Tensor] = {}
    for batch in run_backbone(lm, ids[mine], variant=v, start=start,
                              start_states=start_states[mine] if start_states is not None else None,
                              stop=max(boundaries), record=boundaries, progress=progress,
                              label=label):
        rows = slice(mine.start + batch.rows.start, mine.start + batch.rows.stop)   # of all W
        for b in boundaries:
            h = batch.states[b]                                              # (b, T, H)
            if b not in out:
                out[b] = torch.empty((W, *h.shape[1:]), dtype=torch.float32)
            out[b][rows] = h.float().cpu()
    for b in boundaries:
        fill_rows(out[b], shard_bounds(W), f"collecting the {label}")
    return out


def topk_kl(logits: torch.Tensor, idx: torch.Tensor, ref_logp: torch.Tensor,
            reduction: str = "mean") -> torch.Tensor:
    """KL(dense || student) over the dense model's top-k tokens plus one bin for all the rest.

    logits: (n, V) student logits; idx, ref_logp: (n, k) the dense top-k tokens and log-probs.
    Coarsening both distributions to the same k+1 bins gives a true KL between them, a lower bound
    of the full one that is exact when the dense tail is empty; returns the mean (or the sum,
    reduction="sum") over the n positions, in nats.
    """
    logq = F.log_softmax(logits.float(), dim=-1)              # (n, V)
    q_top = logq.gather(-1, idx)                              # (n, k)
    p_top = ref_logp.exp()
    kl_top = (p_top * (ref_logp - q_top)).sum(-1)             # (n,)
    p_rest = (1 - p_top.sum(-1)).clamp(min=0)                 # (n,) dense mass off the top k
    q_rest = (1 - q_top.exp().sum(-1)).clamp(min=1e-12)
    kl_rest = torch.where(p_rest > 1e-9, p_rest * (p_rest.clamp(min=1e-12).log() - q_rest.log()),
                          torch.zeros_like(p_rest))
    kl = kl_top + kl_rest
    return kl.sum() if reduction == "sum" else kl.mean()


@torch.no_grad()
def held_out_ppl(lm: LoadedModel, v: Variant, ids: torch.Tensor) -> float:
    """Perplexity of `v` on windows `ids` (V, T) (position t predicts t+1), for progress reports:
    each window's NLL sum (under ranks, each rank's shard, collected), added in window order."""
    V, T = ids.shape
    whole = V < world()[1]          # fewer held-out windows than ranks: each rank runs them all
    mine = slice(0, V) if whole else shard(V)
    nll = torch.empty(mine.stop - mine.start, dtype=torch.float64)
    for b in run_backbone(lm, ids[mine], variant=v, final_norm=True):
        nll[b.rows] = window_nll_sums(lm, b.hidden, b.ids, head=v.head_module()).cpu()
    total = float((nll if whole else gather_rows(nll, V)).sum())
    return math.exp(min(total / (V * (T - 1)), 700.0))
