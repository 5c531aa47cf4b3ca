"""`streamline`: LLM-Streamline (Chen et al., arXiv 2403.19135): replace a redundant block by one
lightweight network trained to imitate it.

1. Choose the contiguous block of n = remove + 1 layers [j, j+n) maximising the mean token cosine
   between its input and output, cos(x_j, x_{j+n}) (cell (j, j+n) of the "cosine" matrix).
2. Capture the calibration pairs (x_j -> x_{j+n}) (bounded memory: only those two boundaries).
3. Replace the block by one module, so the layer count shrinks by exactly `remove`:
   - "layer" (default): a copy of decoder layer j, trained by MSE (Adam). The only replacement
     that `explorer.export.folder` can save as a standard transformers model, hence the default.
   - "linear": y = x W + b, closed-form least squares (training-free, seconds).
   - "ffn": a SwiGLU feed-forward block with residual, y = x + W_d(silu(W_g n(x)) * W_u n(x)),
     initialised from layer j's MLP and trained by MSE.
   The first position of every window (massive activation) is left out of the fit by default.

Replay: the recipe op stores the block, the replacement type, the training settings and a
fingerprint of the calibration text; replaying re-fits deterministically (same seed, same text).
It works within the session that planned it, or in any session when the text was a builtin source
("wiki"); otherwise replay refuses with a clear message.

Example:
    >>> plan = compress(lm, "streamline", remove=6)                  # "layer", ~30 s on CPU
    >>> plan = compress(lm, "streamline", remove=6, replacement="linear")
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from explorer.apply.calibration import find_calibration
from explorer.core.errors import ExplorerError, LayerError
from explorer.core.model import LoadedModel
from explorer.measure.measures import measure_param, most_similar, similarity
from explorer.core.params import Param
from explorer.apply.fitted import record as record_fitted, register_module
from explorer.core.progress import scaled
from explorer.apply.recipe import register_op
from explorer.core.variant import Variant
from explorer.plan.fitting import Pair, block_mse, capture_block, fit_module
from explorer.plan.registry import Method, Plan, PlanContext, register

REPLACEMENTS = ("layer", "linear", "ffn")


@register_module
class LinearReplacement(nn.Module):
    """y = x W^T + b on every token: a (H, H) map standing in for a block of layers."""

    def __init__(self, hidden: int):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)

    @classmethod
    def from_state(cls, lm: LoadedModel, tensors: dict[str, torch.Tensor]) -> "LinearReplacement":
        """An empty map shaped for saved tensors (a recipe's fitted result)."""
        w = tensors["proj.weight"]                           # (H, H)
        return cls(w.shape[1]).to(device=w.device, dtype=w.dtype)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.proj(hidden_states)                      # (b, T, H) -> (b, T, H)


@register_module
class FFNReplacement(nn.Module):
    """y = x + W_down(silu(W_gate n(x)) * W_up n(x)), n = RMSNorm: one SwiGLU block."""

    def __init__(self, hidden: int, inner: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.gate = nn.Linear(hidden, inner, bias=False)
        self.up = nn.Linear(hidden, inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)

    @classmethod
    def from_state(cls, lm: LoadedModel, tensors: dict[str, torch.Tensor]) -> "FFNReplacement":
        """An empty block shaped for saved tensors (a recipe's fitted result)."""
        inner, hidden = tensors["gate.weight"].shape          # (inner, H)
        w = tensors["gate.weight"]
        return cls(hidden, inner, eps=getattr(lm.config, "rms_norm_eps", 1e-6)).to(
            device=w.device, dtype=w.dtype)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        n = self.norm(hidden_states)                         # (b, T, H)
        return hidden_states + self.down(F.silu(self.gate(n)) * self.up(n))


@torch.no_grad()
def fit_linear(pairs: list[Pair], skip_first: bool = True,
               ridge: float = 1e-6) -> LinearReplacement:
    """Closed-form least squares y ~ x W^T + b, accumulated batch by batch in float64.

    ridge: relative Tikhonov term (times the mean diagonal of X^T X) for numerical safety.
    """
    first = 1 if skip_first else 0
    H = pairs[0].x.shape[-1]
    xtx = torch.zeros(H + 1, H + 1, dtype=torch.float64)
    xty = torch.zeros(H + 1, H, dtype=torch.float64)
    for p in pairs:
        x = p.x[:, first:].reshape(-1, H).double().cpu()      # (N, H)
        y = p.y[:, first:].reshape(-1, H).double().cpu()
        xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)   # (N, H+1)
        xtx += xa.T @ xa
        xty += xa.T @ y
    reg = ridge * xtx.diagonal()[:H].mean()
    xtx[:H, :H] += reg * torch.eye(H, dtype=xtx.dtype)
    sol = torch.linalg.solve(xtx, xty)                        # (H+1, H): [W^T; b]
    mod = LinearReplacement(H)
    dev, dt = pairs[0].x.device, pairs[0].x.dtype
    mod.proj.weight.copy_(sol[:H].T)
    mod.proj.bias.copy_(sol[H])
    return mod.to(device=dev, dtype=dt)


def ffn_from_layer(lm: LoadedModel, layer: nn.Module) -> FFNReplacement:
    """A SwiGLU block initialised from `layer`'s MLP (its pre-MLP norm folded in for Llama-style)."""
    arch = lm.arch
    gate, up, down = (arch.part(layer, p) for p in (arch.mlp_gate, arch.mlp_up, arch.mlp_down))
    if not all(isinstance(m, nn.Linear) for m in (gate, up, down)):
        raise ExplorerError("streamline replacement 'ffn' needs separate gate/up/down "
                            f"projections; the {arch.family} family has none (use 'layer' or "
                            "'linear')")
    H, inner = gate.in_features, gate.out_features
    ffn = FFNReplacement(H, inner, eps=getattr(lm.config, "rms_norm_eps", 1e-6))
    g = torch.ones(H)
    norm = arch.part(layer, arch.norms[1]) if arch.llama_style else None
    if norm is not None and getattr(norm, "weight", None) is not None:
        g = norm.weight.detach().float().cpu()
    with torch.no_grad():
        ffn.gate.weight.copy_(gate.weight.float().cpu() * g)      # W diag(g)
        ffn.up.weight.copy_(up.weight.float().cpu() * g)
        ffn.down.weight.copy_(down.weight.float().cpu())
    return ffn.to(device=gate.weight.device, dtype=gate.weight.dtype)


def build_replacement(ctx: PlanContext, v: Variant, start: int, n: int, params: dict
                      ) -> tuple[nn.Module, float]:
    """Fit the replacement for slots [start, start+n) of `v`; returns (module, MSE on calibration)."""
    kind = params["replacement"]
    ctx.report(0.2, f"capturing x_{start} -> x_{start + n} pairs")
    pairs = capture_block(ctx.lm, v, ctx.input_ids, start, start + n)
    if kind == "linear":
        module = fit_linear(pairs, params["skip_first"])
    else:
        module = copy.deepcopy(v.loaded(start)) if kind == "layer" else \
            ffn_from_layer(ctx.lm, v.loaded(start))

        fit_module(module, pairs, steps=int(params["steps"]), lr=float(params["lr"]),
                   skip_first=params["skip_first"], progress=scaled(ctx.progress, 0.25, 0.95),
                   label=f"streamline {kind}")
    return module, block_mse(module, pairs, params["skip_first"])


@register
class Streamline(Method):
    name = "streamline"
    title = "LLM-Streamline (replace a block by a trained layer)"
    paper = ("LLM-Streamline: Streamlining Redundant Layers to Compress Large Language Models, "
             "arXiv 2403.19135")
    description = ("Finds the run of consecutive layers whose input and output are most alike "
                   "(mean token cosine), removes it, and puts one small network in its place, "
                   "trained on calibration text to turn the block's input into its output. By "
                   "default the stand-in is a copy of the block's first layer, fine-tuned for a few "
                   "dozen steps, so the result is still an ordinary model; a linear map is the "
                   "training-free option. The paper keeps 91% of Llama-2-7B's accuracy at 25% "
                   "pruning, well above LaCo.")
    params = (
        Param("replacement", str, "layer", "stand-in for the block: a copy of its first decoder "
              "layer, trained (exportable); a closed-form linear map; or a trained SwiGLU block",
              choices=REPLACEMENTS,
              label="Replacement layer"),
        Param("steps", int, 60, "optimiser steps for layer and ffn", min=0,
              label="Training steps"),
        Param("lr", float, 3e-4, "Adam learning rate, cosine-decayed", min=0,
              label="Learning rate"),
        Param("skip_first", bool, True, "leave each window's first position out of the fit",
              label="Leave out each window's first token"),
        measure_param("cosine", "block selection: the block whose input and output are most "
                      "similar is replaced"),
    )
    examples = ({"steps": 3}, {"replacement": "linear"}, {"replacement": "ffn", "steps": 2})

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        L, n = ctx.lm.num_layers, remove + 1
        if n > L:
            raise LayerError(f"streamline replaces remove + 1 = {n} layers; the model has {L}")
        ctx.report(0.05, "probing the calibration text")
        sim = similarity(ctx.probe(), params["measure"]).float().cpu()     # (L+1, L+1)
        cells = [float(sim[j, j + n]) for j in range(L - n + 1)]
        j = most_similar(cells, params["measure"])[0]
        v0 = Variant.identity(ctx.lm)
        module, mse = build_replacement(ctx, v0, j, n, params)
        layers = list(range(j, j + n))
        label = f"streamline {params['replacement']} ({j}-{j + n - 1})"
        op = {"op": "streamline", "layers": layers, "summary": label,
              "replacement": params["replacement"], "steps": int(params["steps"]),
              "lr": float(params["lr"]), "skip_first": bool(params["skip_first"]),
              "calibration": ctx.calibration_ref()}
        v = v0.replace(layers, module, label, step=op)
        record_fitted(v0, v)
        note = (f"Replaced layers {j}-{j + n - 1} ({params['measure']} {cells[j]:.3f}) by a "
                f"{params['replacement']} stand-in, calibration MSE {mse:.4g}.")
        H = ctx.lm.config.hidden_size
        tokens = ctx.input_ids.numel() - (ctx.input_ids.shape[0] if params["skip_first"] else 0)
        if params["replacement"] == "linear" and tokens < 4 * (H + 1):
            # fewer tokens than unknowns overfit badly (docs/methods.md, LLM-Streamline)
            note += (f" Only {tokens} calibration tokens for {H + 1} unknowns per output: the "
                     "linear fit likely overfits; use more calibration samples.")
        return Plan(self.name, params, v, {f"{params['measure']}(x_j, x_j+{n})": cells}, note)


@register_op("streamline", fitted=True)
def _replay_streamline(v: Variant, op: dict, lm: LoadedModel) -> Variant:
    layers = op.get("layers")
    ref = op.get("calibration")
    if not isinstance(layers, list) or not layers or not isinstance(ref, dict):
        raise LayerError("streamline op needs 'layers' and 'calibration'")
    text = find_calibration(ref)
    ctx = PlanContext(lm, text, seqlen=int(ref["seqlen"]), num_samples=int(ref["num_samples"]),
                      seed=int(ref["seed"]), calibration_source=ref.get("source"))
    params = {"replacement": op["replacement"], "steps": op["steps"], "lr": op["lr"],
              "skip_first": op["skip_first"]}
    module, _ = build_replacement(ctx, v, layers[0], len(layers), params)
    return v.replace(layers, module, op.get("summary", "streamline"), step=op)
