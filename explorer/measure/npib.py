"""NPIB, the layer similarity of MKA (Liu et al. 2024, arXiv:2406.16330), as the paper intends it.

For every layer boundary x_0..x_L we take a cloud of the SAME n calibration points (by default a
seeded subset of recorded tokens; or each sample's mean state, or its last token; tokens with a
massive activation are left out, see `calibration_points`), and:

1. embed each cloud with diffusion maps (Coifman & Lafon 2006):
       K_ij  = exp(-(||p_i - p_j|| / sigma)^(1/2))        MKA's kernel; sigma = median distance
       K~_ij = K_ij / (q_i q_j)^alpha,  q = row sums of K   density normalisation, alpha = 0.5
       A_ij  = K~_ij / sqrt(r_i r_j),   r = row sums of K~  symmetric form of the Markov matrix
   then eigendecompose A, drop the trivial top eigenvector and keep the next d = 2:
       coordinate_k = lambda_k * v_k / sqrt(r)    (right eigenvectors of the Markov matrix),
   each standardised to mean 0, variance 1 (so both coordinates weigh the same in the k-NN
   max-norm and the result does not depend on the diffusion time), sign fixed for reproducibility;
2. estimate I(Y_a; Y_b) between two boundaries' embeddings with the KSG k-nearest-neighbour
   estimator (Kraskov, Stoegbauer, Grassberger 2004, algorithm 2, max-norm):
       I = psi(k) - 1/k + psi(n) - < psi(n_a(i)) + psi(n_b(i)) >_i
   where the k nearest joint neighbours of point i span eps_a(i) in Y_a and n_a(i) counts the
   points within eps_a(i) in Y_a alone;
3. normalise: NPIB_ab = I(Y_a; Y_b) / sqrt(H(Y_a) H(Y_b)).

The normaliser, and why. The paper's H is a differential entropy. The Kozachenko-Leonenko k-NN
estimator (`knn_entropy`, with its digamma and volume terms)
       H_KL(Y) = psi(n) - psi(k) + < log V_k(i) >_i,   V_k(i) = (2 eps_i)^d  (max-norm ball)
can be negative (any tightly clustered cloud), so I / sqrt(H_a H_b) is then undefined or
unbounded; MKA's published code even drops the volume and digamma terms, which gives negative
entropies and a diagonal of ~3.5. The true I(Y; Y) of a continuous variable is infinite, but the
estimator only resolves Y down to its k-NN cells: the KSG estimate of I(Y; Y) is the constant
       I_KSG(Y; Y) = psi(n) - psi(k) - 1/k = H_KL(Y) - < log V_k(i) >_i - 1/k,
the k-NN entropy of Y measured in units of its own k-NN cell volume (the entropy of Y at the
resolution the estimator can see), less KSG's finite-sample 1/k. We use that as H: it is
positive (n > k + 1), computed by the very estimator used for the cross terms, so NPIB_aa = 1
exactly, and n_a(i) >= k gives NPIB_ab <= 1; small negative estimates (independent clouds) are
clipped to 0. NPIB is then "the share of the information the estimator can measure that the two
layers share" (for n = 256 points and k = 3 the scale is psi(256) - psi(3) - 1/3 = 4.3 nats).

Everything is vectorised torch on the device of the probe; the loop over layer pairs runs in
chunks of pairs on (pairs, n, n) distance blocks, so memory is O(n^2) per chunk. Under ranks each
rank embeds its share of the boundaries and estimates its share of the chunks of cells; both are
collected in order (`ranks.gather_items`), so the matrix is one process's.

Example:
    >>> from explorer.measure.npib import npib_matrix, ksg_mi
    >>> m = npib_matrix(pr)                  # (L+1, L+1), ones on the diagonal
    >>> x = torch.randn(2000, 1); ksg_mi(x, 0.8 * x + 0.6 * torch.randn(2000, 1))
    0.51...                                  # true value -0.5 * log(1 - 0.8^2) = 0.511
"""

from __future__ import annotations

import math

import torch

from explorer.core.errors import ExplorerError
from explorer.core.ranks import gather_items, most, share_items
from explorer.probe.token_select import massive_tokens, select_tokens
from explorer.probe.probe import ProbeResult

POINTS = ("tokens", "pooled", "last")
CELL_BUDGET = 2 ** 22      # distance entries in one chunk of cells (pairs x n x n)


# ----------------------------------------------------------------------------------------------
# diffusion maps

