"""`closed-form`: ReplaceMe (Shopkhoev et al., arXiv 2505.02819), a linear map fitted in closed form
at each cut and folded into the weights, so the healed model keeps its architecture.

For a cut after slot k whose output should be the dense state D = x_b (b = dense boundary after the
removed layers), split slot k's output O into the MLP's contribution M and the rest Y = O - M
(attention and residual). Over calibration tokens (each window's first position left out: its
massive activation would dominate) solve

    T = argmin ||M T + Y - D||^2 + lam ||T||^2  =  (M^T M + lam I)^-1 M^T (D - Y)      (H x H)

with the normal equations accumulated batch by batch in float64 (lam = ridge x mean diag(M^T M)).
Folding: M comes out of the down projection, M = m W^T, so M T = m (T^T W)^T and the layer's
down_proj.weight becomes T^T W (bias b -> T^T b; GPT-2's transposed Conv1D: W T, b T). The result
is an ordinary decoder layer: the model exports as a plain transformers folder.

Families with a norm after the MLP (Gemma: residual + n(mlp(.)) with n(z) = g z / rms(z)): M is the
norm's output, and the map is folded as z -> z diag(g) T diag(g)^-1, exact up to a per-token scale
rms(z) / rms(z'), so the fold is approximate there (the result says so); channels with a near-zero
gain are left out of it (safe_inverse). On Gemma 3 270M the folded layer's real error at the cut
is several times the fitted map's (angular plan: 2.3e8 against 5.4e7); fitting the folded map
again through the norm by Adam on that error lowered it (1.6e8) but made held-out perplexity
worse (232 against 98.9), so it is not offered.

objective="cosine" (ReplaceMe's second variant) starts from the least-squares T and minimises the
mean of 1 - cos(M T + Y, D) over the tokens with Adam.

Cuts are healed in slot order, each fitted on the states of the variant healed so far. A cut
before the first slot has no layer in front of it and is left as it is.

Example:
    >>> r = heal(compress(lm, "angular", remove=6).variant, "closed-form")
    >>> r.variant.num_layers, r.cuts
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from explorer.core.backbone import run_backbone
from explorer.core.errors import LayerError, ParamError
from explorer.core.gather import Accumulator, Gather, Sums, View
from explorer.core.model import LoadedModel
from explorer.core.params import Param
from explorer.core.ranks import reduce_sums, shard
from explorer.core.variant import Variant
from explorer.heal.cuts import Cut, find_cuts, trainable_copy, with_slot
from explorer.heal.data import shared_prefix
from explorer.heal.registry import COMMON_PARAMS, HealContext, HealMode, HealOutcome, register_mode


def mlp_output_path(lm: LoadedModel, layer: nn.Module) -> str:
    """Dotted path of the module whose output is the MLP's contribution to the residual stream:
    the norm after the down projection where there is one, else the down projection."""
    mlp_output(lm, layer)                    # the one-line errors
    return lm.arch.mlp_branch(layer)


def mlp_output(lm: LoadedModel, layer: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(module whose output is the MLP's contribution to the residual stream, the norm applied
    after the down projection or None when the down projection's output is added directly)."""
    arch = lm.arch
    down = arch.part(layer, arch.mlp_down)
    if down is None:
        if arch.is_moe:
            raise LayerError(f"closed-form folds its map into the MLP's down projection; the "
                             f"{arch.family} model's layers hold a mixture of experts instead "
                             "of one (use layerwise or distill)")
        raise LayerError(f"closed-form needs the layer's MLP down projection; the {arch.family} "
                         "family has none where expected (use layerwise or distill)")
    out = arch.part(layer, arch.mlp_branch(layer))
    return (out, None) if out is down else (out, out)


def _norm_scale(norm: nn.Module, H: int, like: torch.Tensor) -> torch.Tensor:
    """The per-channel scale g of an RMS-style norm, n(z) = g z / rms(z): n applied to a vector of
    ones (rms 1; the eps changes all channels by the same factor, which cancels in the fold)."""
    with torch.no_grad():
        return norm(torch.ones(1, H, dtype=like.dtype, device=like.device)).reshape(H).double()


# Gains of a norm after the MLP below this fraction of their root mean square are treated as
# zero when the map is folded in front of the norm (see safe_inverse).
GAIN_FLOOR = 1e-2


