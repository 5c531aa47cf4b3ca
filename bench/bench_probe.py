"""Probe (+ similarity measures): one hooked pass against MKA's one-pass-per-layer procedure.

Ours: `explorer.probe.probe.probe` runs the calibration windows through the backbone once, in batches,
with forward hooks on every decoder layer that copy the residual stream x_0..x_L as it passes.
Cost: one forward pass, ~2 x N_backbone FLOPs per token (Kaplan et al. 2020, arXiv 2001.08361).

Baseline (MKA, arXiv 2406.16330, as its published code collects states): for each layer l, a full
forward pass of the model with `output_hidden_states=True`, keeping only hidden_states[l] from it.
That is L passes (each also computing the vocabulary logits), ~L x 2 x N FLOPs per token, so the
expected ratio is about L (30 for SmolLM2) minus the share of fixed overheads.

Measures (when `explorer.measure.measures` is importable): `similarity(pr, m)` for the token-level measures
against per-layer-pair Python loops over the same probe states (cosine via F.cosine_similarity
per pair; linear CKA per pair), the way a first implementation often computes an L x L matrix.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "probe"


@torch.no_grad()
def mka_passes(model: torch.nn.Module, input_ids: torch.Tensor,
               batch_size: int = 8) -> list[torch.Tensor]:
    """MKA's collection: for each layer l, one full forward pass keeping hidden_states[l] only.

    input_ids: (B, T). Returns L tensors (B, T, H). (transformers' hidden_states has L+1 entries,
    the last after the final norm; MKA walks the L layers.)
    """
    L = model.config.num_hidden_layers
    device = next(model.parameters()).device
    kept = []
    for layer in range(L):
        parts = []
        for b0 in range(0, input_ids.shape[0], batch_size):
            out = model(input_ids[b0:b0 + batch_size].to(device), output_hidden_states=True,
                        use_cache=False)
            parts.append(out.hidden_states[layer].float().cpu())   # (b, T, H)
            del out
        kept.append(torch.cat(parts))
    return kept


@torch.no_grad()
def loop_cosine(states: torch.Tensor) -> torch.Tensor:
    """(L+1, L+1) mean token cosine, one Python iteration per layer pair; states (L+1, N, H)."""
    L1 = states.shape[0]
    out = torch.empty(L1, L1)
    for a in range(L1):
        for b in range(L1):
            out[a, b] = F.cosine_similarity(states[a], states[b], dim=-1).mean()
    return out


@torch.no_grad()
def loop_cka(states: torch.Tensor) -> torch.Tensor:
    """(L+1, L+1) linear CKA (Kornblith et al. 2019), one Python iteration per pair a <= b.

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on X, Y (N, H) centred over tokens;
    cost (L+1)(L+2)/2 x 2 N H^2 FLOPs.
    """
    L1 = states.shape[0]
    xs = [s - s.mean(0) for s in states.float()]               # L+1 centred (N, H)
    self_norm = [(x.T @ x).norm() for x in xs]
    out = torch.empty(L1, L1)
    for a in range(L1):
        for b in range(a, L1):
            out[a, b] = out[b, a] = (xs[b].T @ xs[a]).square().sum() / (self_norm[a] * self_norm[b])
    return out


def run(quick: bool = True, model: str = common.DEFAULT_MODEL, lm=None,
        text: str | None = None) -> list[dict]:
    """Probe (and measure) rows for `model` (or a ready `lm` with `text`)."""
    from explorer.probe.probe import calibration_windows, probe

    lm, text = common.model_and_calibration(model, lm, text)
    seqlen, samples = (64, 4) if quick else (128, 32)
    ids = calibration_windows(lm, text, seqlen=seqlen, num_samples=samples)   # (B, T)
    B, T = ids.shape
    L = lm.num_layers
    reps = 2 if quick else 5

    probe(lm, input_ids=ids[:1])                      # warm-up
    mka_passes(lm.model, ids[:1, :16])
    times, res = common.interleaved(
        {"ours": lambda: probe(lm, input_ids=ids),
         "mka": lambda: mka_passes(lm.model, ids)},
        reps=reps, warmup=0, device=lm.device)
    pr = res["ours"]
    # Same numbers? MKA's hidden_states[l] is our x_l (before layer l) for l < L.
    same = torch.allclose(res["mka"][L // 2][:, 1:].reshape(-1, pr.states.shape[-1]),
                          pr.states[L // 2].cpu(), rtol=1e-4, atol=1e-3)
    ours_s, mka_s = common.median(times["ours"]), common.median(times["mka"])
    rows = [common.row(BENCH, f"probe {L} layers, {B}x{T} tokens", ours_s, mka_s, "s",
                       higher_is_better=False,
                       note=f"baseline: MKA, {L} full passes with output_hidden_states; median "
                            f"of {reps} (ours {common.spread(times['ours'])}, MKA "
                            f"{common.spread(times['mka'])}); states match: {same}")]

    try:
        from explorer.measure import measures as measure
    except ImportError:
        rows.append(common.row(BENCH, "similarity measures", None, None, "s",
                               higher_is_better=False,
                               note="explorer.measure.measures is not there yet: measures not benched"))
        return rows
    states = pr.states.cpu()
    loops = {"cosine": loop_cosine, "cka": loop_cka}
    for name, loop in loops.items():
        if name not in measure.MEASURES:
            continue
        # Same work on both sides: every recorded token (measure.py's CKA subsamples by default).
        params = {"max_tokens": None} if "max_tokens" in measure.MEASURES[name].param_names else {}
        t, r = common.interleaved({"ours": lambda n=name, p=params: measure.similarity(pr, n, **p),
                                   "loop": lambda f=loop: f(states)},
                                  reps=reps, warmup=1, device=lm.device)
        diff = (r["ours"] - r["loop"]).abs().max().item()
        rows.append(common.row(BENCH, f"{name} matrix ({L + 1}x{L + 1}, N={pr.num_tokens})",
                               common.median(t["ours"]), common.median(t["loop"]), "s",
                               higher_is_better=False,
                               note=f"baseline: Python loop over layer pairs; max |diff| "
                                    f"{diff:.1e}; all {pr.num_tokens} tokens on both sides"))
    t0 = time.perf_counter()
    mats = measure.all_similarities(pr)
    all_s = time.perf_counter() - t0
    rows.append(common.row(BENCH, "probe + all_similarities", ours_s + all_s, None, "s",
                           higher_is_better=False,
                           note=f"measures: {', '.join(mats)}; all_similarities alone "
                                f"{all_s:.2f} s (one run)"))
    return rows


if __name__ == "__main__":
    common.main(run)
