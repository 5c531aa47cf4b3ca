"""Turning text into fixed-length token windows, shared by the probe and the perplexity stage.

Protocol (docs/architecture.md, docs/measures.md): join documents with "\n\n", tokenize once without special tokens,
cut into non-overlapping windows of `seqlen` tokens, and put a BOS token in front of each window
only when the BOS rule says so. The rule is explicit and reported with every result.
"""

from __future__ import annotations

import weakref

import torch

from explorer.core.cache import Store
from explorer.core.errors import TextError

BOS_RULES = ("auto", "always", "never")


def use_bos(tokenizer, rule: str, needs_bos: bool) -> bool:
    """Whether each window starts with BOS: "always", "never", or "auto" = the family's convention
    (Gemma is trained with BOS in front; Llama-style SmolLM2 and Qwen add none by default)."""
    if rule not in BOS_RULES:
        raise TextError(f"unknown BOS rule '{rule}'; use one of {', '.join(BOS_RULES)}")
    if rule == "never":
        return False
    if tokenizer.bos_token_id is None:
        if rule == "always":
            raise TextError("BOS rule 'always' but this tokenizer has no BOS token")
        return False
    return rule == "always" or needs_bos


# Token ids of recent (tokenizer, text, max_tokens) calls: the app and the benchmarks evaluate the
# same text again and again (one perplexity per variant). Keyed by the tokenizer's id and checked
# against a weak reference to it (a new tokenizer at the same address can never hit an entry) and
# against the text itself, not only its hash; emptied when the resident model goes.
TOKENS: Store = Store("tokens", size=8, model_bound=True)
_CUT_MARGIN = 64      # tokens past max_tokens that a prefix must give (see _encode_prefix)


def tokenize(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """1-D LongTensor of the text's tokens (no special tokens), cut to `max_tokens`."""
    if not text or not text.strip():
        raise TextError("the text is empty")
    if max_tokens is not None and max_tokens < 0:
        raise TextError(f"max_tokens must be positive (got {max_tokens})")
    key = (id(tokenizer), hash(text), len(text), max_tokens)
    hit = TOKENS.get(key)              # (weakref to the tokenizer, text, ids)
    if hit is not None and hit[0]() is tokenizer and (hit[1] is text or hit[1] == text):
        return hit[2].clone()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: the tokenizer would raise a TypeError
        raise TextError(f"the text is not valid Unicode (character {exc.start})") from None
    ids = torch.tensor(_encode_prefix(tokenizer, text, max_tokens), dtype=torch.long)
    try:
        TOKENS.put(key, (weakref.ref(tokenizer), text, ids))
    except TypeError:                  # not weak-referenceable: no cache
        pass
    return ids.clone()


def _encode_prefix(tokenizer, text: str, max_tokens: int | None) -> list[int]:
    """The first `max_tokens` tokens of `text`, tokenizing only about as much text as they need.

    The characters per token are measured on the first 4 kB, a prefix ~10% longer than needed is
    tokenized, and it grows until it gives _CUT_MARGIN tokens more than wanted: the cut can only
    change the tokens of the word it splits, which are among those dropped. (Tokenizing the whole
    text instead costs more than the forward pass on a GPU: bench/RESULTS.md, "Perplexity".)
    """
    def encode(t: str) -> list[int]:
        return tokenizer(t, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    if not max_tokens:
        return encode(text)
    sample = text[:4096]
    per_token = len(sample) / max(1, len(encode(sample)))
    chars = int((max_tokens + _CUT_MARGIN) * per_token * 1.1) + 256
    while True:
        ids = encode(text[:chars])
        if len(ids) >= max_tokens + _CUT_MARGIN or chars >= len(text):
            return ids[:max_tokens]
        chars = int(chars * 1.5)


# Tokens per forward pass when the probe or `perplexity` picks the batch size. On a CPU a few
# hundred tokens per pass fill the matrix products and larger batches push the activations out of
# the cache (measured in bench/RESULTS.md, "Perplexity: why the CPU gain is small"); a GPU needs
# large batches to fill its tensor cores.
BATCH_TOKENS = {"cpu": 512, "cuda": 16384}


def auto_batch_size(device: torch.device, seqlen: int) -> int:
    """Windows per forward pass: the device's token budget over the window length (at least 1)."""
    return max(1, BATCH_TOKENS.get(device.type, 4096) // seqlen)


def windows(ids: torch.Tensor, seqlen: int, bos_id: int | None = None,
            max_windows: int | None = None) -> torch.Tensor:
    """(W, seqlen [+1 with BOS]) non-overlapping windows; a shorter tail is dropped."""
    if seqlen < 2:
        raise TextError(f"seqlen must be at least 2 (got {seqlen})")
    n = ids.numel() // seqlen
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        raise TextError(f"the text has {ids.numel()} tokens, fewer than one window of {seqlen}; "
                        "give more text or a smaller seqlen")
    w = ids[: n * seqlen].view(n, seqlen)
    if bos_id is not None:
        w = torch.cat([torch.full((n, 1), bos_id, dtype=w.dtype), w], dim=1)
    return w