def safe_inverse(g: torch.Tensor) -> torch.Tensor:
    """1 / g, with 0 where |g| < GAIN_FLOOR x rms(g). A channel whose gain is (near) zero can
    carry next to nothing out of the norm, whatever goes in; dividing by its gain would instead
    put a huge value into it, and the norm would then scale every other channel down by it.
    Gemma 3 270M has exact zeros among the post-MLP gains of layers 1, 3 and 4 (the fold gave
    inf); on its angular plan (cut at layer 13, smallest gain 0.09 of up to 493) the floor took
    the healed perplexity from 125.8 (floor 1e-6) to 98.9."""
    floor = GAIN_FLOOR * float(g.pow(2).mean().sqrt())
    return torch.where(g.abs() >= floor, 1 / g.where(g != 0, torch.ones_like(g)),
                       torch.zeros_like(g))


@torch.no_grad()
def fold_map(lm: LoadedModel, layer: nn.Module, T: torch.Tensor) -> tuple[nn.Module, bool]:
    """A copy of `layer` whose MLP output is followed by the (H, H) map T, folded into its down
    projection; the copy owns only the down projection's tensors. Returns (layer, exact)."""
    arch = lm.arch
    down = arch.part(layer, arch.mlp_down)
    _, post = mlp_output(lm, layer)
    A = T.double()
    if post is not None:                      # z -> z diag(g) T diag(1/g): see the module docstring
        g = _norm_scale(post, T.shape[0], down.weight)
        A = g[:, None] * A * safe_inverse(g)[None, :]
    prefix = arch.mlp_down + "."
    new = trainable_copy(layer, lambda name: name.startswith(prefix))
    nd = arch.part(new, arch.mlp_down)
    A = A.to(nd.weight.device)
    conv = type(nd).__name__ == "Conv1D"      # GPT-2: y = x W + b with W (inner, H)
    w = nd.weight.double()
    nd.weight.copy_((w @ A if conv else A.T @ w).to(nd.weight.dtype))
    if getattr(nd, "bias", None) is not None:
        b = nd.bias.double()
        nd.bias.copy_((b @ A).to(nd.bias.dtype))      # as a row: b T, i.e. T^T b as a column
    return new, post is None


class NormalEquations(Accumulator):
    """Running sums over tokens for min ||M T - R||^2: M^T M, M^T R, ||R||^2 and the token count
    (`Sums`, float64: fed batch by batch in any order, reduced across ranks)."""

    def add(self, M: torch.Tensor, R: torch.Tensor) -> None:
        """M, R: (n, H) rows of one batch."""
        M, R = M.double(), R.double()
        self.sums.add("mtm", M.T @ M)
        self.sums.add("mtr", M.T @ R)
        self.sums.add("rr", (R * R).sum())
        self.sums.add("n", M.shape[0])

    def solve(self, ridge: float) -> torch.Tensor:
        """T (H, H) float64: (M^T M + lam I)^-1 M^T R with lam = ridge x mean diag(M^T M)."""
        H = self.mtm.shape[0]
        lam = ridge * float(self.mtm.diagonal().mean())
        a = self.mtm + lam * torch.eye(H, dtype=self.mtm.dtype, device=self.mtm.device)
        return torch.linalg.solve(a, self.mtr)

    def error(self, T: torch.Tensor) -> float:
        """Mean squared error per token of M T - R (from the sums: no second pass)."""
        T = T.to(self.mtm)
        sq = float((T * (self.mtm @ T)).sum()) - 2 * float((T * self.mtr).sum()) + float(self.rr)
        return max(sq, 0.0) / max(1.0, float(self.n))


def needed_boundaries(v: Variant) -> set[int]:
    """The dense boundaries the closed form of `v`'s cuts reads (to fetch them in one pass)."""
    prefix = shared_prefix(v)
    return {b for cut in find_cuts(v) if cut.slot >= 0
            for b in (min(prefix, cut.slot), cut.dense_out)} - {0}


