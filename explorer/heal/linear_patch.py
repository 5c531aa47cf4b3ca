"""`linearpatch`: LinearPatch (Chen et al., NeurIPS 2025, arXiv 2505.24680), a symmetric matrix
P = H D H^T at each cut, fitted in closed form with no training.

At a cut after slot k the slot's output O (the state the next kept layer receives) should be the
dense state D further on. The paper's diagnosis: the damage is mostly a mismatch of magnitudes,
channel by channel and token by token, and a few tokens (the first, separators) carry outliers
that no channel scaling can fit. So both are rotated by an orthonormal Hadamard matrix H (the
outliers' mass spreads over all channels) and matched by a per-channel scale d in the rotated
basis (`scale`):

    magnitude (the paper's):  d_c = mean_t |(D H)_tc| / mean_t |(O H)_tc|
    lstsq:                    d_c = sum_t (O H)_tc (D H)_tc / sum_t (O H)_tc^2   (per-channel LS)

and the patch is x -> x P with P = H diag(d) H^T (H, H), symmetric.

P acts on the whole residual stream, the skip path included, so it cannot be folded exactly into
a plain decoder layer (the next layer's RMSNorm is not equivariant to it). Two ways (`fold`):
  - "mlp" (default; the export is a plain transformers folder): the ReplaceMe-style map on the
    slot's MLP branch, fitted in closed form to P's target, T = argmin ||M T + Y - O P||^2 (M the
    MLP's contribution, Y = O - M), folded into the down projection as the closed form does. It
    approximates P; `details["fits"]` gives the cut's error of both (patch and folded) against D.
  - "module": the slot becomes the layer followed by the exact patch (`PatchedLayer`). Not a
    standard decoder layer: `export` refuses it (loading would need this project's code); it is
    there to measure what the fold loses.
Every statistic is accumulated batch by batch in float64 (one pass per cut); each window's first
position is left out of the fit by default (`skip_first`), as in the other closed forms.

Example:
    >>> r = heal(compress(lm, "angular", remove=6).variant, "linearpatch")
    >>> r.details["fits"][0]["mse_patch"], r.details["fits"][0]["mse_folded"]
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from explorer.core.errors import LayerError
from explorer.core.gather import Accumulator
from explorer.core.params import Param
from explorer.core.variant import Variant
from explorer.heal.closed_form import MIN_TOKENS_PER_DIM, cut_gather, fold_map
from explorer.heal.cuts import Cut, find_cuts, with_slot
from explorer.heal.registry import COMMON_PARAMS, HealContext, HealMode, HealOutcome, register_mode


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % p for p in range(2, int(q ** 0.5) + 1))


def _legendre(a: int, q: int) -> int:
    """The quadratic character of a modulo the odd prime q: 0, 1 or -1."""
    a %= q
    return 0 if a == 0 else (1 if pow(a, (q - 1) // 2, q) == 1 else -1)


def _paley_core(q: int, skew: bool) -> torch.Tensor:
    """[[0, 1^T], [+-1, Q]] with Q the Jacobsthal matrix Q_ij = chi(j - i) of GF(q): (q+1)^2."""
    Q = torch.tensor([[_legendre(j - i, q) for j in range(q)] for i in range(q)],
                     dtype=torch.float64)
    S = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = -1 if skew else 1
    S[1:, 1:] = Q
    return S


def _base(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order m by Paley's constructions, or None."""
    if m in (1, 2):
        return torch.tensor([[1.0]] if m == 1 else [[1.0, 1.0], [1.0, -1.0]],
                            dtype=torch.float64)
    if _is_prime(m - 1) and (m - 1) % 4 == 3:                      # Paley I: I + S, S skew
        return torch.eye(m, dtype=torch.float64) + _paley_core(m - 1, skew=True)
    q = m // 2 - 1
    if m % 2 == 0 and _is_prime(q) and q % 4 == 1:                 # Paley II, order 2(q+1)
        S = _paley_core(q, skew=False)
        zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        one = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        return torch.kron(S, one) + torch.kron((S == 0).double(), zero)
    return None


