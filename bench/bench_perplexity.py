"""Perplexity: `explorer.evaluate.perplexity.perplexity` against the plain loop of the Hugging Face guide.

Baseline: "Perplexity of fixed-length models" (huggingface.co/docs/transformers/perplexity), with
stride = seqlen (non-overlapping windows): one window at a time through the whole model in the
model's own dtype (fp32 on CPU), `model(input_ids, labels=input_ids)`, so transformers builds the
full (1, T, V) fp32 logits and computes the loss itself; NLL sum = loss x (T - 1).

Ours: the same windows (same text, seqlen and BOS rule), batched through the backbone only
(`auto_batch_size`: 512 tokens per pass on CPU), with the vocabulary projection and cross-entropy
on chunks of positions, under inference_mode, in the model's dtype (the default, exact path).
At the longest window length it is also timed once with `compute_dtype="bfloat16"` (autocast: the
big matrix products in bf16, the residual stream, norms, head and loss in fp32).

Window lengths: quick 128 and 512 (2048 tokens each, 3 rounds), full 128, 256 (the app's), 512 and
1024 (4096 tokens each, 5 rounds). Batching pays on short windows, whose batch-1 products have
few rows; at 512 tokens and more a single window already fills the CPU's matrix kernels, and both
sides spend ~75% of their time in the same fp32 products (a profile: aten::mm 74%, SDPA 16%).

Our timing includes the call's whole path (`perplexity` takes text); its token ids come from
`explorer.core.tokens`' cache of recent texts after the warm-up call, as in the app, where every Apply
evaluates the same text. The guide loop gets ready windows. Both report tokens/s = predicted tokens / wall seconds, and the two perplexities
must agree to 1e-3 relative (the row's note says how far apart they are).

FLOPs per predicted token ~ 2 x N (N = parameters touched per token: every weight matrix once,
Kaplan et al. 2020, arXiv 2001.08361, eq. 2.1 without the attention term), so tok/s x 2N is the
achieved FLOP/s; bench_gpu.py turns that into model FLOP utilisation.
"""

from __future__ import annotations

import math

import torch

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "perplexity"


@torch.no_grad()
def guide_loop(model: torch.nn.Module, windows: torch.Tensor) -> tuple[float, int]:
    """(mean NLL, predicted tokens) the way the Hugging Face guide computes it, stride = seqlen.

    windows: (W, T) token ids; each row goes through the model alone with labels = input_ids.
    """
    device = next(model.parameters()).device
    nll_sum, count = 0.0, 0
    for i in range(windows.shape[0]):
        input_ids = windows[i:i + 1].to(device)            # (1, T)
        loss = model(input_ids, labels=input_ids.clone()).loss  # mean over T-1 shifted targets
        n = input_ids.shape[1] - 1
        nll_sum += loss.item() * n
        count += n
    return nll_sum / count, count


def compare(lm, text: str, *, seqlen: int, max_tokens: int, reps: int, source: str,
            label: str, bf16: bool) -> list[dict]:
    """Rows for one model and window length: tokens/s of ours against the guide loop.

    bf16: also time `compute_dtype="bfloat16"` once (after the interleaved rounds: on CPUs
    without native bf16 it is slow, so it is not repeated).
    """
    from explorer.evaluate.windows import evaluation_windows
    from explorer.evaluate.perplexity import perplexity

    w = evaluation_windows(lm, text, seqlen, max_tokens)

    def ours(dtype=None):
        return perplexity(lm, text, seqlen=seqlen, max_tokens=max_tokens, source=source,
                          compute_dtype=dtype)

    # Warm-up on one window each (allocator, oneDNN kernels for this shape), then full runs,
    # interleaved so that a neighbour's burst of load hits both sides.
    guide_loop(lm.model, w[:1])
    perplexity(lm, text, seqlen=seqlen, max_tokens=seqlen)
    times, res = common.interleaved({"guide": lambda: guide_loop(lm.model, w), "ours": ours},
                                    reps=reps, warmup=0, device=lm.device)
    g_nll, g_tokens = res["guide"]
    exact = res["ours"]
    assert exact.tokens == g_tokens, (exact.tokens, g_tokens)
    g_ppl = math.exp(g_nll)
    tps = {k: g_tokens / common.median(v) for k, v in times.items()}
    spreads = {k: common.spread([g_tokens / t for t in v]) for k, v in times.items()}
    rel = abs(exact.ppl - g_ppl) / g_ppl
    prot = f"{w.shape[0]} windows x {seqlen}, {g_tokens} predicted tokens, median of {reps}"
    rows = [common.row(BENCH, f"{label} tok/s, seqlen {seqlen}, exact "
                              f"({str(lm.dtype).replace('torch.', '')})",
                       tps["ours"], tps["guide"], "tok/s", higher_is_better=True,
                       note=f"{prot}; ppl {exact.ppl:.4f} vs guide {g_ppl:.4f} (rel diff "
                            f"{rel:.1e}); spread ours {spreads['ours']}, guide {spreads['guide']}")]
    if bf16:
        ours("bfloat16")                                   # warm-up of the bf16 kernels
        dt, fast = common.time_once(lambda: ours("bfloat16"), lm.device)
        rel16 = abs(fast.ppl - g_ppl) / g_ppl
        rows.append(common.row(
            BENCH, f"{label} tok/s, seqlen {seqlen}, compute_dtype=bf16", g_tokens / dt,
            tps["guide"], "tok/s", higher_is_better=True,
            note=f"one run; ppl {fast.ppl:.4f} vs guide {g_ppl:.4f} (rel diff {rel16:.2e}, "
                 f"{'within' if rel16 <= 1e-3 else 'OUTSIDE'} 1e-3)"))
    return rows


def run(quick: bool = True, model: str = common.DEFAULT_MODEL, lm=None, text: str | None = None,
        seqlens: tuple[int, ...] | None = None) -> list[dict]:
    """Perplexity rows for `model` (or a ready `lm` with `text`, as the smoke test passes).

    Several window lengths, because batching pays most on short windows: a (1, 128) window
    gives the matrix products only 128 rows, a batch of 4 gives them 512.
    """
    from explorer import load_model, load_texts

    source = "text"
    if lm is None:
        lm = load_model(model)
    if text is None:
        texts = load_texts("wiki")
        text, source = texts.evaluation, texts.source
    seqlens = seqlens or ((128, 512) if quick else (128, 256, 512, 1024))
    max_tokens = 2048 if quick else 4096
    label = lm.spec if len(lm.spec) < 30 else "model"
    rows = []
    for seqlen in seqlens:
        rows += compare(lm, text, seqlen=seqlen, max_tokens=max(max_tokens, 2 * seqlen),
                        reps=3 if quick else 5, source=source, label=label,
                        bf16=seqlen == max(seqlens))
    rows.append(common.row(BENCH, f"{lm.spec} load time", lm.load_seconds, None, "s",
                           higher_is_better=False,
                           note=f"load_model (converted safetensors cache); peak RSS of the "
                                f"bench process {common.peak_rss_mb():.0f} MiB"))
    return rows


if __name__ == "__main__":
    common.main(run)