def cut_gather(ctx: HealContext, v: Variant, cut: Cut, add: Callable[..., None],
               sums: Sums) -> Sums:
    """Run the calibration windows through `v` up to slot `cut.slot` and hand every batch to
    `add(sums, M, O, D, rows)`: M, O, D each (n, H) float32 on the model's device, n the batch's
    tokens (each window's first left out when `ctx.first`), M the cut layer's MLP branch output,
    O the layer's output, D the dense model's state there. A per-layer accumulator
    (`explorer.core.gather`): batches come in whatever order the executor runs them, and no lock is
    taken. Under torchrun each rank runs its shard of the windows and the sums are added
    across ranks (`explorer.core.ranks`). The fits of the closed form and of LinearPatch read these."""
    lm, k = ctx.lm, cut.slot
    data = ctx.data
    start = min(shared_prefix(v), k)           # slots before `start` are the dense model's own
    dense = data.dense_states(sorted({start, cut.dense_out} - {0}), ctx.progress)
    D_all = dense[cut.dense_out]                                        # (W, T, H) CPU
    H = D_all.shape[-1]
    first = ctx.first
    W = data.num_windows
    mine = shard(W)                  # this rank's windows (all of them in one process)
    done = [0]

    def reduce(view: View, acc: Sums) -> None:
        rows = slice(mine.start + view.rows.start, mine.start + view.rows.stop)   # of all W
        M = view.parts["M"].reshape(-1, H).float()                      # (n, H)
        O = view.y.reshape(-1, H).float()
        D = D_all[rows, first:].reshape(-1, H).to(O.device)
        add(acc, M, O, D, rows)
        done[0] += rows.stop - rows.start
        ctx.report(done[0] / (mine.stop - mine.start), f"slot {k}", step=done[0],
                   total=mine.stop - mine.start, unit="windows")

    g = Gather(k, reduce, parts={"M": mlp_output_path(lm, v.layer(k))}, first=first, sums=sums)
    for _ in run_backbone(lm, data.ids[mine], variant=v, start=start, stop=k + 1,
                          start_states=dense[start][mine] if start > 0 else None, gather=[g]):
        pass
    return reduce_sums(sums)       # the ranks' sums added (nothing to do in one process)


def capture(ctx: HealContext, v: Variant, cut: Cut, keep: bool = False):
    """Accumulate the normal equations of the cut at `cut.slot` of `v` over the calibration
    windows; with keep=True also return the token rows (M, Y, D) (N, H) float32, in window
    order."""
    eq = NormalEquations()

    def add(acc: Sums, M, O, D, rows: slice) -> None:
        Y = O - M
        eq.add(M, D - Y)
        if keep:
            for name, t in (("M", M), ("Y", Y), ("D", D)):
                acc.keep(name, rows, t.cpu())

    cut_gather(ctx, v, cut, add, eq.sums)
    rows = tuple(eq.sums.kept(n) for n in "MYD") if keep else None
    return eq, rows


