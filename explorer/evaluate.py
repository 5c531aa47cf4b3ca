"""Stage 6, evaluate: perplexity with an explicit protocol, and greedy generations.

Protocol (../shared/METHODS.md, reported with every figure): the evaluation documents joined with
"\n\n" are tokenized once without special tokens, cut into non-overlapping windows of `seqlen`
tokens (a BOS token in front of each when the BOS rule says so), and
    PPL = exp( mean over every predicted token of -log p(token | window prefix) ).
A window of T text tokens predicts T-1 of them (T with BOS in front).

Speed: windows run in batches through the backbone only (`backbone.run_backbone`: no hidden
states kept, no KV cache, torch.no_grad), sized by a token budget per forward pass (BATCH_TOKENS); the vocabulary
projection and the cross-entropy run on chunks of positions, so the (batch x seqlen x vocab)
logits tensor is never materialised whole (49k vocab x 8 x 512 in fp32 would be 800 MB).
`compute_dtype="bfloat16"` runs the layers' matrix products under bf16 autocast (residual stream,
norms, head and loss stay in fp32); the perplexity moves by ~1e-3 relative on SmolLM2. It only
pays on CPUs with native bf16 (AVX512-BF16, AMX): on an AVX2-only CPU it was 2.5-5x *slower* than
fp32 (bench/RESULTS.md), so the default keeps the model's own dtype, the exact figure. On CUDA
the model is already loaded in bf16 (`load_model`).

Cost: FLOPs per predicted token ~ 2 x N, N = the parameters a token passes through (every weight
matrix once, vocabulary head included; Kaplan et al. 2020, arXiv 2001.08361, eq. 2.1), plus
attention scores 2 x n_layers x seqlen x d_attn, small at seqlen 512.

Example:
    >>> r = perplexity(lm, load_texts("wiki").evaluation, seqlen=512, max_tokens=4096)
    >>> round(r.ppl, 1), r.tokens
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .errors import ExplorerError, TextError
from .load import DTYPES, LoadedModel, Progress
from .backbone import run_backbone
from .tokens import auto_batch_size, tokenize, use_bos, windows
from .variant import Variant


@dataclass(frozen=True)
class PPLResult:
    """A perplexity figure and the protocol that produced it."""

    ppl: float
    nll: float           # mean negative log-likelihood per predicted token (nats)
    tokens: int          # predicted tokens
    windows: int
    seqlen: int          # text tokens per window
    bos: bool            # whether each window started with BOS
    source: str          # name of the text source
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def protocol(self) -> str:
        return (f"{self.source}: {self.windows} non-overlapping windows of {self.seqlen} tokens"
                f"{' + BOS' if self.bos else ''}, {self.tokens} predicted tokens, "
                "PPL = exp(mean NLL)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["protocol"] = self.protocol()
        return d


class NonFiniteError(ExplorerError):
    """The model produced NaN or inf (e.g. after an aggressive merge)."""


# Positions per chunk of the vocabulary projection + cross-entropy (1024 x 49k fp32 logits: 200 MB);
# on CPU chunks of 512-2048 ran at the same speed (the head is one GEMM per chunk either way), and
# smaller chunks keep the peak memory of a batch low.
LOGIT_CHUNK = 1024

def _final_logits(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits from final-norm hidden states, with the family's soft-capping if any.

    hidden: (n, H) -> (n, V) float32. Runs outside autocast: a bf16 head would round logits of
    size ~20 to steps of ~0.1, which shows in the NLL.
    """
    head = lm.arch.lm_head(lm.model)
    with torch.autocast(hidden.device.type, enabled=False):
        logits = head(hidden.to(head.weight.dtype)).float()
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _autocast(device: torch.device, model_dtype: torch.dtype,
              compute_dtype: str | torch.dtype | None):
    """An autocast context for `compute_dtype`, or a disabled one when it is the model's dtype."""
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
    enabled = dt != model_dtype
    return torch.autocast(device.type, dtype=dt if enabled else torch.bfloat16, enabled=enabled)


