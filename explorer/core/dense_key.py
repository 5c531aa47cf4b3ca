"""What a dense figure and dense states are a function of: the key of the dense-state service
(explorer/core/dense_cache.py), from fingerprints of the weights and of the windows, the dtypes,
the device and the protocol (what is computed on the windows).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from explorer.core.model import LoadedModel

SAMPLE_PER_TENSOR = 4096                     # values per weight tensor that enter the fingerprint
PPL = "ppl"                                  # perplexity's protocol: figures and PrefixStates

def weights_fingerprint(lm: LoadedModel) -> str:
    """A digest of the model's weights and configuration, cheap enough to take on every call.

    Each weight tensor enters with its name, shape, dtype and a strided sample of 4096 of its
    values (a sample keeps it cheap; hashing every value of a model takes seconds), the
    configuration as JSON. Another model, another checkpoint or any training changes it; a single edited value
    outside the sample does not (the loaded model is never edited in place, by design).
    The original layers are read (`lm.original_layers`), never the live list, which may hold
    another thread's variant; for the same reason the config's layer count and types are left out.
    """
    h = hashlib.sha256()
    layers_prefix = lm.arch.layers + "."
    named = [(f"layer{i}.{n}", p) for i, layer in enumerate(lm.original_layers)
             for n, p in layer.named_parameters()]
    named += [(n, p) for n, p in lm.model.named_parameters() if not n.startswith(layers_prefix)]
    for name, p in named:
        if p.is_meta:        # a streamed layer (load_model's offload): its files enter below
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|meta".encode())
            continue
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLE_PER_TENSOR)
        sample = flat[::step].to("cpu", copy=True).contiguous()
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
        h.update(sample.view(torch.uint8).numpy().tobytes())
    cfg = lm.config.to_dict()
    for key in ("num_hidden_layers", "n_layer", "layer_types"):
        cfg.pop(key, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(str(lm.num_layers).encode())
    if lm.weights is not None:
        h.update(lm.weights.fingerprint().encode())
    elif any(p.is_meta for _, p in named):   # accelerate's disk offload: name the files
        h.update(str(lm.source).encode())
    return h.hexdigest()[:32]


def windows_digest(ids: torch.Tensor) -> str:
    """A digest of evaluation windows (W, T): they fix the text, the window length, BOS and cap."""
    ids = ids.detach().to("cpu", torch.int64).contiguous()
    h = hashlib.sha256(str(tuple(ids.shape)).encode())
    h.update(ids.numpy().tobytes())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class DenseKey:
    """What a dense figure and dense states depend on."""

    weights: str          # weights_fingerprint
    windows: str          # windows_digest
    dtype: str            # the model's dtype
    compute: str          # the compute dtype (autocast), or the model's own
    device: str           # device type: numerics differ between CPU and CUDA kernels
    protocol: str = PPL   # what is computed on the windows (PPL, or healing's split: heal_key)

    def digest(self) -> str:
        """A file name for the on-disk figure (library versions included: their numerics)."""
        import transformers

        parts = (self.weights, self.windows, self.dtype, self.compute, self.device,
                 torch.__version__, transformers.__version__)
        if self.protocol != PPL:          # perplexity's files keep the names they always had
            parts += (self.protocol,)
        text = "|".join(parts)
        return hashlib.sha256(text.encode()).hexdigest()[:40]


def dense_key(lm: LoadedModel, ids: torch.Tensor,
              compute_dtype: torch.dtype | None = None, protocol: str = PPL) -> DenseKey:
    """The cache key of the dense model evaluated on windows `ids` (W, T) (protocol: what is
    computed on them; perplexity's by default)."""
    compute = compute_dtype or lm.dtype
    return DenseKey(weights_fingerprint(lm), windows_digest(ids),
                    str(lm.dtype).replace("torch.", ""), str(compute).replace("torch.", ""),
                    lm.device.type, protocol)


def heal_key(lm: LoadedModel, fit: torch.Tensor, held_out: torch.Tensor) -> DenseKey:
    """The key of healing's dense answers on windows `fit` (W, T) and `held_out` (V, T): the
    windows of both, the split between them in the protocol."""
    return dense_key(lm, torch.cat([fit, held_out]),
                     protocol=f"heal: {fit.shape[0]} fit + {held_out.shape[0]} held-out windows, "
                              "float32 states on the CPU, top-k distributions")
