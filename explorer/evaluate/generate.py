"""Greedy generation, one path for the whole package: the app's and the report's side-by-side
generations and the capability check's continuations all come from `greedy_continuations`.

Each step takes the argmax of the variant's logits (no sampling, none of a checkpoint's
generation_config processors), with the KV cache when the model runs whole, else one full
layer-major pass per new token (layers left on disk: slower, the same tokens). Perplexity alone
can hide a loss of capability; a few generations side by side show it.

Example:
    >>> generate(lm, ["The capital of France is"], variant=v, max_new_tokens=8)
"""

from __future__ import annotations


import torch

from explorer.core.backbone import run_backbone
from explorer.evaluate.nll import final_logits
from explorer.core.model import LoadedModel
from explorer.core.variant import Variant



@torch.no_grad()
def greedy_continuations(lm: LoadedModel, prompts: torch.Tensor, variant: Variant | None = None,
                         new_tokens: int = 32) -> torch.Tensor:
    """(N, new_tokens) greedy continuations of the (N, P) prompts with the KV cache, one batch
    (the prompts have the same length: no padding). Every step takes the argmax, end-of-text
    included, so each row has exactly `new_tokens` tokens."""
    variant = variant or Variant.identity(lm)
    ids = prompts.to(lm.device)
    if lm.weights is not None and not lm.weights.runs_whole:
        return _greedy_without_cache(lm, ids, variant, new_tokens)
    out_tokens = []
    with variant.applied() as model:
        out = model(input_ids=ids, use_cache=True)
        for step in range(new_tokens):
            nxt = out.logits[:, -1].float().argmax(-1, keepdim=True)         # (N, 1)
            out_tokens.append(nxt)
            if step + 1 < new_tokens:
                out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(out_tokens, dim=1).cpu()


def _greedy_without_cache(lm: LoadedModel, ids: torch.Tensor, variant: Variant,
                          new_tokens: int) -> torch.Tensor:
    """`greedy_continuations` for a model whose layers stay on disk (it cannot run whole, so no
    KV cache): each new token is one full pass over the prompt and the tokens so far, through
    `run_backbone` (layer-major: one layer's weights at a time). new_tokens passes: slow on a big
    model, but the same tokens."""
    head = variant.head_module()
    out_tokens = []
    for _ in range(new_tokens):
        batches = list(run_backbone(lm, ids, variant=variant, final_norm=True,
                                    batch_size=ids.shape[0], label="greedy continuation"))
        last = batches[0].hidden[:, -1]                                          # (N, H)
        nxt = final_logits(lm, last, head=head).argmax(-1, keepdim=True)         # (N, 1)
        out_tokens.append(nxt)
        ids = torch.cat([ids, nxt.to(ids.device)], dim=1)
    return torch.cat(out_tokens, dim=1).cpu()


DEFAULT_PROMPTS = (
    "The capital of France is",
    "Photosynthesis is the process by which",
    "def fibonacci(n):",
)


def _end_tokens(lm: LoadedModel) -> set[int]:
    """The ids that end a generation: the generation config's end-of-sequence ids, else the
    model config's, else the tokenizer's."""
    gen = getattr(lm.model, "generation_config", None)
    for ids in (getattr(gen, "eos_token_id", None), getattr(lm.config, "eos_token_id", None),
                getattr(lm.tokenizer, "eos_token_id", None)):
        if ids is not None:
            return set(ids) if isinstance(ids, (list, tuple)) else {int(ids)}
    return set()


def generate(lm: LoadedModel, prompts: list[str], *, variant: Variant | None = None,
             max_new_tokens: int = 32) -> list[str]:
    """Greedy continuation of each prompt, as text, stopped at the first end-of-sequence token."""
    tok, end = lm.tokenizer, _end_tokens(lm)
    outs = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids                       # (1, P)
        new = greedy_continuations(lm, ids, variant, max_new_tokens)[0].tolist()
        stop = next((k for k, t in enumerate(new) if t in end), len(new))
        outs.append(tok.decode(new[:stop], skip_special_tokens=True))
    return outs
