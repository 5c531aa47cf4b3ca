"""Which recorded tokens a measure uses: the same tokens at every layer boundary, without the ones
carrying a massive activation, at most a given number of them.

Shared by the token-level measures (`explorer.measure.measures`) and NPIB's calibration points
(`explorer.measure.npib`); it depends on neither.

Example:
    >>> s = select_tokens(pr.states, max_tokens=2048, seed=0, max_norm_ratio=20.0)   # (L+1, n, H)
"""

from __future__ import annotations

import torch

from explorer.core.errors import ExplorerError


def massive_tokens(states: torch.Tensor, ratio: float | None = 20.0) -> torch.Tensor:
    """(L+1, N, H) -> (N,) bool: tokens whose norm at some boundary exceeds `ratio` times that
    boundary's median token norm (massive activations outside the first window position: some models write norms hundreds of
    times the median after a few tokens such as "\\n\\n"; docs/measures.md)."""
    if ratio is None:
        return torch.zeros(states.shape[1], dtype=torch.bool, device=states.device)
    norms = states.float().norm(dim=-1)                                # (L+1, N)
    med = norms.median(dim=1, keepdim=True).values
    return (norms > ratio * med).any(dim=0)


def select_tokens(states: torch.Tensor, max_tokens: int | None = None, seed: int = 0,
                  max_norm_ratio: float | None = None) -> torch.Tensor:
    """(L+1, N, H) -> (L+1, n, H): the same tokens at every boundary, without the massive ones
    (when `max_norm_ratio` is set) and at most `max_tokens` of them, a seeded random subset.
    Copies only the selected tokens (one gather)."""
    N = states.shape[1]
    idx = (~massive_tokens(states, max_norm_ratio)).nonzero().flatten().cpu()   # kept tokens
    if idx.numel() < 2:                      # everything "massive": nothing sensible to drop
        idx = torch.arange(N)
    if max_tokens and max_tokens < idx.numel():
        if max_tokens < 2:
            raise ExplorerError(f"max_tokens must be at least 2, got {max_tokens}")
        gen = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(idx.numel(), generator=gen)[:max_tokens].sort().values]
    return states if idx.numel() == N else states[:, idx.to(states.device)]
