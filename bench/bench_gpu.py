"""GPU benchmarks: perplexity throughput and model FLOP utilisation (MFU), probe and variants.

Needs CUDA; without it `run` returns one row saying so (and `python bench/bench_gpu.py` prints it),
so the CPU benchmark set and the tests never fail on a machine without a GPU. No GPU figure in
RESULTS.md comes from anywhere but a run of this file.

Models:
  - the largest embedded model (Qwen2.5-Coder-0.5B, loaded in bf16 on the GPU by `load_model`);
  - a random-initialised 1B-class Llama built here from a config (no download): 16 layers,
    hidden 2048, MLP 8192, 32 heads / 8 KV heads, vocab 32000 (Llama-3.2-1B's shape with a
    smaller vocabulary), bf16. Random weights give a meaningless perplexity but the same speed.

MFU of the perplexity pass, as in nanoGPT's `estimate_mfu` (which follows the PaLM paper,
arXiv 2204.02311, appendix B):
    FLOPs per token  = 2 N  (forward only; N = parameters a token passes through, i.e. every
                       matrix including the vocabulary head, embeddings lookup excluded)
                     + 2 x n_layers x seqlen x d_model  (attention scores and weighted sum, on
                       average over positions with causal masking: 4 x L x T x d / 2)
    MFU              = FLOPs per token x tokens/s / peak bf16 dense FLOP/s of the GPU.
Peaks (dense bf16, no sparsity) come from the vendors' data sheets; unknown GPUs get no MFU.
"""

from __future__ import annotations

import math
import time

import torch

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "gpu"

# Dense bf16 tensor-core peaks in FLOP/s (vendor data sheets, without 2:4 sparsity).
PEAK_BF16 = {
    "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H200": 989e12, "H100 PCIe": 756e12,
    "H100 NVL": 835e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12,
}

LARGEST_EMBEDDED = "qwen2.5-coder-0.5b"


def peak_flops(device_name: str) -> float | None:
    """The bf16 dense peak of a GPU from its name (longest matching key), or None."""
    hits = [k for k in PEAK_BF16 if k.lower() in device_name.lower()]
    return PEAK_BF16[max(hits, key=len)] if hits else None


def flops_per_token(model: torch.nn.Module, seqlen: int) -> float:
    """2 N + 2 L T d: forward FLOPs per predicted token (see the module docstring).

    d is the attention width, heads x head_dim (the hidden size, except in e.g. Gemma)."""
    cfg = model.config
    # Weight matrices only: norm scales and biases are element-wise work, not 2 FLOPs per weight
    # (tests/test_bench_gpu_math.py checks this against torch's FLOP counter).
    n = sum(p.numel() for name, p in model.named_parameters()
            if p.dim() >= 2 and "embed_tokens" not in name)
    if getattr(cfg, "tie_word_embeddings", False):
        n += model.get_output_embeddings().weight.numel()   # the head reuses the embeddings
    heads = cfg.num_attention_heads
    d_attn = heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)  # Gemma: != d
    return 2.0 * n + 2.0 * cfg.num_hidden_layers * seqlen * d_attn


LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096)


def random_llama(device: str = "cuda", **shape):
    """A LoadedModel around a random Llama (bf16) and a byte tokenizer; no download.

    shape: LlamaConfig fields over LLAMA_1B and SDPA attention (the tests build a tiny one on
    the CPU, with eager attention where they count FLOPs).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from explorer.arch import adapter_for
    from explorer.load import LoadedModel

    cfg = LlamaConfig(**{**LLAMA_1B, "attn_implementation": "sdpa", **shape},
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.eval().requires_grad_(False)
    layers = cfg.num_hidden_layers
    return LoadedModel(model=model, tokenizer=_ids_tokenizer(), arch=adapter_for("llama"),
                       spec=f"random-llama-{layers}L" if shape else "random-llama-1b",
                       source="random init", device=torch.device(device), dtype=torch.bfloat16,
                       load_seconds=time.perf_counter() - t0)


def _ids_tokenizer():
    """A byte-level tokenizer (ids < 259 < vocab) built offline, as in tests/tiny.py."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>"] + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


