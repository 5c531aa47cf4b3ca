"""Similarity measures against independent plain loops, their invariances, and one real-model check."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from explorer import ExplorerError
from explorer.measure import measures as M
from explorer.probe.probe import ProbeResult


def fake_probe(states: torch.Tensor, last: torch.Tensor | None = None,
               num_samples: int = 4) -> ProbeResult:
    """A ProbeResult built straight from tensors: states (L+1, N, H), last (L+1, B, H)."""
    L1, N, H = states.shape
    if last is None:
        last = torch.randn(L1, num_samples, H, generator=torch.Generator().manual_seed(1))
    B = last.shape[1]
    return ProbeResult(states=states, last=last, sample_of=torch.arange(N) % B,
                       input_ids=torch.zeros(B, 8, dtype=torch.long), skip_first=True,
                       seconds=0.0)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def loop_cosine(states: np.ndarray) -> np.ndarray:
    L1, N, _ = states.shape
    out = np.zeros((L1, L1))
    for a in range(L1):
        for b in range(L1):
            cs = [states[a, t] @ states[b, t] / np.linalg.norm(states[a, t])
                  / np.linalg.norm(states[b, t]) for t in range(N)]
            out[a, b] = np.mean(cs)
    return out


def loop_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from N x N Gram matrices and the centring matrix (Kornblith et al., eq. 3)."""
    n = x.shape[0]
    c = np.eye(n) - np.ones((n, n)) / n
    kx, ky = c @ x @ x.T @ c, c @ y @ y.T @ c
    return float(np.sum(kx * ky) / np.sqrt(np.sum(kx * kx) * np.sum(ky * ky)))


def test_cosine_and_bi_match_a_plain_loop():
    s = rand(5, 30, 8)
    s[3] = s[2] * 4.0                        # same direction, other norm: cosine exactly 1
    pr = fake_probe(s)
    ref = loop_cosine(s.double().numpy())
    cos = M.similarity(pr, "cosine")
    assert cos.shape == (5, 5) and cos.dtype == torch.float32
    np.testing.assert_allclose(cos.numpy(), ref, atol=1e-5)
    assert cos[2, 3] == pytest.approx(1.0, abs=1e-6)
    bi = M.similarity(pr, "bi")
    np.testing.assert_allclose(bi.numpy(), 1 - ref, atol=1e-5)
    # ShortGPT's BI_i = mean_t (1 - cos(x_i[t], x_{i+1}[t])) for each layer i
    bi_i = [np.mean([1 - ref_cos for ref_cos in [loop_cosine(s[[i, i + 1]].double().numpy())[0, 1]]])
            for i in range(4)]
    np.testing.assert_allclose(M.adjacent(pr, "bi").numpy(), bi_i, atol=1e-5)
    assert M.adjacent(pr, "cosine").shape == (4,)


def test_cosine_chunks_and_token_subset(monkeypatch):
    s = rand(4, 50, 6, seed=3)
    full = M.similarity(fake_probe(s), "cosine")
    monkeypatch.setattr(M, "_chunk", lambda *a, **k: 7)       # many small chunks
    np.testing.assert_allclose(M.similarity(fake_probe(s), "cosine").numpy(), full.numpy(),
                               atol=1e-6)
    sub = M.similarity(fake_probe(s), "cosine", max_tokens=20, seed=5)
    idx = torch.randperm(50, generator=torch.Generator().manual_seed(5))[:20].sort().values
    np.testing.assert_allclose(sub.numpy(), loop_cosine(s[:, idx].double().numpy()), atol=1e-5)


