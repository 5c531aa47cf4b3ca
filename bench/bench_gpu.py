"""GPU benchmarks: perplexity throughput and model FLOP utilisation (MFU), probe and variants.

Needs CUDA; without it `run` returns one row saying so (and `python bench/bench_gpu.py` prints it),
so the CPU benchmark set and the tests never fail on a machine without a GPU. No GPU figure in
RESULTS.md comes from anywhere but a run of this file.

Models (each a folder loaded by `load_model`, in bf16 on the GPU):
  - the largest embedded model, Qwen2.5-Coder-0.5B, when its package is installed; otherwise
    (the lent GPU machines reach no package registry and its weights are too big to carry there)
    random weights in its exact shape (`QWEN25_05B`), labelled as such: same FLOPs, same speed;
  - a random-initialised 1B-class Llama (`LLAMA_1B`: 16 layers, hidden 2048, MLP 8192, 32 heads /
    8 KV heads, vocab 32000: Llama-3.2-1B's shape with a smaller vocabulary).
Random models are written by tests/tiny.py's `make_tiny_model` (the builder of the tests' tiny
models, here with full-size shapes) with its byte tokenizer, so no download is needed anywhere.
Random weights give a meaningless perplexity but the same speed.

Text: the bundled wiki text; where gensim is missing (the GPU machines) its cached JSON can be
carried with LAYER_EXPLORER_CACHE, else the repository's own Markdown files stand in (`bench_text`).

Ours is timed through `perplexity(lm, text)`, whose token ids are cached after the warm-up call
(tokenizing 65k tokens took 0.1-0.4 s, as long as the GPU's forward pass; see explorer/core/tokens.py).

MFU of the perplexity pass, as in nanoGPT's `estimate_mfu` (which follows the PaLM paper,
arXiv 2204.02311, appendix B):
    FLOPs per token  = 2 N  (forward only; N = parameters a token passes through, i.e. every
                       matrix including the vocabulary head, embeddings lookup excluded)
                     + 2 x n_layers x seqlen x d_attn  (attention scores and weighted sum, on
                       average over positions with causal masking: 4 x L x T x d / 2)
    MFU              = FLOPs per token x tokens/s / peak bf16 dense FLOP/s of the GPU.
Peaks (dense bf16, no sparsity) come from the vendors' data sheets; unknown GPUs get no MFU.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

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
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                tie_word_embeddings=True)
# Qwen2.5-0.5B's config (Qwen2.5-Coder-0.5B has the same shape).
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  tie_word_embeddings=True, rope_theta=1e6)


def random_model(folder: Path, model_type: str, device: str = "cuda", **shape):
    """A random `model_type` model of the given config `shape`, written to `folder` in bf16 and
    loaded back with `load_model` like any user's folder (so reloading it is possible too)."""
    from explorer import load_model

    make_tiny_model = common.module_at(common.ROOT / "tests" / "tiny.py").make_tiny_model

    shape = dict(shape)
    layers = shape.pop("num_hidden_layers")
    make_tiny_model(Path(folder), model_type, num_layers=layers, dtype=torch.bfloat16,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape)
    return load_model(str(folder), device=device)