def mfu_rows(lm, text: str, label: str, *, seqlen: int, max_tokens: int, reps: int,
             batch_size: int | None, device_name: str, peak: float | None) -> list[dict]:
    """Tokens/s and MFU of ours (batched, the model's dtype) against the guide loop.

    device_name, peak: the accelerator and its dense bf16 FLOP/s (None: no MFU row). The tests
    run this on the CPU with a tiny model and a made-up peak, to check the arithmetic.
    """
    from explorer.evaluate import auto_batch_size, perplexity
    from explorer.tokens import tokenize, use_bos, windows

    try:
        from . import bench_perplexity as bp
    except ImportError:
        import bench_perplexity as bp  # type: ignore[no-redef]

    ids = tokenize(lm.tokenizer, text, max_tokens=max_tokens)
    bos = lm.tokenizer.bos_token_id if use_bos(lm.tokenizer, "auto", lm.arch.needs_bos) else None
    w = windows(ids, seqlen, bos_id=bos)                  # the same windows `perplexity` builds

    batch_size = batch_size or auto_batch_size(lm.device, w.shape[1])

    def ours():
        return perplexity(lm, text, seqlen=seqlen, max_tokens=max_tokens, batch_size=batch_size)

    bp.guide_loop(lm.model, w[:1])
    perplexity(lm, text, seqlen=seqlen, max_tokens=seqlen * batch_size, batch_size=batch_size)
    times, res = common.interleaved({"guide": lambda: bp.guide_loop(lm.model, w), "ours": ours},
                                    reps=reps, warmup=0, device=lm.device)
    tokens = res["ours"].tokens
    tps = {k: tokens / common.median(v) for k, v in times.items()}
    fpt = flops_per_token(lm.model, seqlen)
    dtype = str(lm.dtype).replace("torch.", "")
    rows = [common.row(BENCH, f"{label} perplexity tok/s ({dtype})", tps["ours"], tps["guide"],
                       "tok/s", higher_is_better=True,
                       note=f"{device_name}; {w.shape[0]} windows x {seqlen}; batch "
                            f"{batch_size}; ppl {res['ours'].ppl:.4f} vs guide "
                            f"{math.exp(res['guide'][0]):.4f}; median of {reps}")]
    if peak:
        rows.append(common.row(BENCH, f"{label} MFU of the perplexity pass",
                               100 * fpt * tps["ours"] / peak, 100 * fpt * tps["guide"] / peak,
                               "%", higher_is_better=True,
                               note=f"(2N + 2 L T d) = {fpt / 1e9:.2f} GFLOP/token, peak "
                                    f"{peak / 1e12:.0f} TFLOP/s bf16 dense ({device_name})"))
    else:
        rows.append(common.row(BENCH, f"{label} MFU", None, None, "%", higher_is_better=True,
                               note=f"no known bf16 peak for '{device_name}': add it to "
                                    "PEAK_BF16"))
    return rows


def run(quick: bool = True) -> list[dict]:
    """GPU rows, or one row saying that there is no CUDA device."""
    if not torch.cuda.is_available():
        return [common.row(BENCH, "GPU benchmarks skipped", None, None, "-",
                           higher_is_better=True,
                           note="no CUDA device on this machine: run `python -m explorer bench "
                                "--only gpu` on a GPU machine to fill bench/RESULTS.md")]
    from explorer import load_model, load_texts

    try:
        from . import bench_probe, bench_variant
    except ImportError:
        import bench_probe  # type: ignore[no-redef]
        import bench_variant  # type: ignore[no-redef]

    texts = load_texts("wiki")
    seqlen = 1024 if quick else 2048
    max_tokens = seqlen * (64 if quick else 128)      # 4 (8) batches of the 16k-token budget
    name = torch.cuda.get_device_name(0)
    sizes = dict(seqlen=seqlen, max_tokens=max_tokens, reps=3 if quick else 5, batch_size=None,
                 device_name=name, peak=peak_flops(name))
    rows: list[dict] = []
    try:
        lm = load_model(LARGEST_EMBEDDED, device="cuda")
    except Exception as exc:  # noqa: BLE001 - the package may not be installed
        rows.append(common.row(BENCH, f"{LARGEST_EMBEDDED} not loaded", None, None, "-",
                               higher_is_better=True, note=str(exc)[:200]))
    else:
        rows += mfu_rows(lm, texts.evaluation, LARGEST_EMBEDDED, **sizes)
        rows += [dict(r, bench=BENCH) for r in bench_probe.run(quick, lm=lm,
                                                                text=texts.calibration)]
        rows += [dict(r, bench=BENCH) for r in bench_variant.run(quick, lm=lm)]
        del lm
        torch.cuda.empty_cache()
    big = random_llama()
    rows += mfu_rows(big, texts.evaluation, big.spec, **sizes)
    rows.append(common.row(BENCH, "peak GPU memory", torch.cuda.max_memory_allocated() / 2**30,
                           None, "GiB", higher_is_better=False,
                           note=torch.cuda.get_device_name(0)))
    return rows


if __name__ == "__main__":
    common.main(run)