def token_nll(lm: LoadedModel, hidden: torch.Tensor, ids: torch.Tensor,
              chunk_tokens: int = LOGIT_CHUNK) -> tuple[float, int]:
    """Sum of token NLL and count of predicted tokens for a batch of windows.

    hidden: (b, T, H) final-norm states of the windows `ids` (b, T); position t predicts t+1.
    """
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])                    # (b*(T-1), H)
    targets = ids[:, 1:].reshape(-1)                                    # (b*(T-1),)
    total = torch.zeros((), dtype=torch.float64, device=h.device)
    for s in range(0, h.shape[0], chunk_tokens):
        logits = _final_logits(lm, h[s:s + chunk_tokens])               # (chunk, V) fp32
        total += F.cross_entropy(logits, targets[s:s + chunk_tokens], reduction="sum")
    return total.item(), targets.numel()


def evaluation_windows(lm: LoadedModel, text: str, seqlen: int, max_tokens: int | None,
                       bos: str = "auto") -> torch.Tensor:
    """(W, seqlen [+1 with BOS]) windows of `text` under the protocol above: what `perplexity`
    evaluates (the benchmarks give the same windows to their baselines)."""
    ctx = getattr(lm.config, "max_position_embeddings", None)
    with_bos = use_bos(lm.tokenizer, bos, lm.arch.needs_bos)
    if ctx and seqlen + int(with_bos) > ctx:
        raise TextError(f"seqlen {seqlen} is longer than the model's context of {ctx} tokens")
    ids = tokenize(lm.tokenizer, text, max_tokens=max_tokens)
    return windows(ids, seqlen, bos_id=lm.tokenizer.bos_token_id if with_bos else None)


def perplexity(lm: LoadedModel, text: str, *, variant: Variant | None = None, seqlen: int = 512,
               max_tokens: int | None = 16384, batch_size: int | None = None, bos: str = "auto",
               source: str = "text", progress: Progress | None = None,
               compute_dtype: str | torch.dtype | None = None) -> PPLResult:
    """Perplexity of the model (or of `variant`) on `text` under the protocol above.

    max_tokens: evaluate at most this many text tokens (None: the whole text).
    batch_size: windows per forward pass (None: `auto_batch_size`, from the device's budget).
    compute_dtype: None/"auto" (default) runs in the model's dtype, the exact figure;
        "bfloat16" runs the decoder layers under bf16 autocast (faster on CPU, the value moves
        by ~1e-3 relative; the head and the loss stay in fp32).
    """
    w = evaluation_windows(lm, text, seqlen, max_tokens, bos)
    batch_size = batch_size or auto_batch_size(lm.device, w.shape[1])
    variant = variant or Variant.identity(lm)
    cast = _autocast(lm.device, lm.dtype, compute_dtype)
    start = time.perf_counter()
    total, count = 0.0, 0
    with cast:
        for batch in run_backbone(lm, w, variant=variant, final_norm=True,
                                  batch_size=batch_size):
            nll, n = token_nll(lm, batch.hidden, batch.ids)
            total += nll
            count += n
            if progress:   # the running figure: the user watches it settle as windows come in
                done = batch.rows.stop
                running = math.exp(min(total / count, 700.0))
                progress(done / w.shape[0],
                         f"perplexity: {done}/{w.shape[0]} windows, {running:.4g} so far")
    mean = total / count
    if not math.isfinite(mean):
        raise NonFiniteError("the model produced NaN or inf on the evaluation text: this "
                             "variant is broken (try merging fewer or other layers)")
    return PPLResult(ppl=math.exp(mean), nll=mean, tokens=count, windows=w.shape[0],
                     seqlen=seqlen, bos=w.shape[1] > seqlen, source=source,
                     seconds=time.perf_counter() - start)


@torch.no_grad()
def generate(lm: LoadedModel, prompts: list[str], *, variant: Variant | None = None,
             max_new_tokens: int = 32) -> list[str]:
    """Greedy continuations of each prompt (perplexity alone can hide a loss of capability)."""
    variant = variant or Variant.identity(lm)
    tok = lm.tokenizer
    outs = []
    with variant.applied() as model:
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt").input_ids.to(lm.device)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            outs.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return outs
