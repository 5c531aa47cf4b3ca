"""2-D maps: layer maps recover known geometry, token maps match PCA / diffusion maps, seeds hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from explorer import ExplorerError, LayerError
from explorer.measure import manifold as F
from explorer.measure.npib import diffusion_map
from test_measure_measures import fake_probe, rand


def test_mds_layer_map_recovers_a_planar_configuration():
    pts = rand(9, 2, seed=3).double().numpy() * 3
    dist = torch.tensor(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)))
    xy = F.layer_map(dist, higher_is_similar=False)
    assert xy.shape == (9, 2)
    np.testing.assert_allclose(pdist(xy), pdist(pts), atol=1e-3 * pdist(pts).max())
    # the same geometry given as a similarity 1 - d gives the same map
    sim = 1.0 - dist
    np.testing.assert_allclose(pdist(F.layer_map(sim, higher_is_similar=True)), pdist(pts),
                               atol=1e-3 * pdist(pts).max())
    np.testing.assert_array_equal(F.layer_map(dist, False, seed=0), xy)


def test_dissimilarity_and_errors():
    m = torch.tensor([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]])
    d = F.dissimilarity(m, higher_is_similar=True)
    np.testing.assert_allclose(d, [[0, 0.2, 0.9], [0.2, 0, 0.7], [0.9, 0.7, 0]], atol=1e-6)
    with pytest.raises(ExplorerError, match="unknown layer map method"):
        F.layer_map(m, True, method="tsne")
    with pytest.raises(ExplorerError, match="NaN"):
        F.layer_map(torch.full((4, 4), float("nan")), True)
    pr = fake_probe(rand(4, 30, 6))
    with pytest.raises(LayerError):
        F.token_embedding(pr, layer=4)
    with pytest.raises(LayerError):
        F.token_embedding(pr, layer=-1)
    with pytest.raises(ExplorerError, match="unknown token map method"):
        F.token_embedding(pr, layer=0, method="tsne")


def test_token_pca_and_diffusion_maps():
    s = rand(3, 200, 10, seed=5) * torch.linspace(5, 0.5, 10)
    pr = fake_probe(s, num_samples=5)
    xy, samples = F.token_embedding(pr, layer=1, method="pca", max_points=80, seed=2)
    idx = torch.randperm(200, generator=torch.Generator().manual_seed(2))[:80].sort().values
    assert xy.shape == (80, 2)
    np.testing.assert_array_equal(samples, pr.sample_of[idx].numpy())
    from sklearn.decomposition import PCA

    ref = PCA(2).fit_transform(s[1, idx].double().numpy())
    for j in range(2):                               # equal up to each axis' sign
        assert abs(np.corrcoef(xy[:, j], ref[:, j])[0, 1]) > 0.9999
        np.testing.assert_allclose(np.abs(xy[:, j]), np.abs(ref[:, j]), atol=1e-4)
    diff, _ = F.token_embedding(pr, layer=2, method="diffusion", max_points=80, seed=2)
    np.testing.assert_allclose(diff, diffusion_map(s[2, idx], d=2).numpy(), atol=1e-5)
    full, samples = F.token_embedding(pr, layer=0, max_points=1000)
    assert full.shape == (200, 2) and (samples == pr.sample_of.numpy()).all()


def test_umap_maps_are_reproducible():
    F.warm_up()
    s = rand(6, 120, 8, seed=9)
    pr = fake_probe(s)
    a, _ = F.token_embedding(pr, layer=3, method="umap", seed=4)
    b, _ = F.token_embedding(pr, layer=3, method="umap", seed=4)
    assert a.shape == (120, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # two well separated groups of layers stay apart in the layer map
    m = torch.full((6, 6), 0.1)
    m[:3, :3] = 0.95
    m[3:, 3:] = 0.95
    m.fill_diagonal_(1.0)
    xy = F.layer_map(m, True, method="umap", seed=1)
    assert xy.shape == (6, 2)
    np.testing.assert_array_equal(xy, F.layer_map(m, True, method="umap", seed=1))
    within = max(pdist(xy[:3]).max(), pdist(xy[3:]).max())
    between = np.linalg.norm(xy[:3, None] - xy[None, 3:], axis=-1).min()
    assert between > within