def _median_offdiagonal(dist: torch.Tensor) -> torch.Tensor:
    """(G, n, n) -> (G,) median of the distinct pairwise distances of each cloud."""
    n = dist.shape[-1]
    iu = torch.triu_indices(n, n, 1, device=dist.device)
    return dist[:, iu[0], iu[1]].median(dim=-1).values


def top_eigenpairs(sym: torch.Tensor, m: int, tol: float = 1e-9,
                   max_iter: int = 300, shared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The m largest eigenpairs of a batch of symmetric PSD matrices (G, n, n), descending:
    values (G, m), vectors (G, n, m).

    shared: the batch is this rank's share of one the ranks split (`ranks.share_items`); the
    iteration then stops when every rank's matrices have converged, as the whole batch does in one
    process, so each matrix's pairs are the one process's.

    A full eigendecomposition costs O(n^3) per cloud and is slow on a CPU; we only need the top
    d+1 pairs, so we run block (subspace) iteration on A^4 with a few extra vectors and finish with
    a Rayleigh-Ritz step on A. Small matrices go straight to `torch.linalg.eigh`. The start block
    is seeded, so the same matrix always gives the same vectors.
    """
    G, n, _ = sym.shape
    block = m + 10
    if n <= 4 * block:
        evals, evecs = torch.linalg.eigh(sym)                          # ascending
        return evals.flip(-1)[:, :m], evecs.flip(-1)[:, :, :m]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(n, block, generator=gen, dtype=sym.dtype).to(sym.device)
    q = torch.linalg.qr(q.expand(G, n, block)).Q                       # (G, n, block)
    power = sym @ sym
    power = power @ power                                              # A^4 sharpens the gaps
    for it in range(max_iter):
        q = torch.linalg.qr(power @ q).Q
        if it % 10 == 9 or it == max_iter - 1:
            ritz = q.transpose(1, 2) @ sym @ q                         # (G, block, block)
            w, v = torch.linalg.eigh(ritz)
            w, vec = w.flip(-1)[:, :m], q @ v.flip(-1)[:, :, :m]       # (G, m), (G, n, m)
            resid = (sym @ vec - vec * w[:, None, :]).norm(dim=1)      # (G, m)
            worst = float(resid.max()) if resid.numel() else 0.0
            if (most(worst) if shared else worst) < tol:
                break
    return w, vec


def diffusion_map(points: torch.Tensor, d: int = 2, sigma: float | str | None = "median",
                  alpha: float = 0.5, shared: bool = False) -> torch.Tensor:
    """Diffusion-map coordinates of one cloud (n, D) or a batch of clouds (G, n, D) -> (..., n, d).

    sigma: kernel scale; "median" (or None) uses each cloud's median pairwise distance, a number
    fixes it (MKA's code uses 8, which suits no particular model). Coordinates are standardised.
    shared: the batch is this rank's share of the ranks' clouds (`top_eigenpairs`); every rank
    must then call it, with its own share.
    """
    single = points.dim() == 2
    x = points[None] if single else points
    if x.dim() != 3:
        raise ExplorerError(f"diffusion_map needs (n, D) or (G, n, D) points, got {tuple(points.shape)}")
    G, n, _ = x.shape
    if n < d + 2:
        raise ExplorerError(f"diffusion maps with d={d} need at least {d + 2} points, got {n}")
    if d < 1:
        raise ExplorerError(f"d must be at least 1, got {d}")
    if not 0.0 <= alpha <= 1.0:
        raise ExplorerError(f"alpha must be in [0, 1], got {alpha}")
    x = x.double()
    x = x - x.mean(dim=1, keepdim=True)                    # centring keeps cdist accurate
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    dist = torch.cdist(x, x).clamp_min(0.0).masked_fill(eye, 0.0)      # (G, n, n)
    if sigma is None or sigma == "median":
        s = _median_offdiagonal(dist)                                  # (G,)
        s = torch.where(s > 0, s, torch.ones_like(s))                  # identical points
    else:
        try:
            s = torch.full((G,), float(sigma), dtype=x.dtype, device=x.device)
        except (TypeError, ValueError):
            raise ExplorerError(f"sigma must be a positive number or 'median', got {sigma!r}") \
                from None
        if not float(sigma) > 0:
            raise ExplorerError(f"sigma must be positive, got {sigma}")
    kern = torch.exp(-(dist / s[:, None, None]).sqrt())               # (G, n, n)
    q = kern.sum(-1)                                                   # (G, n) density estimate
    kern = kern / (q[:, :, None] * q[:, None, :]).pow(alpha)
    r = kern.sum(-1)                                                   # (G, n)
    sym = kern / (r[:, :, None] * r[:, None, :]).sqrt()
    evals, evecs = top_eigenpairs(sym, d + 1, shared=shared)           # (G, d+1), (G, n, d+1)
    evals, evecs = evals[:, 1:], evecs[:, :, 1:]                       # skip the trivial 1
    coords = evecs / r.sqrt()[:, :, None] * evals[:, None, :]          # Markov right eigvecs
    coords = coords - coords.mean(dim=1, keepdim=True)
    coords = coords / coords.std(dim=1, keepdim=True).clamp_min(1e-300)
    # an eigenvector's sign is arbitrary: make each coordinate's largest entry positive
    big = coords.abs().argmax(dim=1, keepdim=True)                     # (G, 1, d)
    coords = coords * torch.gather(coords, 1, big).sign().masked_fill_(
        torch.gather(coords, 1, big) == 0, 1.0)
    out = coords.float()
    return out[0] if single else out


# ----------------------------------------------------------------------------------------------
# k-NN estimators (max-norm throughout)

def chebyshev(y: torch.Tensor) -> torch.Tensor:
    """(..., n, d) -> (..., n, n) max-norm distances, +inf on the diagonal (a point is not its
    own neighbour)."""
    dist = (y[..., :, None, :] - y[..., None, :, :]).abs().amax(dim=-1)
    n = y.shape[-2]
    eye = torch.eye(n, dtype=torch.bool, device=y.device)
    return dist.masked_fill(eye, math.inf)


def _check_k(n: int, k: int) -> None:
    if not 1 <= k < n:
        raise ExplorerError(f"k must be between 1 and n-1 = {n - 1}, got {k}")


def ksg_from_distances(dx: torch.Tensor, dy: torch.Tensor, k: int = 3) -> torch.Tensor:
    """KSG estimate (nats) from marginal max-norm distances (..., n, n) (+inf diagonal) -> (...,).

    Algorithm 2 of Kraskov et al.: the k nearest neighbours of point i in the joint space span
    eps_x(i) in X and eps_y(i) in Y; n_x(i) counts the points within eps_x(i) in X (boundary
    included), and I = psi(k) - 1/k + psi(n) - < psi(n_x(i)) + psi(n_y(i)) >_i.
    We use algorithm 2 rather than 1 because it is continuous at identity: a copy of a variable
    plus rounding noise scores the same as the exact copy (algorithm 1 drops by ~1/k there).
    """
    n = dx.shape[-1]
    _check_k(n, k)
    joint = torch.maximum(dx, dy)                                      # max-norm in (X, Y)
    near = joint.topk(k, dim=-1, largest=False).indices                # (..., n, k)
    eps_x = dx.gather(-1, near).amax(-1, keepdim=True)                 # (..., n, 1)
    eps_y = dy.gather(-1, near).amax(-1, keepdim=True)
    nx = (dx <= eps_x).sum(-1)                                         # (..., n), >= k
    ny = (dy <= eps_y).sum(-1)
    dig = torch.special.digamma
    const = float(dig(torch.tensor([float(k), float(n)], dtype=torch.float64)).sum()) - 1.0 / k
    return const - (dig(nx.double()) + dig(ny.double())).mean(-1)


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    return x[:, None] if x.dim() == 1 else x


def ksg_mi(x: torch.Tensor, y: torch.Tensor, k: int = 3) -> float:
    """Mutual information I(X; Y) in nats of paired samples x (n, dx), y (n, dy), KSG estimator."""
    x, y = _as_2d(x).double(), _as_2d(y).double()
    if x.shape[0] != y.shape[0]:
        raise ExplorerError("x and y need the same number of samples")
    return float(ksg_from_distances(chebyshev(x), chebyshev(y), k))


def knn_entropy(x: torch.Tensor, k: int = 3) -> float:
    """Differential entropy in nats of samples x (n, d), Kozachenko-Leonenko k-NN estimator with
    the max-norm: psi(n) - psi(k) + mean_i log((2 eps_i)^d), eps_i = distance to the k-th
    neighbour. Can be negative (a continuous variable concentrated in a small volume)."""
    x = _as_2d(x).double()
    n, d = x.shape
    _check_k(n, k)
    eps = chebyshev(x).topk(k, dim=-1, largest=False).values[:, -1]   # (n,)
    dig = torch.special.digamma
    log_vol = d * torch.log(2 * eps.clamp_min(1e-300))                 # log (2 eps)^d
    return float(dig(torch.tensor(float(n), dtype=torch.float64))
                 - dig(torch.tensor(float(k), dtype=torch.float64)) + log_vol.mean())


# ----------------------------------------------------------------------------------------------
# NPIB over a probe

def calibration_points(pr: ProbeResult, points: str = "tokens", num_points: int = 256,
                       seed: int = 0, max_norm_ratio: float | None = 20.0) -> torch.Tensor:
    """(L+1, n, H) the same n calibration points at every boundary.

    points: "tokens" a seeded subset of num_points recorded tokens; "pooled" each sample's mean
    state; "last" each sample's last token (both capped at num_points samples).
    max_norm_ratio: tokens (or samples) with a massive activation, a norm above this many times
    the median at some boundary, are left out (None keeps them): a single such point is far from
    all others and takes a diffusion coordinate to itself.
    """
    if points == "tokens":
        return select_tokens(pr.states, num_points, seed, max_norm_ratio)
    if points == "last":
        return select_tokens(pr.last, num_points, seed, max_norm_ratio)
    if points != "pooled":
        raise ExplorerError(f"unknown points '{points}'; known: {', '.join(POINTS)}")
    keep = ~massive_tokens(pr.states, max_norm_ratio)                  # (N,)
    idx = pr.sample_of.to(pr.states.device)[keep]
    sums = torch.zeros(pr.states.shape[0], pr.num_samples, pr.states.shape[2],
                       dtype=pr.states.dtype, device=pr.states.device)
    sums.index_add_(1, idx, pr.states[:, keep])                        # (L+1, B, H)
    counts = torch.bincount(idx, minlength=pr.num_samples)
    cloud = sums[:, counts > 0] / counts[counts > 0].to(sums.dtype)[None, :, None]
    return select_tokens(cloud, num_points, seed)


@torch.no_grad()
def npib_matrix(pr: ProbeResult, *, points: str = "tokens", num_points: int = 256,
                sigma: float | str | None = "median", alpha: float = 0.5, d: int = 2, k: int = 3,
                seed: int = 0, max_norm_ratio: float | None = 20.0,
                pairs: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """(L+1, L+1) float32 CPU NPIB matrix (see the module docstring for the definition).

    points / num_points / seed / max_norm_ratio: which calibration points (`calibration_points`);
    sigma, alpha, d: the diffusion map; k: neighbours of the KSG estimator.
    pairs: only these cells (a, b) are estimated (the others are NaN); default all.
    """
    cloud = calibration_points(pr, points, num_points, seed, max_norm_ratio)   # (L+1, n, H)
    L1, n, _ = cloud.shape
    _check_k(n, k)
    # ranks: each embeds its share of the boundaries, then every rank holds every embedding
    mine = share_items([1.0] * L1)                                      # a contiguous run
    part = diffusion_map(cloud[mine[0]:mine[-1] + 1] if mine else cloud[:0], d=d, sigma=sigma,
                         alpha=alpha, shared=True)                      # (|mine|, n, d)
    emb = torch.stack(gather_items(dict(zip(mine, part)), L1, cloud.device))   # (L+1, n, d)
    dist = torch.stack([chebyshev(emb[a]) for a in range(L1)])          # (L+1, n, n)
    if pairs is None:
        pairs = [(a, b) for a in range(L1) for b in range(a + 1, L1)]
    for a, b in pairs:
        if not (0 <= a < L1 and 0 <= b < L1):
            raise ExplorerError(f"pair ({a}, {b}) is outside boundaries 0..{L1 - 1}")
    # the normalisers I(Y_a; Y_a) are estimated with the same code, batched with the pairs
    cells = [(a, a) for a in range(L1)] + [(a, b) for a, b in pairs if a != b]
    step = max(1, CELL_BUDGET // (n * n))
    los = range(0, len(cells), step)
    parts = {}
    for i in share_items([len(cells[lo:lo + step]) for lo in los]):    # ranks: a share of chunks
        chunk = cells[los[i]:los[i] + step]
        ia = torch.tensor([c[0] for c in chunk], device=dist.device)
        ib = torch.tensor([c[1] for c in chunk], device=dist.device)
        parts[i] = ksg_from_distances(dist[ia], dist[ib], k)
    mi = torch.cat(gather_items(parts, len(los)))                       # (cells,) float64, CPU
    self_info = mi[:L1].clamp_min(1e-12).tolist()                        # (L+1,) I(Y_a; Y_a)
    out = torch.full((L1, L1), math.nan, dtype=torch.float64)
    for (a, b), value in zip(cells[L1:], mi[L1:].tolist()):
        v = value / math.sqrt(self_info[a] * self_info[b])
        out[a, b] = out[b, a] = min(1.0, max(0.0, v))
    out.fill_diagonal_(1.0)
    return out.float()
