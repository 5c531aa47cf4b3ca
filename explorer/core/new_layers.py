"""New modules a variant is built from, made from the loaded model's without writing it: a weight
average of layers (a merge), a layer with one sub-block's output projection zeroed (a part drop),
and a vocabulary head with tensors of its own (a head to train).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn


@torch.no_grad()
def head_copy(head: nn.Module) -> nn.Linear:
    """A new `nn.Linear` with `head`'s weight (and bias) copied bit for bit into tensors of its
    own, frozen: a head slot to train (the loaded head, which may be the embedding, is never
    written). (V, H) weight: 49152 x 576 = 28M values on SmolLM2."""
    w = head.weight
    bias = getattr(head, "bias", None)
    out = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    out.weight.copy_(w)
    if bias is not None:
        out.bias.copy_(bias)
    return out.requires_grad_(False)



def without_part(layer: nn.Module, proj_path: str) -> nn.Module:
    """A copy of `layer` sharing its weights, except the projection at `proj_path` (dotted, e.g.
    "mlp.down_proj"), which is a zeroed copy: the sub-block it closes outputs zeros."""
    shared = {id(t): t for t in list(layer.parameters()) + list(layer.buffers())}
    out = copy.deepcopy(layer, memo=shared)        # new modules, the same weight tensors
    parent_path, _, name = proj_path.rpartition(".")
    parent = out.get_submodule(parent_path) if parent_path else out
    zero = copy.deepcopy(layer.get_submodule(proj_path))   # own tensors: the original stays intact
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    setattr(parent, name, zero)
    return out


def _is_linear(module: nn.Module) -> bool:
    # nn.Linear, and transformers' Conv1D (GPT-2) which stores a transposed weight.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


@torch.no_grad()
def combine_layers(layers: Sequence[nn.Module], weights: Sequence[float]) -> nn.Module:
    """A deep copy of layers[0] whose linear weights and biases are sum_k weights[k] * layers[k]'s.

    Everything that is not a linear projection (norms, rotary buffers) is kept from layers[0].
    """
    out = copy.deepcopy(layers[0])
    named = [dict(layer.named_modules()) for layer in layers]
    for name, module in out.named_modules():
        if not _is_linear(module):
            continue
        for pname in ("weight", "bias"):
            p = getattr(module, pname, None)
            if p is None:
                continue
            acc = torch.zeros_like(p, dtype=torch.float32)
            for w, mods in zip(weights, named):
                acc += w * getattr(mods[name], pname).float()
            p.copy_(acc.to(p.dtype))
    return out
