"""2-D maps: layers as points (from a similarity matrix) and tokens as points (at one boundary).

`layer_map` places every layer boundary x_0..x_L in the plane so that boundaries with similar
representations sit close together: a tight chain of points is a run of redundant layers.
`token_embedding` shows the cloud of calibration tokens at one boundary, coloured by sample.
Both are reproducible for a given seed.

Example:
    >>> from explorer.measure.measures import similarity, MEASURES
    >>> xy = layer_map(similarity(pr, "cka"), MEASURES["cka"].higher_is_similar)   # (L+1, 2)
    >>> coords, sample = token_embedding(pr, layer=15, method="pca")              # (n, 2), (n,)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from explorer.core.errors import ExplorerError, LayerError
from explorer.probe.probe import ProbeResult

LAYER_METHODS = ("mds", "umap")
TOKEN_METHODS = ("pca", "umap", "diffusion")


def dissimilarity(matrix: torch.Tensor, higher_is_similar: bool) -> np.ndarray:
    """(n, n) similarity or distance matrix -> symmetric non-negative dissimilarity, zero diagonal.

    Similarities (cosine, CKA, NPIB, at most 1) become 1 - s; distances are used as they are.
    """
    m = torch.as_tensor(matrix).detach().double().cpu().numpy()
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ExplorerError(f"layer_map needs a square matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ExplorerError("layer_map needs a complete matrix (it has NaN or infinite cells)")
    dis = 1.0 - m if higher_is_similar else m.copy()
    dis = np.clip((dis + dis.T) / 2, 0.0, None)
    np.fill_diagonal(dis, 0.0)
    return dis


def _umap(n: int, seed: int, **kwargs):
    import umap

    # small layer counts: few neighbours; init="random" because the spectral init needs more points
    return umap.UMAP(n_components=2, n_neighbors=max(2, min(15, n - 1)), init="random",
                     random_state=seed, n_jobs=1, **kwargs)


def layer_map(matrix: torch.Tensor, higher_is_similar: bool, method: str = "mds",
              seed: int = 0) -> np.ndarray:
    """(L+1, 2) coordinates, one point per layer boundary, from an (L+1, L+1) matrix.

    method: "mds" (metric MDS of the dissimilarity, classical-MDS start) or "umap" (precomputed
    metric, small neighbourhoods, random init).
    """
    if method not in LAYER_METHODS:
        raise ExplorerError(f"unknown layer map method '{method}'; known: {', '.join(LAYER_METHODS)}")
    dis = dissimilarity(matrix, higher_is_similar)
    n = dis.shape[0]
    if n < 3:
        raise ExplorerError(f"a layer map needs at least 3 boundaries, got {n}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "mds":
            from sklearn.manifold import MDS

            mds = MDS(n_components=2, metric="precomputed", init="classical_mds",
                      random_state=seed, max_iter=500)
            xy = mds.fit_transform(dis)
        else:
            xy = _umap(n, seed, metric="precomputed").fit_transform(dis)
    return np.asarray(xy, dtype=np.float64)


def token_embedding(pr: ProbeResult, layer: int, method: str = "pca", max_points: int = 1000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D map of the recorded tokens at boundary `layer` (0 = embeddings, L = last output).

    Returns (n, 2) coordinates and (n,) the sample index of each point; at most `max_points`
    tokens, a seeded random subset. method: "pca", "umap" or "diffusion" (the diffusion map NPIB
    uses, explorer.measure.npib.diffusion_map).
    """
    if method not in TOKEN_METHODS:
        raise ExplorerError(f"unknown token map method '{method}'; known: {', '.join(TOKEN_METHODS)}")
    L = pr.num_layers
    if not 0 <= int(layer) <= L:
        raise LayerError(f"layer boundary {layer} is outside 0..{L} (x_0 embeddings .. x_{L})")
    N = pr.num_tokens
    idx = torch.arange(N)
    if max_points and max_points < N:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(N, generator=gen)[:max_points].sort().values
    if idx.numel() < 4:
        raise ExplorerError(f"a token map needs at least 4 tokens, got {idx.numel()}")
    pts = pr.states[int(layer)][idx.to(pr.states.device)].float()      # (n, H)
    samples = pr.sample_of[idx.to(pr.sample_of.device)].cpu().numpy()
    if method == "pca":
        x = (pts - pts.mean(0, keepdim=True)).double()
        _, _, vt = torch.linalg.svd(x, full_matrices=False)            # vt: (min(n,H), H)
        axes = vt[:2]
        # fix each axis' sign: its largest loading positive
        axes = axes * torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
        xy = (x @ axes.T).cpu().numpy()
    elif method == "diffusion":
        from explorer.measure.npib import diffusion_map

        xy = diffusion_map(pts, d=2).double().cpu().numpy()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xy = _umap(len(idx), seed).fit_transform(pts.cpu().numpy())
    return np.asarray(xy, dtype=np.float64), samples


def warm_up() -> None:
    """Compile UMAP's numba code once (a few seconds) so that the first real map is quick."""
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(40, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _umap(40, 0).fit_transform(pts)
        dis = np.abs(pts[:, None, :] - pts[None, :, :]).sum(-1)
        _umap(40, 0, metric="precomputed").fit_transform(dis)
