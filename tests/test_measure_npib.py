"""NPIB pieces: k-NN estimators against closed forms and plain loops, diffusion maps against a
plain numpy eigendecomposition, and the NPIB matrix's defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import digamma

from explorer import ExplorerError
from explorer.measure import npib as P
from test_measure_measures import fake_probe, rand


def loop_ksg(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """KSG algorithm 2 written point by point."""
    n = len(x)
    total = 0.0
    for i in range(n):
        dx = np.abs(x - x[i]).max(1)
        dy = np.abs(y - y[i]).max(1)
        dz = np.maximum(dx, dy)
        dz[i] = np.inf
        near = np.argsort(dz, kind="stable")[:k]
        ex, ey = dx[near].max(), dy[near].max()
        nx = sum(1 for j in range(n) if j != i and dx[j] <= ex)
        ny = sum(1 for j in range(n) if j != i and dy[j] <= ey)
        total += digamma(nx) + digamma(ny)
    return digamma(k) - 1 / k + digamma(n) - total / n


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9, 0.99])
def test_ksg_matches_gaussian_mutual_information(rho):
    # one estimate at n = 1500 has a spread of ~0.02-0.04 nats; the mean of 4 is within 0.04
    estimates = []
    for seed in range(4):
        x = rand(1500, 1, seed=2 * seed)
        y = rho * x + math.sqrt(1 - rho ** 2) * rand(1500, 1, seed=2 * seed + 1)
        estimates.append(P.ksg_mi(x, y, k=3))
    truth = -0.5 * math.log(1 - rho ** 2)
    assert np.mean(estimates) == pytest.approx(truth, abs=0.04 + 0.03 * truth)


def test_ksg_matches_a_plain_loop_and_self_information():
    x, y = rand(60, 2, seed=1), rand(60, 2, seed=2)
    y = 0.7 * x + 0.3 * y
    assert P.ksg_mi(x, y, k=4) == pytest.approx(loop_ksg(x.double().numpy(), y.double().numpy(), 4),
                                                abs=1e-9)
    # the estimate of I(Y; Y) is psi(n) - psi(k) - 1/k, the normaliser NPIB uses, and a copy
    # with rounding noise scores the same (KSG algorithm 2 is continuous at identity)
    z = rand(300, 2, seed=3)
    self_info = digamma(300) - digamma(3) - 1 / 3
    assert P.ksg_mi(z, z, k=3) == pytest.approx(self_info, abs=1e-9)
    assert P.ksg_mi(z, z + 1e-6 * rand(300, 2, seed=4), k=3) == pytest.approx(self_info, abs=1e-9)


def test_knn_entropy_matches_closed_forms():
    g = rand(2000, 2, seed=5)
    assert P.knn_entropy(g, k=3) == pytest.approx(math.log(2 * math.pi * math.e), abs=0.08)
    u = torch.rand(2000, 1, generator=torch.Generator().manual_seed(6)) * 3.0
    assert P.knn_entropy(u, k=3) == pytest.approx(math.log(3.0), abs=0.05)
    # differential entropy shifts by d * log(c) under scaling by c, and can be negative
    assert P.knn_entropy(g * 0.01, k=3) == pytest.approx(P.knn_entropy(g, k=3) + 2 * math.log(0.01),
                                                         abs=1e-6)
    assert P.knn_entropy(g * 0.01, k=3) < 0
    # KSG's self-information is the k-NN entropy in units of the k-NN cell volume
    n, k = 2000, 3
    eps = P.chebyshev(g.double()).topk(k, dim=-1, largest=False).values[:, -1]
    mean_log_vol = float((2 * torch.log(2 * eps)).mean())
    assert P.knn_entropy(g, k) - mean_log_vol == pytest.approx(digamma(n) - digamma(k), abs=1e-6)
    assert P.ksg_mi(g, g, k) == pytest.approx(digamma(n) - digamma(k) - 1 / k, abs=1e-6)


def numpy_diffusion(points: np.ndarray, d: int, alpha: float) -> np.ndarray:
    """Reference diffusion map with a full numpy eigendecomposition (no standardisation)."""
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    sigma = np.median(dist[np.triu_indices(len(points), 1)])
    k = np.exp(-np.sqrt(dist / sigma))
    q = k.sum(1)
    k = k / np.outer(q, q) ** alpha
    r = k.sum(1)
    w, v = np.linalg.eigh(k / np.sqrt(np.outer(r, r)))
    order = np.argsort(w)[::-1][1:d + 1]
    return v[:, order] / np.sqrt(r)[:, None] * w[order]


@pytest.mark.parametrize("n", [30, 200])        # full eigh path, then subspace iteration
def test_diffusion_map_matches_numpy(n):
    pts = rand(n, 5, seed=n).double()
    pts[:, 0] *= 4                                  # one dominant direction: a clear spectral gap
    ours = P.diffusion_map(pts, d=2).double().numpy()
    ref = numpy_diffusion(pts.numpy(), 2, 0.5)
    for j in range(2):
        corr = np.corrcoef(ours[:, j], ref[:, j])[0, 1]
        assert abs(corr) > 0.999
    np.testing.assert_allclose(ours.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ours.std(0, ddof=1), 1, atol=1e-4)


def test_diffusion_map_of_a_ring_is_a_circle():
    theta = torch.rand(300, generator=torch.Generator().manual_seed(0)) * 2 * math.pi
    ring = torch.stack([torch.cos(theta), torch.sin(theta), 0.01 * rand(300, seed=1)], 1)
    y = P.diffusion_map(ring * 50 + 7, d=2)               # scale and offset do not matter
    radius = y.norm(dim=1)
    assert radius.std() / radius.mean() < 0.1
    torch.testing.assert_close(y, P.diffusion_map(ring, d=2), atol=1e-3, rtol=1e-3)


def test_npib_identity_copies_and_independence():
    # a cloud with a few dominant directions, as real layers have: with an isotropic cloud the
    # top diffusion eigenvalues are nearly tied and any rounding rotates the eigenvectors
    s = rand(5, 400, 12, seed=21) * torch.tensor([8.0, 4.0, 2.0] + [0.5] * 9)
    q, _ = torch.linalg.qr(rand(12, 12, seed=22))
    s[1] = s[0].clone()
    s[2] = 5.0 * s[0] @ q + 1.0                     # rotated, scaled, shifted copy
    s[3] = s[0] + 0.3 * rand(400, 12, seed=23)      # noisy copy
    pr = fake_probe(s)
    m = P.npib_matrix(pr, num_points=300)
    assert m.shape == (5, 5) and torch.allclose(m, m.T)
    assert torch.equal(m.diagonal(), torch.ones(5))
    assert m[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert m[0, 2] > 0.99
    assert 0.15 < m[0, 3] < 0.97
    assert m[0, 4] < 0.05 and m[1, 4] < 0.05        # independent layer: about 0
    assert (m >= 0).all() and (m <= 1).all()


def test_npib_pairs_points_and_errors():
    s = rand(4, 120, 6, seed=30)
    pr = fake_probe(s, last=rand(4, 40, 6, seed=31))
    full = P.npib_matrix(pr, num_points=100, k=4)
    part = P.npib_matrix(pr, num_points=100, k=4, pairs=[(0, 1), (2, 3)])
    assert part[0, 1] == full[0, 1] and part[3, 2] == full[2, 3]
    assert torch.isnan(part[0, 2]) and part[1, 1] == 1
    for points in ("pooled", "last"):
        assert P.calibration_points(pr, points).shape == (4, 40, 6)
        assert torch.isfinite(P.npib_matrix(pr, points=points, sigma=8.0)).all()
    assert P.calibration_points(pr, "tokens", num_points=50).shape == (4, 50, 6)
    with pytest.raises(ExplorerError, match="unknown points"):
        P.npib_matrix(pr, points="random")
    with pytest.raises(ExplorerError, match="k must be"):
        P.npib_matrix(pr, num_points=10, k=10)
    with pytest.raises(ExplorerError, match="sigma"):
        P.npib_matrix(pr, sigma=-1.0)
