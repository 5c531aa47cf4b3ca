"""Negative log-likelihoods from final hidden states: the logits (final norm, head, the model's
logit rule), the dtype they are computed in, the summed NLL of each window, and a lower bound of
it from a part of the vocabulary (the searches stop hopeless candidates with it)."""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from explorer.core.errors import ExplorerError
from explorer.core.model import DTYPES, LoadedModel



class NonFiniteError(ExplorerError):
    """The model produced NaN or inf (e.g. after an aggressive merge)."""


# Positions per chunk of the vocabulary projection + cross-entropy (1024 x 49k fp32 logits: 200 MB);
# on CPU chunks of 512-2048 ran at the same speed (the head is one GEMM per chunk either way), and
# smaller chunks keep the peak memory of a batch low.
LOGIT_CHUNK = 1024

def final_logits(lm: LoadedModel, hidden: torch.Tensor,
                 vocab: torch.Tensor | None = None, head: nn.Module | None = None
                 ) -> torch.Tensor:
    """Vocabulary logits from final-norm hidden states, with the family's logit rule (Granite's
    scaling, Cohere's scale, Gemma's soft-capping: `Architecture.logits`).

    hidden: (n, H) -> (n, V) float32, or (n, len(vocab)) for the token ids `vocab` only. Runs
    outside autocast: a bf16 head would round logits of size ~20 to steps of ~0.1, which shows
    in the NLL.
    head: the variant's head (`Variant.head_module()`); None: the loaded model's. Every caller
    that evaluates a variant passes its head.
    """
    head = head if head is not None else lm.arch.lm_head(lm.model)
    with torch.autocast(hidden.device.type, enabled=False):
        h = hidden.to(head.weight.dtype)
        if vocab is None:
            logits = head(h).float()
        else:
            bias = head.bias[vocab] if getattr(head, "bias", None) is not None else None
            logits = F.linear(h, head.weight[vocab], bias).float()
    return lm.arch.logits.apply(logits)


def compute_dtype_of(model_dtype: torch.dtype,
                     compute_dtype: str | torch.dtype | None) -> torch.dtype:
    """The dtype the layers compute in: `compute_dtype`, or the model's own for None/"auto"."""
    if compute_dtype in (None, "", "auto"):
        dt = model_dtype
    elif isinstance(compute_dtype, torch.dtype):
        dt = compute_dtype
    elif compute_dtype in DTYPES:
        dt = DTYPES[compute_dtype]
    else:
        raise ExplorerError(f"unknown compute_dtype '{compute_dtype}'; use one of: auto, "
                            + ", ".join(DTYPES))
    if dt == torch.float32 and model_dtype != torch.float32:
        raise ExplorerError(f"compute_dtype float32 needs a float32 model (this one is "
                            f"{str(model_dtype).replace('torch.', '')}): load it in float32")
    return dt


def autocast(device: torch.device, model_dtype: torch.dtype, dt: torch.dtype):
    """An autocast context for compute dtype `dt`, or a disabled one when it is the model's."""
    enabled = dt != model_dtype
    return torch.autocast(device.type, dtype=dt if enabled else torch.bfloat16, enabled=enabled)


def window_nll_sums(lm: LoadedModel, hidden: torch.Tensor, ids: torch.Tensor,
                    chunk_tokens: int = LOGIT_CHUNK, vocab: torch.Tensor | None = None,
                    head: nn.Module | None = None) -> torch.Tensor:
    """Sum of token NLL of each window: (b,) float64.

    hidden: (b, T, H) final-norm states of the windows `ids` (b, T); position t predicts t+1.
    vocab: sorted token ids holding every target: the softmax runs over those tokens only, which
        gives a lower bound of the NLL (`window_nll_lower_bounds`).
    head: the variant's vocabulary head (`final_logits`; None: the loaded model's).
    """
    b, T, H = hidden.shape
    h = hidden[:, :-1].reshape(-1, H)                                    # (b*(T-1), H)
    targets = ids[:, 1:].reshape(-1)                                     # (b*(T-1),)
    if vocab is not None:
        targets = torch.searchsorted(vocab, targets.to(vocab.device))   # columns in the subset
    per_token = torch.empty(targets.numel(), dtype=torch.float64, device=h.device)
    for s in range(0, h.shape[0], chunk_tokens):
        logits = final_logits(lm, h[s:s + chunk_tokens], vocab, head)    # (chunk, V) fp32
        per_token[s:s + chunk_tokens] = F.cross_entropy(
            logits, targets[s:s + chunk_tokens], reduction="none")
    return per_token.view(b, T - 1).sum(dim=1)


def window_nll_lower_bounds(lm: LoadedModel, hidden: torch.Tensor, ids: torch.Tensor,
                            vocab: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
    """A lower bound of each window's NLL sum, (b,) float64, from the logits of the token ids
    `vocab` only (sorted, and holding every target of `ids`).

    A token's NLL is logsumexp(z) - z_target over the whole vocabulary; the logsumexp over a
    subset that contains the target is smaller, so this is a lower bound, and a tight one when
    the subset holds most of the probability mass. Its cost is len(vocab) / V of the head's
    (how tight it is on a real model: docs/search.md).
    """
    targets = ids[:, 1:].reshape(-1).to(vocab.device)
    at = torch.searchsorted(vocab, targets).clamp(max=len(vocab) - 1)
    if not bool((vocab[at] == targets).all()):
        raise ExplorerError("the vocabulary of a lower bound must hold every target token")
    return window_nll_sums(lm, hidden, ids, vocab=vocab, head=head)