def cosine_refine(T: torch.Tensor, rows: tuple[torch.Tensor, ...], steps: int, lr: float,
                  seed: int, batch: int = 4096) -> torch.Tensor:
    """Minimise mean(1 - cos(M T + Y, D)) over T by Adam from the least-squares solution."""
    M, Y, D = rows
    g = torch.Generator().manual_seed(seed)
    T = T.float().clone().requires_grad_(True)
    opt = torch.optim.Adam([T], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            pick = torch.randint(0, M.shape[0], (min(batch, M.shape[0]),), generator=g)
            pred = M[pick] @ T + Y[pick]
            loss = (1 - F.cosine_similarity(pred, D[pick], dim=-1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return T.detach().double()


def heal_cut(ctx: HealContext, v: Variant, cut: Cut, params: dict
             ) -> tuple[nn.Module | None, dict]:
    """The folded layer for one cut and what the fit achieved (calibration MSE before/after);
    None when there is nothing to fold into (the layer's MLP was dropped)."""
    cosine = params["objective"] == "cosine"
    eq, rows = capture(ctx, v, cut, keep=cosine)
    ctx.report(1.0, f"solving the map at slot {cut.slot}")
    if not float(eq.mtm.diagonal().sum()) > 0:
        return None, {"slot": cut.slot, "skipped": "the layer's MLP outputs nothing to map"}
    T = eq.solve(params["ridge"])
    if cosine:
        T = cosine_refine(T, rows, params["cosine_steps"], params["cosine_lr"], ctx.seed)
    I = torch.eye(T.shape[0], dtype=T.dtype)
    module, exact = fold_map(ctx.lm, v.loaded(cut.slot), T)
    return module, {"slot": cut.slot, "mse_before": eq.error(I), "mse_after": eq.error(T),
                    "exact_fold": exact}


MIN_TOKENS_PER_DIM = 8     # fitted tokens per hidden dimension, at least (apply_closed_form)


def apply_closed_form(ctx: HealContext, v: Variant, params: dict, label: str
                      ) -> tuple[Variant, list[dict]]:
    """Fold a fitted map at every cut of `v` that has a layer in front of it, in slot order.
    An (H, H) map needs many more fitted tokens than H (docs/healing.md, "How many tokens a fit
    needs"): fewer than MIN_TOKENS_PER_DIM x H are refused with the windows needed."""
    W, T = ctx.data.ids.shape
    need = MIN_TOKENS_PER_DIM * ctx.lm.config.hidden_size
    per_window = T - ctx.first
    if W * per_window < need:
        raise ParamError(f"the closed-form map needs at least {need} fitted tokens "
                         f"({MIN_TOKENS_PER_DIM} x the hidden size), but {W} windows of {T} give "
                         f"{W * per_window}: use windows >= {-(-need // per_window)} at seqlen {T}")
    fits = []
    cuts = fitted_cuts(v, params.get("follow", 0))
    whole = ctx.progress
    for i, cut in enumerate(cuts):
        # each map's events (its dense states, its windows, its solve) as part i of n, said so
        ctx.progress = None if whole is None else (
            lambda e, i=i: whole(replace(e.within(i / len(cuts), (i + 1) / len(cuts)),
                                         note=f"map {i + 1}/{len(cuts)}" +
                                         (f", {e.note}" if e.note else ""))))
        try:
            module, info = heal_cut(ctx, v, cut, params)
        finally:
            ctx.progress = whole
        fits.append(info)
        if module is not None:
            v = with_slot(v, cut.slot, module, label)
    return v, fits


def fitted_cuts(v: Variant, follow: int) -> list[Cut]:
    """The cuts with a layer in front of them, each followed by up to `follow` further slots (an
    original layer o whose output should be the dense x_{o+1}: the state the cut left behind is
    pulled back toward the dense stream layer by layer), in slot order, each slot once."""
    cuts = [c for c in find_cuts(v) if c.slot >= 0]
    at = {c.slot: c for c in cuts}
    for c in cuts:
        for k in range(c.slot + 1, min(v.num_layers, c.slot + 1 + follow)):
            o = v.origin(k)
            if k not in at and type(v.slots[k]) is int:
                at[k] = Cut(k, o, o + 1, (), False)
    return [at[k] for k in sorted(at)]


@register_mode
class ClosedForm(HealMode):
    name = "closed-form"
    title = "Closed-form linear map folded into the weights (ReplaceMe)"
    paper = "ReplaceMe: Network Simplification via Depth Pruning and Transformer Block Linearization, arXiv 2505.02819"
    description = ("At each cut, fits one linear map on calibration text so that the last kept "
                   "layer's output lands where the dense model's would after the removed layers, "
                   "and folds it into that layer's MLP: no training, seconds, and the model keeps "
                   "its architecture (it exports as an ordinary transformers folder).")
    trains = False
    params = COMMON_PARAMS + (
        Param("objective", str, "lstsq", "lstsq: least squares (closed form); cosine: then "
              "minimise the cosine distance by Adam (ReplaceMe's second variant)",
              choices=("lstsq", "cosine"),
              label="Objective", choice_labels=(
                ('lstsq', 'least squares'),
                ('cosine', 'cosine (after least squares)'),
              )),
        Param("ridge", float, 1e-4, "ridge term, relative to the mean diagonal of M^T M",
              min=0, max=1,
              label="Ridge term"),
        Param("cosine_steps", int, 300, "Adam steps of the cosine objective", min=1,
              max=100_000,
              label="Cosine steps"),
        Param("cosine_lr", float, 1e-4, "Adam learning rate of the cosine objective", min=0,
              max=1,
              label="Cosine learning rate"),
        Param("follow", int, 0, "slots after each cut that also get a map, each toward the "
              "dense state after its own layer (0: ReplaceMe's one map per cut)", min=0,
              max=1000, label="Maps after each cut"),
    )
    examples = ({}, {"objective": "cosine", "cosine_steps": 3})

    def run(self, ctx: HealContext, params: dict) -> HealOutcome:
        t0 = time.perf_counter()
        v, fits = apply_closed_form(ctx, ctx.variant, params, "cf")
        if not any("skipped" not in f for f in fits):
            raise LayerError("closed-form has nothing to fold into: no cut has a layer with an "
                             "MLP in front of it (use layerwise or distill)")
        return HealOutcome(v, steps=0, seconds=time.perf_counter() - t0, history=[],
                           details={"fits": fits}, notes=fit_notes(fits))


def fit_notes(fits: list[dict]) -> str:
    """One sentence per fitted cut: its calibration MSE before and after the map."""
    return "; ".join(f"slot {f['slot']}: skipped, {f['skipped']}" if "skipped" in f else
                     f"slot {f['slot']}: cut MSE {f['mse_before']:.4g} -> {f['mse_after']:.4g}"
                     + ("" if f["exact_fold"] else " (fold approximate: norm after the MLP)")
                     for f in fits)


# The closed form's declared defaults, for the modes that start from it (layer-wise,
# distillation, Prune&Comp, tail fine-tuning).
CLOSED_FORM_DEFAULTS = {p.name: p.default for p in ClosedForm.params}
