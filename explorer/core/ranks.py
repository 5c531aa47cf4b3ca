"""Data-parallel ranks on torch.distributed: each rank takes a shard of the calibration windows,
and the per-layer accumulators (`explorer.core.gather.Sums`) are added across ranks.

Without an initialised process group (the usual case: one process) every function here is the
identity: `shard` gives all windows, `reduce_sums` changes nothing. Under torchrun
(`init_from_env`: gloo on CPUs, NCCL on GPUs) rank r of N takes windows
[r W / N, (r + 1) W / N) and `reduce_sums` gathers every rank's float64 sums and adds them in
rank order, the same on every rank, so a fit does not depend on who computed which windows
beyond float64 rounding.

What goes through here (docs/scale.md): the closed-form and LinearPatch fits
(`heal.closed_form.cut_gather`: sums), the probe (`fill_rows`: every window's states on every
rank), the similarity measures (`share_items`, `gather_items`, `most`: each rank computes its
share of a measure's items, combined in item order, so a matrix is one process's), perplexity
(per-window NLLs), layer-wise healing's training
(`sum_tensors`: gradients; `from_rank0`: the time budget). The command line joins the group for
`similarity`, `eval`, `compress` and `heal` (explorer/cli/__init__.py: RANKED); rank 0 alone
prints and writes files.

A rank that dies (or hangs past LAYER_EXPLORER_RANK_TIMEOUT seconds) makes the others' next
collective raise `RankStopped`, one line; checkpoints stay usable (explorer/core/resume.py).

Example (two processes on one machine, gloo):
    $ torchrun --nproc_per_node 2 my_script.py     # my_script calls ranks.init_from_env()
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist

from explorer.core.errors import LayerError, one_line
from explorer.core.gather import Sums
from explorer.core.settings import get


def world() -> tuple[int, int]:
    """(this rank, number of ranks); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes ($WORLD_SIZE, $RANK, $MASTER_ADDR...): NCCL
    when this rank has a GPU, else gloo. One process (no $WORLD_SIZE, or 1): nothing to do."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        wait = timedelta(seconds=get("LAYER_EXPLORER_RANK_TIMEOUT"))
        try:
            dist.init_process_group(backend, timeout=wait)
        except (RuntimeError, ValueError, dist.DistBackendError) as exc:
            raise RankStopped(f"could not join the group of {os.environ['WORLD_SIZE']} ranks "
                              f"({_reason(exc)}): start every rank again") from None
    return world()


def shard(n: int) -> slice:
    """This rank's windows of n: a contiguous block, the blocks in rank order (`shard_bounds`)."""
    rank, size = world()
    if size > n:
        raise LayerError(f"{size} ranks but only {n} windows: every rank needs at least one "
                         f"window (use at most {n} ranks, or more windows)")
    bounds = shard_bounds(n)
    return slice(bounds[rank], bounds[rank + 1])