def bench_text() -> tuple[str, str, str]:
    """(evaluation, calibration, source): the wiki text, or the repo's Markdown without gensim."""
    from explorer import load_texts
    from explorer.core.errors import TextError

    try:
        t = load_texts("wiki")
        return t.evaluation, t.calibration, t.source
    except TextError:
        docs = sorted(common.ROOT.glob("*.md")) + sorted(common.ROOT.glob("*/*.md"))
        halves = ["\n\n".join(f.read_text(encoding="utf-8") for f in docs[k::2]) for k in (0, 1)]
        # repeated up to ~300k characters: enough for the largest run (256k byte tokens)
        ev, cal = (h * (1 + 300_000 // max(1, len(h))) for h in halves)
        return ev, cal, "the repository's Markdown files, repeated (gensim not installed)"


def mfu_rows(lm, text: str, label: str, *, seqlen: int, max_tokens: int, reps: int,
             batch_size: int | None, device_name: str, peak: float | None) -> list[dict]:
    """Tokens/s and MFU of ours (batched, the model's dtype) against the guide loop.

    Two baselines when the model is not fp32 (bf16 on a GPU): the guide loop on the same bf16
    model (the stronger one: MFU rows compare with it) and on an fp32 copy, as the guide is
    written and the issue defines it ("one window at a time, fp32").
    device_name, peak: the accelerator and its dense bf16 FLOP/s (None: no MFU row). The tests
    run this on the CPU with a tiny model and a made-up peak, to check the arithmetic.
    """
    from explorer.evaluate.windows import evaluation_windows
    from explorer.evaluate.perplexity import perplexity
    from explorer.core.tokens import auto_batch_size

    try:
        from . import bench_perplexity as bp
    except ImportError:
        import bench_perplexity as bp  # type: ignore[no-redef]

    w = evaluation_windows(lm, text, seqlen, max_tokens)   # the windows `perplexity` evaluates
    batch_size = batch_size or auto_batch_size(lm.device, w.shape[1])

    def ours():
        return perplexity(lm, text, seqlen=seqlen, max_tokens=max_tokens, batch_size=batch_size)

    fns = {"guide": lambda: bp.guide_loop(lm.model, w), "ours": ours}
    if lm.dtype != torch.float32:
        fp32 = copy.deepcopy(lm.model).float()
        fns["guide_fp32"] = lambda: bp.guide_loop(fp32, w)
        bp.guide_loop(fp32, w[:1])
    bp.guide_loop(lm.model, w[:1])
    perplexity(lm, text, seqlen=seqlen, max_tokens=seqlen * batch_size, batch_size=batch_size)
    times, res = common.interleaved(fns, reps=reps, warmup=0, device=lm.device)
    tokens = res["ours"].tokens
    tps = {k: tokens / common.median(v) for k, v in times.items()}
    fpt = flops_per_token(lm.model, seqlen)
    dtype = str(lm.dtype).replace("torch.", "")
    rows = [common.row(BENCH, f"{label} perplexity tok/s ({dtype})", tps["ours"], tps["guide"],
                       "tok/s", higher_is_better=True,
                       note=f"{device_name}; {w.shape[0]} windows x {seqlen}; batch "
                            f"{batch_size}; ppl {res['ours'].ppl:.4f} vs guide "
                            f"{math.exp(res['guide'][0]):.4f}; median of {reps}")]
    if "guide_fp32" in tps:
        rel = abs(res["ours"].ppl - math.exp(res["guide_fp32"][0])) / math.exp(res["guide_fp32"][0])
        rows.append(common.row(
            BENCH, f"{label} perplexity tok/s, vs the guide loop in fp32", tps["ours"],
            tps["guide_fp32"], "tok/s", higher_is_better=True,
            note=f"the HF guide as written (fp32 copy of the model); ppl {res['ours'].ppl:.4f} "
                 f"({dtype}) vs {math.exp(res['guide_fp32'][0]):.4f} (fp32): rel diff "
                 f"{rel:.1e}, {'within' if rel <= 1e-3 else 'OUTSIDE'} 1e-3"))
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


def streamed_rows(lm, text: str, label: str, *, seqlen: int, max_tokens: int, reps: int
                  ) -> list[dict]:
    """The streamed path (docs/scale.md) against the whole model on the device: the same folder
    loaded with offload="cpu" (its layers in CPU RAM, one copied to the device at a time, every
    window through it), perplexity timed alternately with the whole-model pass. Same figure;
    the ratio is whole-model time / streamed time (the cost of the host-to-device copies)."""
    from explorer import load_model
    from explorer.evaluate.perplexity import perplexity

    streamed = load_model(lm.source, device=str(lm.device), dtype=lm.dtype, offload="cpu")
    kw = dict(seqlen=seqlen, max_tokens=max_tokens, cache=False)
    times, res = common.interleaved({"whole": lambda: perplexity(lm, text, **kw),
                                     "streamed": lambda: perplexity(streamed, text, **kw)},
                                    reps=reps, warmup=1, device=lm.device)
    tw, rw, ts, rs = times["whole"], res["whole"], times["streamed"], res["streamed"]
    diff = abs(rs.ppl - rw.ppl) / rw.ppl
    return [common.row(BENCH, f"{label}: perplexity, layers streamed from CPU RAM vs whole "
                       "model on the device", common.median(ts), common.median(tw), "s",
                       higher_is_better=False, note=f"{rw.tokens} tokens; relative difference {diff:.1e}; whole "
                            f"{common.spread(tw)} s, streamed {common.spread(ts)} s")]


def run(quick: bool = True, *, device: str = "cuda", embedded: str = LARGEST_EMBEDDED,
        shapes: tuple[dict, dict] = (QWEN25_05B, LLAMA_1B), seqlen: int | None = None
        ) -> list[dict]:
    """GPU rows, or one row saying that there is no CUDA device.

    The keywords exist for tests/test_bench_gpu_math.py, which runs this whole flow on the CPU
    with tiny shapes: the embedded model (else a random model of shapes[0]) and shapes[1].
    """
    if device == "cuda" and not torch.cuda.is_available():
        return [common.row(BENCH, "GPU benchmarks skipped", None, None, "-",
                           higher_is_better=True,
                           note="no CUDA device on this machine: run `python -m explorer bench "
                                "--only gpu` on a GPU machine to fill bench/RESULTS.md")]
    from explorer import load_model

    try:
        from . import bench_probe, bench_variant
    except ImportError:
        import bench_probe  # type: ignore[no-redef]
        import bench_variant  # type: ignore[no-redef]

    evaluation, calibration, source = bench_text()
    seqlen = seqlen or (1024 if quick else 2048)
    max_tokens = seqlen * (64 if quick else 128)      # 4 (8) batches of the 16k-token budget
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    sizes = dict(seqlen=seqlen, max_tokens=max_tokens, reps=3 if quick else 5, batch_size=None,
                 device_name=name, peak=peak_flops(name))
    rows: list[dict] = [common.row(BENCH, "text", None, None, "-", higher_is_better=True,
                                   note=source)]
    with tempfile.TemporaryDirectory(prefix="lx-bench-gpu-") as tmp:
        try:
            lm, label = load_model(embedded, device=device), embedded
        except Exception as exc:  # noqa: BLE001 - the package is not installed here
            lm = random_model(Path(tmp) / "qwen", "qwen2", device, **shapes[0])
            label = "random Qwen2.5-0.5B shape"
            rows.append(common.row(BENCH, f"{embedded} not loaded", None, None, "-",
                                   higher_is_better=True,
                                   note=f"{str(exc)[:150]}; random weights in its shape instead"))
        rows += mfu_rows(lm, evaluation, label, **sizes)
        rows += [dict(r, bench=BENCH) for r in bench_probe.run(quick, lm=lm, text=calibration)]
        rows += [dict(r, bench=BENCH) for r in bench_variant.run(quick, lm=lm)]
        del lm
        if device == "cuda":
            torch.cuda.empty_cache()
        big = random_model(Path(tmp) / "llama", "llama", device, **shapes[1])
        rows += mfu_rows(big, evaluation, "random-llama-1b", **sizes)
        rows += streamed_rows(big, evaluation, "random-llama-1b", reps=sizes["reps"],
                              seqlen=seqlen, max_tokens=max_tokens)
    if device == "cuda":
        rows.append(common.row(BENCH, "peak GPU memory", torch.cuda.max_memory_allocated() / 2**30,
                               None, "GiB", higher_is_better=False, note=name))
    return rows


if __name__ == "__main__":
    common.main(run)