def test_angular_uses_each_samples_last_token():
    states = rand(4, 20, 6)
    last = rand(4, 3, 6, seed=2)
    last[2] = last[1] * 0.5                          # layer 1 leaves the last token's direction
    pr = fake_probe(states, last)
    ang = M.similarity(pr, "angular").double().numpy()
    lt = last.double().numpy()
    for a in range(4):
        for b in range(4):
            ref = np.mean([math.acos(np.clip(lt[a, s] @ lt[b, s] / np.linalg.norm(lt[a, s])
                                             / np.linalg.norm(lt[b, s]), -1, 1)) / math.pi
                           for s in range(3)])
            assert ang[a, b] == pytest.approx(ref, abs=1e-5)
    assert ang[1, 2] == pytest.approx(0.0, abs=1e-3)
    assert M.similarity(pr, "cosine")[1, 2] < 0.5      # the token states do differ
    assert not M.MEASURES["angular"].higher_is_similar


@pytest.mark.parametrize("N,H", [(200, 4), (20, 64)])   # feature path, then Gram path
def test_cka_matches_the_gram_formula(N, H, monkeypatch):
    s = rand(4, N, H, seed=N) + 2.0                       # an offset CKA must ignore
    pr = fake_probe(s)
    cka = M.similarity(pr, "cka", max_tokens=None).double().numpy()
    x = s.double().numpy()
    for a in range(4):
        for b in range(4):
            assert cka[a, b] == pytest.approx(loop_cka(x[a], x[b]), abs=1e-5)
    monkeypatch.setattr(M, "_chunk", lambda *a, **k: 3)
    np.testing.assert_allclose(M.similarity(pr, "cka", max_tokens=None).numpy(), cka, atol=1e-5)