def shard_bounds(n: int) -> list[int]:
    """The window blocks of every rank as n's cut points [0, ..., n]: rank r's `shard(n)` is
    [bounds[r], bounds[r + 1]). One process: [0, n]."""
    _, size = world()
    return [r * n // size for r in range(size + 1)]


def rank_generator(seed: int) -> torch.Generator:
    """A generator of its own for what one rank draws alone (derived from the run's seed and the
    rank); what every rank must draw alike uses torch.Generator().manual_seed(seed)."""
    rank, _ = world()
    return torch.Generator().manual_seed(seed + 1_000_003 * rank)


class RankStopped(LayerError):
    """Another rank stopped (it died, or it did not reach a collective within
    LAYER_EXPLORER_RANK_TIMEOUT seconds): this rank stops too, with one line."""


def _reason(exc: BaseException) -> str:
    """The backend's reason, short: gloo's "[.../pair.cc:537] Read error [addr]: Connection reset
    by peer. This is typically caused by..." -> "Read error [addr]: Connection reset by peer"."""
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", one_line(exc))
    return text.split(". ")[0].rstrip(".")[:160]


def _collective(fn, what: str):
    try:
        return fn()
    except (RuntimeError, dist.DistBackendError) as exc:
        raise RankStopped(f"a rank stopped while the ranks were {what} ({_reason(exc)}): "
                          "this rank stops too, nothing of this step was kept") from None


def agree(value: object, what: str) -> None:
    """Every rank holds the same `value` (a fingerprint of the model, of the text), else one
    line naming the first rank that differs."""
    rank, size = world()
    if size == 1:
        return
    got: list = [None] * size
    _collective(lambda: dist.all_gather_object(got, value), f"comparing the {what}")
    for r, v in enumerate(got):
        if v != got[0]:
            raise LayerError(f"the ranks disagree on the {what}: rank {r} has {v!r}, rank 0 "
                             f"{got[0]!r} (start every rank with the same arguments)")


def reduce_sums(sums: Sums) -> Sums:
    """Add every rank's sums into `sums` (in place, float64, in rank order) and give every rank
    all kept pieces; returns `sums`."""
    rank, size = world()
    if size == 1:
        return sums
    names = sorted(sums.sums)
    agree(names, "accumulated statistics")
    totals = sum_tensors([sums.sums[n].to(torch.float64) for n in names],
                         "adding the accumulated statistics")
    sums.sums.update(zip(names, totals))
    if sums.pieces:
        got: list = [None] * size
        mine = {n: {k: v.cpu() for k, v in d.items()} for n, d in sums.pieces.items()}
        _collective(lambda: dist.all_gather_object(got, mine), "gathering kept states")
        for other in got:
            for n, d in other.items():
                sums.pieces.setdefault(n, {}).update(d)
    return sums


def gather_rows(t: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Every rank's rows of `t` ((n_r, ...), its shard) concatenated in rank order, which is window
    order, (sum n_r, ...) on every rank: per-window figures (NLL sums, probed states) need no
    reduction, only collecting. n: the total expected (checked)."""
    rank, size = world()
    if size == 1:
        return t
    dev = t.device if dist.get_backend() == "nccl" else torch.device("cpu")
    x = t.detach().to(dev).contiguous()
    count = torch.tensor([x.shape[0]], dtype=torch.long, device=dev)
    counts = [torch.zeros_like(count) for _ in range(size)]
    _collective(lambda: dist.all_gather(counts, count), "collecting window rows")
    most = int(max(int(c) for c in counts))
    pad = torch.zeros((most - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=dev)
    xp = torch.cat([x, pad])                       # all_gather needs equal shapes
    parts = [torch.empty_like(xp) for _ in range(size)]
    _collective(lambda: dist.all_gather(parts, xp), "collecting window rows")
    out = torch.cat([p[:int(c)] for p, c in zip(parts, counts)])
    if n is not None and out.shape[0] != n:
        raise LayerError(f"the ranks returned {out.shape[0]} rows of {n}")
    return out.to(t.device)


def from_rank0(value):
    """Rank 0's `value` on every rank (a time budget's decision: ranks run at different speeds,
    so rank 0 alone reads its clock)."""
    rank, size = world()
    if size == 1:
        return value
    box = [value]
    _collective(lambda: dist.broadcast_object_list(box, src=0), "agreeing on the time budget")
    return box[0]


def sum_tensors(ts: list[torch.Tensor], what: str = "adding gradients") -> list[torch.Tensor]:
    """Every rank's tensors added (float64, rank order, so the sum does not depend on the rank
    count beyond rounding and is the same on every rank), cast back to each tensor's dtype: the
    data-parallel gradient, and the accumulators' sums (`reduce_sums`). what: the step, for the
    message when a rank stops."""
    rank, size = world()
    if size == 1:
        return ts
    out = []
    for t in ts:
        x = t.detach().to(torch.float64).contiguous()
        dev = x.device if dist.get_backend() == "nccl" else torch.device("cpu")
        x = x.to(dev)
        parts = [torch.empty_like(x) for _ in range(size)]
        _collective(lambda: dist.all_gather(parts, x), what)
        total = parts[0].clone()
        for p in parts[1:]:                        # rank order: the same sum on every rank
            total += p
        out.append(total.to(device=t.device, dtype=t.dtype))
    return out


def step_share(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A training step's windows `idx` (the same on every rank): (this rank's share of them, its
    fraction of the step's tokens). Every window of a healing run has the same length, so the
    fraction of windows is the fraction of tokens; a rank's mean loss times it, summed over the
    ranks (`sum_tensors`), is the whole step's mean loss, and its gradient the whole step's.
    One process: (idx, 1.0)."""
    rank, size = world()
    if size == 1:
        return idx, 1.0
    if len(idx) < size:
        raise LayerError(f"{size} ranks but only {len(idx)} windows per training step: every "
                         f"rank needs at least one (set batch to at least {size}, or use fewer "
                         "ranks)")
    mine = idx[shard(len(idx))]
    return mine, len(mine) / len(idx)


