"""Turning text into fixed-length token windows, shared by the probe and the perplexity stage.

Protocol (../shared/METHODS.md): join documents with "\n\n", tokenize once without special tokens,
cut into non-overlapping windows of `seqlen` tokens, and put a BOS token in front of each window
only when the BOS rule says so. The rule is explicit and reported with every result.
"""

from __future__ import annotations

import torch

from .errors import TextError

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


def tokenize(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """1-D LongTensor of the text's tokens (no special tokens), cut to `max_tokens`."""
    if not text or not text.strip():
        raise TextError("the text is empty")
    if max_tokens is not None and max_tokens < 0:
        raise TextError(f"max_tokens must be positive (got {max_tokens})")
    # Tokenize a prefix large enough for max_tokens (about 4 characters per token in English,
    # x4 for margin) so that a 20 MiB text is not tokenized to keep 4k tokens.
    if max_tokens:
        text = text[: max_tokens * 16]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: the tokenizer would raise a TypeError
        raise TextError(f"the text is not valid Unicode (character {exc.start})") from None
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    ids = torch.tensor(ids, dtype=torch.long)
    return ids[:max_tokens] if max_tokens else ids


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