def test_cka_invariant_to_rotation_and_scale():
    s = rand(4, 300, 16, seed=7)
    q, _ = torch.linalg.qr(rand(16, 16, seed=8))          # an orthogonal matrix
    s[1] = 3.5 * s[0] @ q                                  # rotated and scaled copy
    s[2] = s[0].clone()
    cka = M.similarity(fake_probe(s), "cka")
    assert cka[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert cka[0, 2] == pytest.approx(1.0, abs=1e-6)
    assert cka[0, 3] < 0.2                                 # unrelated random cloud
    cos = M.similarity(fake_probe(s), "cosine")
    assert cos[0, 1] < 0.5                                 # cosine does see the rotation


def test_registry_and_errors():
    assert set(M.MEASURES) == {"cosine", "bi", "angular", "cka", "npib"}
    assert [n for n, i in M.MEASURES.items() if i.higher_is_similar] == ["cosine", "cka", "npib"]
    assert all(i.name == n and i.paper and len(i.description) > 80 for n, i in M.MEASURES.items())
    pr = fake_probe(rand(3, 10, 4))
    with pytest.raises(ExplorerError, match="known measures: cosine, bi, angular, cka, npib"):
        M.similarity(pr, "euclid")
    with pytest.raises(ExplorerError, match="sigma"):
        M.similarity(pr, "cosine", sigma=3.0)
    with pytest.raises(ExplorerError):
        M.all_similarities(pr, ["cosine", "nope"])


def test_all_similarities_share_params_and_stay_symmetric():
    s = rand(5, 60, 8, seed=4)
    s[4] = s[3]
    pr = fake_probe(s)
    out = M.all_similarities(pr, seed=1, num_points=40, k=3)
    assert list(out) == list(M.MEASURES)
    for name, m in out.items():
        assert m.shape == (5, 5) and torch.isfinite(m).all(), name
        assert torch.allclose(m, m.T), name
    assert torch.allclose(out["bi"], 1 - out["cosine"])
    for name in ("cosine", "cka", "npib"):
        assert out[name][3, 4] == pytest.approx(1.0, abs=1e-5), name
        assert torch.allclose(out[name].diagonal(), torch.ones(5)), name
    assert out["bi"][3, 4] == pytest.approx(0.0, abs=1e-5)


# every registered measure with each parameter set it declares (`Measure.examples`): a measure
# added to the registry is covered here without editing this file
MEASURE_CASES = {f"{name}-{k}": (name, params) for name, m in M.MEASURES.items()
                 for k, params in enumerate(m.examples)}


@pytest.fixture(scope="module")
def tiny_probe(tiny_lm, sample_text):
    from explorer import probe

    return probe(tiny_lm, sample_text, seqlen=32, num_samples=4)


@pytest.mark.parametrize("case", sorted(MEASURE_CASES))
def test_tiny_model_probe_to_matrices(tiny_probe, case):
    name, params = MEASURE_CASES[case]
    m = M.similarity(tiny_probe, name, **params)
    assert m.shape == (7, 7) and torch.isfinite(m).all() and torch.allclose(m, m.T), name
    adj = M.adjacent(tiny_probe, name, **params)        # its own path where it has one
    assert adj.shape == (6,)
    torch.testing.assert_close(adj.float().cpu(), m.diagonal(offset=1).float().cpu(),
                               atol=1e-4, rtol=1e-4)


def test_every_registered_measure_has_a_case():
    assert {name for name, _ in MEASURE_CASES.values()} == set(M.MEASURES)


@pytest.mark.slow
def test_real_model_redundancy_and_pre_norm_last_layer(smol, wiki):
    """SmolLM2: middle layers barely change the stream; the last boundary is taken pre-norm."""
    from explorer import probe

    pr = probe(smol, wiki.calibration, seqlen=128, num_samples=16)
    L = pr.num_layers
    adj = M.adjacent(pr, "cosine")
    assert adj.shape == (L,)
    assert adj[L // 2 - 3:L // 2 + 3].min() > 0.9
    assert adj[-1] > 0.5
    # transformers' last hidden state comes after the final norm: its adjacent cosine collapses
    with torch.no_grad():
        out = smol.model(input_ids=pr.input_ids[:2], output_hidden_states=True)
    hs = out.hidden_states
    post = torch.nn.functional.cosine_similarity(hs[-2][:, 1:], hs[-1][:, 1:], dim=-1).mean()
    assert post < 0.3 < adj[-1]
    # NPIB sees the same structure: neighbours in the middle share more than the two ends
    npib = M.similarity(pr, "npib")
    assert npib.diagonal(1)[10:20].mean() > npib[0, L] + 0.2


def test_cli_similarity_prints_the_matrix(tiny_factory, sample_text, tmp_path, capsys):
    from explorer.cli import main

    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    rc = main(["similarity", "--model", str(tiny_factory("llama", num_layers=4)), "--text",
               str(text), "--measure", "bi", "--seqlen", "32", "--samples", "4", "--json"])
    import json

    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["measure"] == "bi" and out["num_layers"] == 4
    m = np.array(out["matrix"])
    assert m.shape == (5, 5) and np.allclose(m, m.T) and np.allclose(np.diag(m), 0)
    assert out["adjacent"] == [out["matrix"][i][i + 1] for i in range(4)]
    errors = io.StringIO()
    assert main(["similarity", "--measure", "euclid", "--json"], stderr=errors) == 2
    assert "known measures: cosine" in errors.getvalue()


def test_massive_tokens_are_left_out_of_cka_and_npib_points():
    from explorer.measure.npib import calibration_points

    s = rand(4, 120, 8, seed=12)
    s[2:, 17] *= 1000.0                        # one token with a massive activation from layer 2
    pr = fake_probe(s)
    from explorer.probe.token_select import massive_tokens
    assert massive_tokens(s).nonzero().flatten().tolist() == [17]
    keep = torch.arange(120) != 17
    clean = M.similarity(fake_probe(s[:, keep].clone()), "cka")
    torch.testing.assert_close(M.similarity(pr, "cka"), clean)
    raw = M.similarity(pr, "cka", max_norm_ratio=None)
    assert raw[2, 3] > 0.99 and clean[2, 3] < 0.5    # left in, the one token is all CKA sees
    pts = calibration_points(pr, "tokens", num_points=500)
    assert pts.shape == (4, 119, 8) and pts.abs().max() < 100
    assert calibration_points(pr, "tokens", num_points=500, max_norm_ratio=None).shape[1] == 120