# -- a computation's work shared out (the similarity measures: explorer/measure/) -----------------

def fill_rows(t: torch.Tensor, bounds: Sequence[int], what: str = "collecting window rows") -> None:
    """`t` (n, ...), contiguous, of which rank r has filled rows [bounds[r], bounds[r + 1]):
    every rank's rows copied into `t` on every rank, in place (one broadcast per rank, no copy of
    the rest): what `gather_rows` gives, without its padding, concatenation and transposes. One
    process: nothing to do."""
    _, size = world()
    if size == 1:
        return
    if len(bounds) != size + 1 or not t.is_contiguous():
        raise LayerError(f"fill_rows needs a contiguous tensor and {size + 1} bounds")
    # the backend's own device: NCCL moves CUDA tensors, gloo CPU ones; a block elsewhere
    # travels through a copy there
    wire = "cuda" if dist.get_backend() == "nccl" else "cpu"
    for r in range(size):
        block = t[bounds[r]:bounds[r + 1]]
        if block.numel():
            if block.device.type == wire:
                _collective(lambda: dist.broadcast(block, src=r), what)
            else:
                moved = block.to(wire)
                _collective(lambda: dist.broadcast(moved, src=r), what)
                block.copy_(moved)


def share_items(costs: Sequence[float]) -> list[int]:
    """This rank's items of a computation cut into len(costs) independent items (a measure's
    chunks of tokens, its layers, its chunks of cells), each with its cost: contiguous runs in
    item order, an item going to the rank whose share of the total cost holds its midpoint, the
    same split on every rank. One process: every item."""
    rank, size = world()
    if size == 1:
        return list(range(len(costs)))
    total = float(sum(costs)) or 1.0
    mine, done = [], 0.0
    for i, c in enumerate(costs):
        if min(size - 1, int((done + c / 2) / total * size)) == rank:
            mine.append(i)
        done += c
    return mine


def gather_items(mine: dict[int, torch.Tensor], n: int, device: torch.device | str = "cpu",
                 what: str = "collecting the measures' parts") -> list[torch.Tensor]:
    """Every rank's items ({item: tensor}, from `share_items`) collected: the n tensors in item
    order, on every rank, on `device` (small tensors: they travel pickled). The caller combines them
    in the one-process order (a sum item after item), so the result is the one process's bit
    for bit. One process: `mine`'s tensors, in order."""
    rank, size = world()
    if size > 1:
        got: list = [None] * size
        local = {i: t.detach().cpu() for i, t in mine.items()}
        _collective(lambda: dist.all_gather_object(got, local), what)
        mine = {i: t for other in got for i, t in other.items()}
    mine = {i: t.to(device) for i, t in mine.items()}
    if sorted(mine) != list(range(n)):
        raise LayerError(f"the ranks computed items {sorted(mine)[:8]}... of {n}")
    return [mine[i] for i in range(n)]


def most(value: float, what: str = "agreeing on convergence") -> float:
    """The largest of every rank's `value`, on every rank (an iteration that stops when every
    rank's part has converged, as the one process's whole does). One process: `value`."""
    _, size = world()
    if size == 1:
        return value
    got: list = [None] * size
    _collective(lambda: dist.all_gather_object(got, float(value)), what)
    return max(got)
