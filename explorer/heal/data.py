"""What every healing mode needs: calibration windows split into fit and held-out parts, the dense
model's states and next-token distributions on them (computed once, cached), and a held-out
perplexity to watch while training.

All forward passes go through `explorer.backbone.run_backbone`. States are kept on the CPU in
float32, (W, T, H) per boundary: 256 windows x 128 tokens x 576 floats = 75 MB for SmolLM2.

Example:
    >>> data = HealData.build(lm, load_texts("wiki").calibration, seqlen=128, windows=128)
    >>> x24 = data.dense_states([24])[24]          # (128, 128, 576) dense residual stream
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..backbone import run_backbone
from ..errors import TextError
from ..evaluate import _final_logits as final_logits, token_nll
from ..load import LoadedModel, Progress
from ..probe import calibration_windows
from ..tokens import tokenize
from ..variant import Variant


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
    ids: torch.Tensor                 # (W, T) windows fitted on
    held_out: torch.Tensor            # (V, T) windows never fitted on: the running perplexity
    progress: Progress | None = None
    _states: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _topk: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @staticmethod
    def build(lm: LoadedModel, text: str, *, seqlen: int, windows: int, held_out: int,
              owner: str, progress: Progress | None = None) -> "HealData":
        fit, val = split_windows(lm, text, seqlen, windows, held_out, owner)
        return HealData(lm, fit, val, progress)

    @property
    def num_windows(self) -> int:
        return self.ids.shape[0]

    def dense_states(self, boundaries: list[int]) -> dict[int, torch.Tensor]:
        """The dense model's residual stream at these boundaries, (W, T, H) float32 on the CPU."""
        missing = sorted(set(boundaries) - set(self._states))
        if missing:
            self._states.update(variant_states(self.lm, Variant.identity(self.lm), self.ids,
                                               missing, self.progress, "dense states"))
        return {b: self._states[b] for b in boundaries}

    def dense_topk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense model's top-k next-token log-probabilities at every position of every window:
        (indices (W, T, k) long, log-probs (W, T, k) float32), computed once."""
        if self._topk is None or self._topk[0].shape[-1] != k:
            idx, lp = [], []
            for b in run_backbone(self.lm, self.ids, final_norm=True, progress=self.progress,
                                  label="dense next-token distributions"):
                logp = F.log_softmax(final_logits(self.lm, b.hidden), dim=-1)   # (b, T, V)
                top = logp.topk(k, dim=-1)
                idx.append(top.indices.cpu())
                lp.append(top.values.float().cpu())
            self._topk = (torch.cat(idx), torch.cat(lp))
        return self._topk


def variant_states(lm: LoadedModel, v: Variant, ids: torch.Tensor, boundaries: list[int],
                   progress: Progress | None = None, label: str = "states"
                   ) -> dict[int, torch.Tensor]:
    """Residual stream of `v` at `boundaries` for windows `ids`: {b: (W, T, H) float32 CPU}."""
    out: dict[int, list[torch.Tensor]] = {b: [] for b in boundaries}
    for batch in run_backbone(lm, ids, variant=v, stop=max(boundaries), record=boundaries,
                              progress=progress, label=label):
        for b in boundaries:
            out[b].append(batch.states[b].float().cpu())
    return {b: torch.cat(parts) for b, parts in out.items()}


def topk_kl(logits: torch.Tensor, idx: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL(dense || student) over the dense model's top-k tokens plus one bin for all the rest.

    logits: (n, V) student logits; idx, ref_logp: (n, k) the dense top-k tokens and log-probs.
    Coarsening both distributions to the same k+1 bins gives a true KL between them, a lower bound
    of the full one that is exact when the dense tail is empty; returns the mean over the n
    positions (nats).
    """
    logq = F.log_softmax(logits.float(), dim=-1)              # (n, V)
    q_top = logq.gather(-1, idx)                              # (n, k)
    p_top = ref_logp.exp()
    kl_top = (p_top * (ref_logp - q_top)).sum(-1)             # (n,)
    p_rest = (1 - p_top.sum(-1)).clamp(min=0)                 # (n,) dense mass off the top k
    q_rest = (1 - q_top.exp().sum(-1)).clamp(min=1e-12)
    kl_rest = torch.where(p_rest > 1e-9, p_rest * (p_rest.clamp(min=1e-12).log() - q_rest.log()),
                          torch.zeros_like(p_rest))
    return (kl_top + kl_rest).mean()


@torch.no_grad()
def held_out_ppl(lm: LoadedModel, v: Variant, ids: torch.Tensor) -> float:
    """Perplexity of `v` on windows `ids` (position t predicts t+1), for progress reports."""
    total, count = 0.0, 0
    for b in run_backbone(lm, ids, variant=v, final_norm=True):
        nll, n = token_nll(lm, b.hidden, b.ids)
        total += nll
        count += n
    return math.exp(min(total / count, 700.0))