def hadamard(n: int, seed: int = 0) -> tuple[torch.Tensor, bool]:
    """An orthonormal (n, n) float64 matrix that spreads every coordinate over all others: a
    Hadamard matrix / sqrt(n) (a Paley base doubled by Sylvester's construction: SmolLM2's 576 = 72 x 2^3,
    Gemma 3's 640 = 80 x 2^3), and whether it is one. Where no construction here applies, a seeded
    random orthogonal matrix, which spreads outliers the same way in expectation (QuaRot and
    SpinQuant use both kinds)."""
    m = n
    while m % 2 == 0 and _base(m) is None:
        m //= 2
    base = _base(m)
    if base is None:
        g = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))[None, :], False
    h = base
    while h.shape[0] < n:
        h = torch.kron(h, torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64))
    return h / n ** 0.5, True


def patch_matrix(Hn: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """P = Hn diag(d) Hn^T, (H, H): one matrix for rotate, scale per channel, rotate back."""
    return (Hn * d[None, :]) @ Hn.T


class PatchedLayer(nn.Module):
    """A decoder layer followed by x -> x P on its output hidden states (fold="module"): the
    exact LinearPatch, at the cost of not being a standard layer. Other attributes (the
    attention type a model reads from its layers) are the wrapped layer's."""

    def __init__(self, layer: nn.Module, P: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("patch", P)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out                   # (b, T, H)
        h = (h.float() @ self.patch).to(h.dtype)                        # patch: float32
        return (h, *out[1:]) if isinstance(out, tuple) else h


class PatchStats(Accumulator):
    """Sums over the calibration tokens of one cut, float64: everything the patch, the fold and
    their errors need, from one pass. O: slot output, D: dense target, M: MLP contribution,
    Y = O - M; A = O Hn, B = D Hn (rotated)."""

    def add(self, M: torch.Tensor, O: torch.Tensor, D: torch.Tensor, Hn: torch.Tensor) -> None:
        """M, O, D: (n, H) rows of one batch."""
        M, O, D = M.double(), O.double(), D.double()
        Y = O - M
        add = self.sums.add
        add("mtm", M.T @ M)
        add("mto", M.T @ O)
        add("mty", M.T @ Y)
        add("mtd", M.T @ D)
        add("oto", O.T @ O)
        add("otd", O.T @ D)
        add("abs_a", (O @ Hn).abs().sum(0))
        add("abs_b", (D @ Hn).abs().sum(0))
        add("dd", (D * D).sum())
        add("dy", ((D - Y) ** 2).sum())
        add("n", M.shape[0])

    def scale(self, Hn: torch.Tensor, how: str) -> torch.Tensor:
        """d (H,): the per-channel scale in the rotated basis."""
        if how == "magnitude":
            return self.abs_b / self.abs_a.clamp(min=1e-30)
        ata = torch.diagonal(Hn.T @ self.oto @ Hn)                      # sum_t (O Hn)_c^2
        atb = torch.diagonal(Hn.T @ self.otd @ Hn)                      # sum_t (O Hn)_c (D Hn)_c
        return atb / ata.clamp(min=1e-30)

    def error_of_map(self, P: torch.Tensor) -> float:
        """Mean squared error per token of O P - D (P = I: the unhealed cut)."""
        sq = float((P * (self.oto @ P)).sum()) - 2 * float((P * self.otd).sum()) \
            + float(self.dd)
        return max(sq, 0.0) / max(1.0, float(self.n))

    def fold(self, P: torch.Tensor, ridge: float) -> torch.Tensor:
        """T (H, H): argmin ||M T + Y - O P||^2 + lam ||T||^2, lam = ridge x mean diag(M^T M)."""
        H = self.mtm.shape[0]
        lam = ridge * float(self.mtm.diagonal().mean())
        a = self.mtm + lam * torch.eye(H, dtype=self.mtm.dtype, device=self.mtm.device)
        return torch.linalg.solve(a, self.mto @ P - self.mty)

    def error_of_fold(self, T: torch.Tensor) -> float:
        """Mean squared error per token of M T + Y - D (the folded layer's output against D)."""
        sq = float((T * (self.mtm @ T)).sum()) - 2 * float((T * (self.mtd - self.mty)).sum()) \
            + float(self.dy)
        return max(sq, 0.0) / max(1.0, float(self.n))


def capture(ctx: HealContext, v: Variant, cut: Cut, Hn: torch.Tensor) -> PatchStats:
    """Run the calibration windows through `v` up to slot `cut.slot` and accumulate its stats."""
    stats = PatchStats()
    Hn = Hn.to(ctx.lm.device)
    cut_gather(ctx, v, cut, lambda acc, M, O, D, rows: stats.add(M, O, D, Hn), stats.sums)
    return stats


def heal_cut(ctx: HealContext, v: Variant, cut: Cut, params: dict, Hn: torch.Tensor
             ) -> tuple[nn.Module, dict]:
    """The patched (or folded) layer for one cut, and the cut's errors against the dense state."""
    stats = capture(ctx, v, cut, Hn)
    Hn = Hn.to(stats.oto.device)
    d = stats.scale(Hn, params["scale"])
    P = patch_matrix(Hn, d)
    I = torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    info = {"slot": cut.slot, "mse_before": stats.error_of_map(I),
            "mse_patch": stats.error_of_map(P), "scale_min": float(d.min()),
            "scale_max": float(d.max())}
    layer = v.loaded(cut.slot)
    if params["fold"] == "module":
        info["exact_fold"] = False
        return PatchedLayer(layer, P.float()), info
    if not float(stats.mtm.diagonal().sum()) > 0:
        raise LayerError(f"linearpatch: the layer in slot {cut.slot} has no MLP output to fold "
                         "the patch into; use fold=module")
    T = stats.fold(P, params["ridge"])
    module, exact = fold_map(ctx.lm, layer, T)
    info.update(mse_folded=stats.error_of_fold(T), exact_fold=exact)
    return module, info


@register_mode
class LinearPatch(HealMode):
    name = "linearpatch"
    title = "LinearPatch: Hadamard rotation and channel scaling at the cut"
    paper = "A Simple Linear Patch Revives Layer-Pruned Large Language Models, arXiv 2505.24680"
    description = ("At each cut, rotates the residual stream by a Hadamard matrix (spreading the "
                   "outlier tokens' mass over channels), scales each rotated channel so its "
                   "magnitude matches the dense model's after the removed layers, and rotates "
                   "back: one symmetric matrix P = H D H^T fitted in closed form, no training. "
                   "By default the patch is folded into the cut layer's MLP (approximately) so "
                   "the model keeps its architecture.")
    trains = False
    params = COMMON_PARAMS + (
        Param("scale", str, "magnitude", "magnitude: mean |rotated dense| / mean |rotated "
              "variant| per channel (the paper's); lstsq: per-channel least squares",
              choices=("magnitude", "lstsq")),
        Param("fold", str, "mlp", "mlp: fit the patch's target on the MLP branch and fold it "
              "into the down projection (plain architecture, approximate); module: apply P "
              "exactly after the layer (cannot be exported)", choices=("mlp", "module")),
        Param("ridge", float, 1e-4, "ridge term of the fold, relative to the mean diagonal of "
              "M^T M", min=0, max=1),
    )

    def run(self, ctx: HealContext, params: dict) -> HealOutcome:
        t0 = time.perf_counter()
        lm, v = ctx.lm, ctx.variant
        W, T = ctx.data.ids.shape
        need = MIN_TOKENS_PER_DIM * lm.config.hidden_size
        if params["fold"] == "mlp" and W * (T - ctx.first) < need:
            raise LayerError(f"linearpatch's fold needs at least {need} fitted tokens (8 x the "
                             f"hidden size), but {W} windows of {T} give {W * (T - ctx.first)}: "
                             f"use windows >= {-(-need // (T - ctx.first))} at seqlen {T}")
        Hn, is_hadamard = hadamard(lm.config.hidden_size, ctx.seed)
        fits = []
        for cut in find_cuts(v):
            if cut.slot < 0:
                continue
            module, info = heal_cut(ctx, v, cut, params, Hn)
            fits.append(info)
            v = with_slot(v, cut.slot, module, "lp")
        if not fits:
            raise LayerError("linearpatch has no layer to patch: the only cut is before the "
                             "first layer (use a training mode)")
        rot = "Hadamard" if is_hadamard else "random orthogonal (no Hadamard of this order here)"
        notes = f"{rot} rotation, {params['scale']} scale, fold {params['fold']}. " + "; ".join(
            f"slot {f['slot']}: cut MSE {f['mse_before']:.4g} -> patch {f['mse_patch']:.4g}"
            + (f", folded {f['mse_folded']:.4g}" if "mse_folded" in f else "")
            for f in fits)
        return HealOutcome(v, steps=0, seconds=time.perf_counter() - t0, history=[],
                           details={"fits": fits, "hadamard": is_hadamard}, notes=notes)
