"""What a variant occupies: its weights' bytes, the KV cache of a run, the memory one batch needs
(estimated before a speed run, to refuse one that does not fit), and the peak memory a run
reaches, sampled while it runs."""

from __future__ import annotations

import threading

import torch

from explorer.core.model import LoadedModel
from explorer.load.memory import available_bytes
from explorer.core.variant import Variant



# Safety factor on the estimated memory of one run: the allocator's slack and temporaries the
# estimate leaves out (rotary tables, masks, the sampler's copies).
MEMORY_SLACK = 1.5


# -- sizes and memory ----------------------------------------------------------------------------

def model_dims(lm: LoadedModel) -> dict[str, int]:
    cfg = lm.config
    h = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * h
    return {"h": h, "heads": heads, "kv": kv, "head_dim": head_dim, "inter": inter,
            "vocab": cfg.vocab_size}


def kv_cache_bytes(lm: LoadedModel, num_layers: int, batch: int, tokens: int) -> int:
    """Bytes of a full KV cache: keys and values of every layer, (batch, kv heads, tokens,
    head_dim) each, in the model's dtype."""
    d = model_dims(lm)
    elt = torch.finfo(lm.dtype).bits // 8
    return 2 * num_layers * batch * d["kv"] * tokens * d["head_dim"] * elt


def run_bytes(lm: LoadedModel, batch: int, prefill_tokens: int, decode_tokens: int) -> int:
    """Estimated memory one batch needs on top of the weights, the larger of prefill and decode:
    the KV cache of every layer, one layer's activations (residual, attention projections and
    scores, MLP), the last position's logits in fp32; times MEMORY_SLACK."""
    d = model_dims(lm)
    elt = torch.finfo(lm.dtype).bits // 8
    T = max(prefill_tokens, decode_tokens)
    acts = batch * T * elt * (6 * d["h"] + 3 * d["inter"]) + \
        batch * d["heads"] * T * T * elt                     # eager attention scores (b, h, T, T)
    kv = kv_cache_bytes(lm, lm.num_layers, batch, T)
    logits = batch * d["vocab"] * 4
    return int(MEMORY_SLACK * (acts + kv + logits))


def largest_batch(lm: LoadedModel, prefill_tokens: int, decode_tokens: int,
                  free: int | None = None) -> int:
    """The largest batch whose estimated run fits in the free memory (0: not even one)."""
    free = available_bytes(lm.device) if free is None else free
    per = run_bytes(lm, 1, prefill_tokens, decode_tokens)
    b = max(0, free // max(1, per))
    while b > 0 and run_bytes(lm, b, prefill_tokens, decode_tokens) > free:
        b -= 1
    return int(b)


def weights_bytes(variant: Variant) -> int:
    """Bytes of the variant's parameters, each tensor counted once: the model outside its decoder
    layers (embeddings, final norm, head; a tied head is the embedding) plus every slot's layer."""
    lm = variant.lm
    in_layers = {id(t) for layer in lm.original_layers for t in layer.parameters()}
    seen: dict[int, torch.Tensor] = {}
    with lm.lock:   # the live layer list is the original one while no variant is applied
        for t in lm.model.parameters():
            if id(t) not in in_layers:
                seen[id(t)] = t
    for i in range(variant.num_layers):
        for t in variant.layer(i).parameters():
            seen[id(t)] = t
    if variant.head is not None:       # its own head replaces the loaded one (or the tie)
        old = lm.arch.lm_head(lm.model)
        if old.weight is not lm.model.get_input_embeddings().weight:
            for t in old.parameters():
                seen.pop(id(t), None)
        for t in variant.head.parameters():
            seen[id(t)] = t
    return sum(t.numel() * t.element_size() for t in seen.values())


class PeakSampler:
    """The peak memory of a block: CUDA's allocator peak, or the CPU process's resident set
    sampled every millisecond above its level when the block started."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self.proc = psutil.Process()
        self.base = self.top = self.proc.memory_info().rss
        self.stop = threading.Event()

        def sample():
            while not self.stop.wait(0.001):
                self.top = max(self.top, self.proc.memory_info().rss)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.top = max(self.top, self.proc.memory_info().rss)
            self.peak = self.top - self.base
        return False


def cache_bytes(cache: object) -> int:
    """Bytes of the tensors a transformers cache holds (keys and values of every layer)."""
    seen: dict[int, torch.Tensor] = {}
    for layer in getattr(cache, "layers", []) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                seen[id(t)] = t
    if not seen and hasattr(cache, "key_cache"):          # older cache layout
        for t in list(cache.key_cache) + list(cache.value_cache):
            seen[id(t)] = t
    return sum(t.numel() * t.element_size() for t in seen.values())
