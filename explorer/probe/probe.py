"""One batched forward pass that records the residual stream around every layer.

The pass is `backbone.run_backbone` with every boundary recorded.

Notation (docs/architecture.md, boundaries): layer i maps x_i -> x_{i+1}; x_0 is the input of the first layer
(the embeddings) and x_L the output of the last layer, *before* the final norm. Forward hooks on
the decoder layers (in run_backbone) capture these directly; `output_hidden_states` is not used
because its last entry comes after the final norm, which makes the last layer look unlike every
other.

Massive activations: many LLMs write a huge value into the first position of every window (a
norm a hundred times or more the other tokens'; docs/measures.md); left in, that one position dominates mean cosines and
least-squares fits. `skip_first=True` (default) leaves it out of the recorded tokens.

Example:
    >>> pr = probe(lm, load_texts("wiki").calibration, seqlen=128, num_samples=16)
    >>> pr.states.shape          # (L+1, N, H): N recorded tokens
    torch.Size([31, 2032, 576])
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from explorer.core.errors import LayerError, TextError
from explorer.core.model import LoadedModel
from explorer.core.progress import Progress
from explorer.core.ranks import fill_rows, shard, shard_bounds, world
from explorer.core.backbone import run_backbone
from explorer.core.gather import Gather, Sums, View
from explorer.core.tokens import auto_batch_size, tokenize, use_bos, windows

if TYPE_CHECKING:
    from explorer.core.variant import Variant


@dataclass
class ProbeResult:
    """Residual-stream states of the calibration tokens, for every layer boundary."""

    states: torch.Tensor      # (L+1, N, H) float32: x_0..x_L at the N recorded token positions
    last: torch.Tensor        # (L+1, B, H) float32: x_0..x_L at each sample's last token
    sample_of: torch.Tensor   # (N,) long: which sample (window) each recorded token came from
    input_ids: torch.Tensor   # (B, T) the calibration windows (CPU)
    skip_first: bool          # whether the first position of each window was left out
    seconds: float            # wall time of the forward pass and recording

    @property
    def num_layers(self) -> int:
        return self.states.shape[0] - 1

    @property
    def num_tokens(self) -> int:
        return self.states.shape[1]

    @property
    def num_samples(self) -> int:
        return self.last.shape[1]

    def pooled(self) -> torch.Tensor:
        """(L+1, B, H) mean of the recorded tokens of each sample: one point per sample and
        layer."""
        L1, N, H = self.states.shape
        B = self.num_samples
        out = torch.zeros(L1, B, H, dtype=self.states.dtype, device=self.states.device)
        idx = self.sample_of.to(self.states.device)
        out.index_add_(1, idx, self.states)
        counts = torch.bincount(idx, minlength=B).clamp(min=1).to(out.dtype)
        return out / counts[None, :, None]


def calibration_windows(lm: LoadedModel, text: str, seqlen: int = 128, num_samples: int = 32,
                        bos: str = "auto") -> torch.Tensor:
    """(B, T) calibration windows: the first `num_samples` non-overlapping windows of the text."""
    bos_id = lm.tokenizer.bos_token_id if use_bos(lm.tokenizer, bos, lm.arch.needs_bos) else None
    ids = tokenize(lm.tokenizer, text, max_tokens=seqlen * num_samples)
    return windows(ids, seqlen, bos_id=bos_id, max_windows=num_samples)


@torch.no_grad()
def probe(lm: LoadedModel, text: str | None = None, *, input_ids: torch.Tensor | None = None,
          seqlen: int = 128, num_samples: int = 32, batch_size: int | None = None,
          skip_first: bool = True, max_tokens: int | None = None, seed: int = 0, bos: str = "auto",
          progress: Progress | None = None, layer_major: bool | None = None,
          variant: "Variant | None" = None, checkpoint=None) -> ProbeResult:
    """Run calibration text (or ready `input_ids` of shape (B, T)) through the model once.

    batch_size: windows per forward pass (None: `tokens.auto_batch_size`, from the device).
    max_tokens: keep a random subset of at most this many recorded tokens (same subset for every
    layer, fixed by `seed`) so that long calibration text keeps memory bounded.
    layer_major: run layer by layer (explorer/core/stream.py; the same figures); None: when the model
    streams its layers.
    variant: the layers probed (default: the loaded model's own); nothing is swapped in.
    checkpoint: a `resume.LayerCheckpoint`: the pass runs layer by layer, saves each layer and
    resumes a killed run (explorer/core/resume.py).
    Under ranks (`explorer.core.ranks`) each rank runs its shard of the windows and every rank gets
    the whole result (the states collected in window order): every measure computed from it
    (cosine, angular, CKA, NPIB, the manifold maps) is the one process's.
    """
    if input_ids is None:
        if text is None:
            raise TextError("probe needs calibration text or input_ids")
        input_ids = calibration_windows(lm, text, seqlen, num_samples, bos)
    B, T = input_ids.shape
    batch_size = batch_size or auto_batch_size(lm.device, T)
    first = 1 if skip_first else 0
    if T - first < 1:
        raise TextError(f"windows of {T} tokens leave nothing to record")
    L = variant.num_layers if variant is not None else lm.num_layers
    # Positions kept: all but the first of each window (padding-free windows, so no mask needed).
    keep = torch.arange(first, T)
    gen = torch.Generator().manual_seed(seed)
    n_all = B * keep.numel()
    chosen = None
    if max_tokens and max_tokens < n_all:
        chosen = torch.randperm(n_all, generator=gen)[:max_tokens].sort().values
    dev = lm.device
    N = chosen.numel() if chosen is not None else n_all
    H = lm.config.hidden_size
    states = torch.empty(L + 1, N, H, dtype=torch.float32, device=dev)
    last = torch.empty(L + 1, B, H, dtype=torch.float32, device=dev)
    sample_of = torch.arange(B).repeat_interleave(keep.numel())
    if chosen is not None:
        sample_of = sample_of[chosen]

    start = time.perf_counter()
    kept = keep.to(dev)
    mine = shard(B)                  # ranks: this one's windows (all of them in one process)
    for batch in run_backbone(lm, input_ids[mine], variant=variant, record=range(L + 1),
                              batch_size=batch_size, progress=progress, label="probing layers",
                              layer_major=layer_major, checkpoint=checkpoint):
        b0, b1 = mine.start + batch.rows.start, mine.start + batch.rows.stop
        lo, hi = b0 * keep.numel(), b1 * keep.numel()
        sel = None
        if chosen is not None:
            sel = chosen[(chosen >= lo) & (chosen < hi)]
            offset = int((chosen < lo).sum())
        for slot, hidden in batch.states.items():     # hidden: (b, T, H) at boundary `slot`
            flat = hidden[:, kept].reshape(-1, H).float()                  # (b*|keep|, H)
            if sel is None:
                states[slot, lo:hi] = flat
            else:
                states[slot, offset:offset + sel.numel()] = flat[(sel - lo).to(dev)]
            last[slot, b0:b1] = hidden[:, -1].float()
    if world()[1] > 1:               # every rank gets every window's states, in window order
        wins = shard_bounds(B)       # every rank's windows, and so its rows of states and last
        rows = [w * keep.numel() for w in wins]
        if chosen is not None:
            rows = [int((chosen < r).sum()) for r in rows]
        for slot in range(L + 1):    # in place: each slot's rows of a rank are one block
            fill_rows(states[slot], rows, "collecting the probed states")
            fill_rows(last[slot], wins, "collecting the probed states")
    return ProbeResult(states=states, last=last, sample_of=sample_of.to(dev),
                       input_ids=input_ids.cpu(), skip_first=skip_first,
                       seconds=time.perf_counter() - start)


# -- attention and MLP blocks ----------------------------------------------------------------------

@dataclass
class PartProfile:
    """Block influence of each layer's two blocks (ShortGPT's BI, taken per block).

    With x_i the layer's input, x_{i+1} its output and h_i the residual stream between its
    attention and its MLP block: attn[i] = mean_t (1 - cos(x_i[t], h_i[t])) and
    mlp[i] = mean_t (1 - cos(h_i[t], x_{i+1}[t])). Low = the block barely turns the stream.
    """

    attn: torch.Tensor        # (L,) float64
    mlp: torch.Tensor         # (L,) float64
    tokens: int               # token positions averaged over
    skip_first: bool          # whether the first position of each window was left out
    seconds: float


@torch.no_grad()
def part_influence(lm: LoadedModel, text: str | None = None, *,
                   input_ids: torch.Tensor | None = None, seqlen: int = 128,
                   num_samples: int = 32, batch_size: int | None = None,
                   skip_first: bool = True, bos: str = "auto",
                   progress: Progress | None = None) -> PartProfile:
    """How much each layer's attention and MLP block change the residual stream (two (L,)
    profiles, `PartProfile`), on calibration text or ready `input_ids` (B, T).

    One pass with a per-layer accumulator at every slot (explorer/core/gather.py): slot i's input x_i,
    its output x_{i+1} and its MLP branch's output m_i give h_i = x_{i+1} - m_i; no hook, no
    second attention block.
    """
    if input_ids is None:
        if text is None:
            raise TextError("part_influence needs calibration text or input_ids")
        input_ids = calibration_windows(lm, text, seqlen, num_samples, bos)
    B, T = input_ids.shape
    first = 1 if skip_first else 0
    if T - first < 1:
        raise TextError(f"windows of {T} tokens leave nothing to record")
    if lm.arch.mlp_down is None:
        raise LayerError(f"the {lm.arch.family} adapter names no MLP projection: its layers "
                         "cannot be split into attention and MLP blocks")
    L = lm.num_layers

    def reduce(view: View, acc: Sums) -> None:
        # h_i = x_{i+1} - (the MLP's contribution): the stream between the two blocks
        x, y = view.x.float(), view.y.float()                            # (b, T', H)
        h = y - view.parts["mlp"].float()
        acc.add("attn", (1 - F.cosine_similarity(x, h, dim=-1)).sum())
        acc.add("mlp", (1 - F.cosine_similarity(h, y, dim=-1)).sum())

    paths = [lm.arch.mlp_branch(layer) for layer in lm.original_layers]
    if None in paths:
        raise LayerError(f"the {lm.arch.family} adapter names no MLP projection: its layers "
                         "cannot be split into attention and MLP blocks")
    gathers = [Gather(i, reduce, parts={"mlp": paths[i]}, first=first) for i in range(L)]
    start = time.perf_counter()
    for _ in run_backbone(lm, input_ids, batch_size=batch_size, progress=progress,
                          label="attention and MLP blocks", gather=gathers):
        pass
    sums = torch.tensor([[float(g.sums[k]) for g in gathers] for k in ("attn", "mlp")],
                        dtype=torch.float64)
    count = B * (T - first)
    means = sums / count
    return PartProfile(attn=means[0], mlp=means[1], tokens=count, skip_first=skip_first,
                       seconds=time.perf_counter() - start)
