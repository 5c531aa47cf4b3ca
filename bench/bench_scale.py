"""Layer-major execution (explorer/core/stream.py, docs/scale.md): the default model streamed against in
memory, and a ~7B Llama-shape model larger than this machine's memory in fp32, streamed from disk.

Rows:
  - `default streamed vs in memory`: perplexity of SmolLM2-135M-Instruct (Q4_1) on the wiki text with the whole
    model in memory (batch-major, today's path) and loaded with offload="disk" (no layer in RAM,
    each read from the converted safetensors folder when the pass reaches it), timed alternately
    in one run; the values must be equal (the note gives the relative difference). The ratio is
    in-memory time / streamed time (> 1: streaming is faster). A probe row likewise.
  - `7B streamed` (`--big FOLDER`, not in the quick set): a Llama config scaled to ~6.7B
    parameters (hidden 4096, 32 layers, MLP 11008, 32 heads, vocab 32000: Llama-2-7B's shape)
    with random bf16 weights written once as safetensors shards (`--write-big FOLDER`, ~13 GB);
    fp32 it would need 27 GB, more than the 24 GB of this machine. It is loaded with
    offload="disk" in fp32, probed on 8 windows of 128 tokens, and a variant with 8 layers
    dropped is evaluated (perplexity, 8 x 128 tokens). Reported: peak RSS of the process, wall
    time per layer, and the time a real 8B model would take on one GPU, projected from the
    FLOPs of one layer (see `project_gpu`).

  - `sessions` (`--sessions`): the web app launched in this process with its default sizes,
    driven by two gradio_client sessions (two browser tabs). (a) Session B's analysis (probe and
    profiles) alone, then again while session A's Apply (two perplexities) is running: B must
    finish before A, with the same figures. Under the lock measuring took before issue 21, B
    would have waited for A's Apply to end. (b) Two Applies of different plans at once against
    one after the other: both finish, their figures equal the serial ones, and the total wall
    time of each way is reported. The caches are cleared before each timed call.

Random weights give a meaningless perplexity but the same FLOPs and memory traffic.

    python bench/bench_scale.py                         # the default-model rows
    python bench/bench_scale.py --write-big /work/bigmodel/llama7b
    python bench/bench_scale.py --big /work/bigmodel/llama7b --threads 2
    python bench/bench_scale.py --sessions              # two app sessions at once
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

# Llama-2-7B's shape (hidden 4096, 32 layers, MLP 11008, 32 heads, vocab 32000).
BIG = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008,
           num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
           max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
           bos_token_id=1, eos_token_id=2, pad_token_id=0)
# Llama-3-8B for the GPU projection (hidden 4096, 32 layers, MLP 14336, 8 KV heads, vocab 128256).
LLAMA3_8B = dict(hidden=4096, layers=32, inter=14336, heads=32, kv_heads=8, vocab=128256)


def write_big_model(folder: Path, layers_per_shard: int = 2, seed: int = 0) -> Path:
    """Write the ~7B random Llama as bf16 safetensors shards with an index, one shard at a time
    (peak memory: one shard, ~0.8 GB). Weights ~ N(0, 0.02) as transformers initialises them,
    norms 1."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**BIG)
    cfg.dtype = "bfloat16"
    H, I, V, L = BIG["hidden_size"], BIG["intermediate_size"], BIG["vocab_size"], \
        BIG["num_hidden_layers"]
    kv = H // BIG["num_attention_heads"] * BIG["num_key_value_heads"]
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    def layer(i: int) -> dict[str, torch.Tensor]:
        p = f"model.layers.{i}."
        return {p + "self_attn.q_proj.weight": rand(H, H), p + "self_attn.k_proj.weight": rand(kv, H),
                p + "self_attn.v_proj.weight": rand(kv, H), p + "self_attn.o_proj.weight": rand(H, H),
                p + "mlp.gate_proj.weight": rand(I, H), p + "mlp.up_proj.weight": rand(I, H),
                p + "mlp.down_proj.weight": rand(H, I),
                p + "input_layernorm.weight": torch.ones(H, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(H, dtype=torch.bfloat16)}

    groups = [[("embed", None)]] + [[("layer", i) for i in range(s, min(L, s + layers_per_shard))]
                                    for s in range(0, L, layers_per_shard)] + [[("head", None)]]
    weight_map: dict[str, str] = {}
    total = 0
    for n, group in enumerate(groups):
        name = f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for kind, i in group:
            if kind == "embed":
                tensors["model.embed_tokens.weight"] = rand(V, H)
            elif kind == "head":
                tensors["lm_head.weight"] = rand(V, H)
                tensors["model.norm.weight"] = torch.ones(H, dtype=torch.bfloat16)
            else:
                tensors.update(layer(i))
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update({k: name for k in tensors})
        print(f"wrote {name} ({total / 2**30:.1f} GiB so far)", flush=True)
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg.save_pretrained(folder)
    common.module_at(common.ROOT / "tests" / "tiny.py").byte_tokenizer().save_pretrained(folder)
    return folder


def layer_flops_per_token(hidden: int, inter: int, heads: int, kv_heads: int, seqlen: int) -> float:
    """Forward FLOPs of one Llama decoder layer per token: 2 x its matrix parameters (q, k, v, o
    and the gated MLP's three matrices) plus the attention scores and weighted sum, 2 x seqlen x
    hidden on average over causal positions (4 x T x d / 2)."""
    head_dim = hidden // heads
    params = 2 * hidden * hidden + 2 * hidden * head_dim * kv_heads + 3 * hidden * inter
    return 2 * params + 2 * seqlen * hidden


def project_gpu(tokens: int, seqlen: int, peak_tflops: float = 989.0, mfu: float = 0.4,
                h2d_gbps: float = 25.0) -> dict:
    """Seconds for one pass of `tokens` tokens through a real Llama-3-8B on one GPU, layer-major
    with its bf16 layers streamed from CPU RAM: per layer max(compute, transfer), compute = the
    layer's FLOPs / (peak x MFU) and transfer = its bytes / host-to-device bandwidth (an H100
    SXM's dense bf16 peak, 989 TFLOP/s, at 40% MFU, and PCIe 5 at ~25 GB/s by default; all three
    are assumptions, stated with the figure)."""
    c = LLAMA3_8B
    flops = layer_flops_per_token(c["hidden"], c["inter"], c["heads"], c["kv_heads"], seqlen) \
        * tokens
    head_dim = c["hidden"] // c["heads"]
    layer_bytes = 2 * (2 * c["hidden"] ** 2 + 2 * c["hidden"] * head_dim * c["kv_heads"]
                       + 3 * c["hidden"] * c["inter"])
    compute = flops / (peak_tflops * 1e12 * mfu)
    transfer = layer_bytes / (h2d_gbps * 1e9)
    per_layer = max(compute, transfer)
    return {"per_layer_s": per_layer, "total_s": per_layer * c["layers"],
            "resident_total_s": compute * c["layers"],
            "compute_s": compute, "transfer_s": transfer, "layer_gflop": flops / 1e9}


# -- the rows ---------------------------------------------------------------------------------

def default_rows(quick: bool = True, lm=None) -> list[dict]:
    """SmolLM2-135M-Instruct (Q4_1): perplexity and probe, streamed from its safetensors folder vs in memory."""
    from explorer import load_model
    from explorer.evaluate.perplexity import perplexity
    from explorer.probe.probe import probe
    from explorer.probe.text import load_texts

    lm = lm or load_model("smollm2-135m")
    streamed = load_model(lm.source, offload="disk")
    texts = load_texts("wiki")
    max_tokens = 4096 if quick else 16384
    reps = 2 if quick else 3
    kw = dict(seqlen=512, max_tokens=max_tokens, cache=False)
    res = common.interleaved({"memory": lambda: perplexity(lm, texts.evaluation, **kw),
                              "streamed": lambda: perplexity(streamed, texts.evaluation, **kw)},
                             reps=reps, warmup=1)
    rows = [_ratio_row("perplexity, default model", res, max_tokens, lambda r: r.ppl)]
    pk = dict(seqlen=128, num_samples=16 if quick else 32)
    res = common.interleaved({"memory": lambda: probe(lm, texts.calibration, **pk),
                              "streamed": lambda: probe(streamed, texts.calibration, **pk)},
                             reps=reps, warmup=1)
    rows.append(_ratio_row("probe, default model", res, pk["num_samples"] * 128,
                           lambda r: r.states))
    return rows


def _ratio_row(name: str, timed, tokens: int, value) -> dict:
    times, results = timed
    tm, rm, ts, rs = times["memory"], results["memory"], times["streamed"], results["streamed"]
    va, vb = value(rm), value(rs)
    if isinstance(va, torch.Tensor):
        diff = float((va - vb).abs().max() / va.abs().max())
    else:
        diff = abs(va - vb) / abs(va)
    return common.row("scale", f"{name}: streamed from disk vs in memory", common.median(ts),
                      common.median(tm), "s", higher_is_better=False,
                      note=f"{tokens} tokens; max relative difference "
                      f"{diff:.1e}; in memory {common.spread(tm)} s, streamed {common.spread(ts)} s")


def big_rows(folder: Path, threads: int | None = None) -> list[dict]:
    """The ~7B model streamed from disk: probe 8 x 128 and a drop variant's perplexity."""
    from explorer import Variant, load_model
    from explorer.evaluate.perplexity import perplexity
    from explorer.probe.probe import probe
    from explorer.core.stream import layer_bytes

    if threads:
        torch.set_num_threads(threads)
    # Recorded boundaries beyond 64 MiB go to a temporary folder: the probe's 33 boundaries
    # (16 MiB each here) would otherwise sit in RAM next to the probe's own copy of them.
    os.environ.setdefault("LAYER_EXPLORER_STREAM_STATE_MB", "64")
    times: list[tuple[float, str]] = []

    def progress(frac: float, msg: str) -> None:
        times.append((time.perf_counter(), msg))
        print(f"  [{time.strftime('%H:%M:%S')}] {msg}  (peak RSS {common.peak_rss_mb():.0f} MiB)",
              flush=True)

    t0 = time.perf_counter()
    lm = load_model(str(folder), dtype="float32", offload="auto", progress=progress)
    load_s = time.perf_counter() - t0
    L = lm.num_layers
    ids = torch.randint(3, 259, (8, 128), generator=torch.Generator().manual_seed(0))
    t0, c0 = time.perf_counter(), time.process_time()
    pr = probe(lm, input_ids=ids, batch_size=8, progress=progress)
    probe_s, probe_cpu = time.perf_counter() - t0, time.process_time() - c0
    text = "".join(chr(33 + (i * 7919) % 90) for i in range(8 * 128 + 64))
    v = Variant.identity(lm).drop(list(range(L * 5 // 8, L * 7 // 8)))   # 20..27 of 32
    probe_rss = common.peak_rss_mb()
    n_boundaries = pr.states.shape[0]
    del pr                     # the probe's (L+1, N, H) result is not needed any more
    t0, c0 = time.perf_counter(), time.process_time()
    r = perplexity(lm, text, variant=v, seqlen=128, max_tokens=8 * 128, batch_size=8,
                   cache=False, progress=progress)
    ppl_s, ppl_cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = common.peak_rss_mb()
    per_layer = probe_s / L
    tokens = 8 * 128
    flops = layer_flops_per_token(BIG["hidden_size"], BIG["intermediate_size"],
                                  BIG["num_attention_heads"], BIG["num_key_value_heads"], 128)
    # CPU seconds of this process per layer, summed over its threads: on a machine shared with
    # other jobs the wall time mostly measures the others.
    cpu_per_layer = probe_cpu / L
    cpu_gflops = flops * tokens / cpu_per_layer / 1e9
    gpu = project_gpu(tokens, 128)
    fp32_gib = sum(layer_bytes(lm)) / 2**30
    note_load = (f"shared 2-core machine under load (loadavg {os.getloadavg()[0]:.1f}), "
                 f"{torch.get_num_threads()} torch threads")
    return [
        common.row("scale", "7B (random, Llama-2 shape) streamed: peak RSS", rss, None, "MiB",
                   higher_is_better=False, note=f"layers {fp32_gib:.1f} GiB in fp32, never in RAM together; load "
                        f"{load_s:.1f} s; target <= 3072 MiB; {note_load}"),
        common.row("scale", "7B streamed: probe 8 x 128, time per layer", per_layer, None, "s",
                   higher_is_better=False, note=f"wall {probe_s:.0f} s for {L} layers; CPU time {cpu_per_layer:.1f} s "
                        f"per layer ({cpu_gflops:.1f} GFLOP per CPU-second; "
                        f"{flops * tokens / 1e9:.0f} GFLOP per layer); {n_boundaries} "
                        f"boundaries recorded; peak RSS by the probe's end {probe_rss:.0f} "
                        f"MiB; {note_load}"),
        common.row("scale", f"7B streamed: perplexity of a {L * 3 // 4}-layer drop variant", ppl_s, None,
                   "s", higher_is_better=False, note=f"ppl {r.ppl:.4g} (random weights), {r.tokens} tokens, wall "
                             f"{ppl_s / v.num_layers:.1f} s, CPU {ppl_cpu / v.num_layers:.1f} s "
                             f"per layer; {note_load}"),
        common.row("scale", "projection: Llama-3-8B, 8 x 128 tokens, one GPU, layers from CPU",
                   gpu["total_s"], None, "s", higher_is_better=False,
                   note=f"per layer max(compute {gpu['compute_s'] * 1e3:.2f} ms, transfer "
                        f"{gpu['transfer_s'] * 1e3:.1f} ms): {gpu['layer_gflop']:.0f} GFLOP per "
                        "layer at 40% of an H100's 989 TFLOP/s, 0.44 GB bf16 per layer over "
                        "PCIe at 25 GB/s (assumed, not measured): transfer-bound at this size; "
                        f"with the whole model on the GPU (16 GB bf16 fits) "
                        f"{gpu['resident_total_s'] * 1e3:.0f} ms"),
    ]


def sessions_rows() -> list[dict]:
    """Two gradio_client sessions of the app launched in this process (default sizes)."""
    import tempfile
    import threading

    from gradio_client import Client

    from explorer.core import cache
    from explorer import ui
    from explorer.ui.settings import UISettings

    settings = UISettings.from_env()
    settings.output_dir = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    demo = ui.launch(settings, server_name="127.0.0.1", server_port=None,
                     prevent_thread_lock=True, quiet=True)
    url = demo.local_url

    def session(drops: str, merges: str) -> Client:
        c = Client(url, verbose=False)
        c.predict("smollm2-135m", "", api_name="/load_model")
        c.predict("wiki", "", None, api_name="/set_text")
        c.predict(drops, merges, "average", api_name="/update_plan")
        return c

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0, time.perf_counter()

    def analyse(c: Client):
        out = c.predict(settings.probe_seqlen, settings.probe_samples, "mds",
                        api_name="/analyse")
        return out[2]                                          # the heatmap (JSON)

    def apply(c: Client) -> dict:
        return c.predict(api_name="/apply")[1]                 # the details JSON

    try:
        a, b = session("5", ""), session("", "20-22")
        analyse(b)                                             # first-call costs, untimed
        cache.clear()
        alone, t_alone, _ = timed(lambda: analyse(b))
        cache.clear()
        got: dict = {}

        def run_a() -> None:
            got["a"] = timed(lambda: apply(a))

        ta = threading.Thread(target=run_a)
        start = time.perf_counter()
        ta.start()
        time.sleep(3.0)                                        # A's Apply is under way
        during, t_during, b_end = timed(lambda: analyse(b))
        ta.join()
        a_out, t_a, a_end = got["a"]
        same = alone == during
        rows = [common.row(
            "scale", "app: session B's analysis during session A's Apply vs alone", t_during,
            t_alone, "s", higher_is_better=False,
            note=f"B started 3 s into A's Apply ({t_a:.1f} s in all) and finished "
                 f"{'%.1f s before' % (a_end - b_end) if b_end < a_end else '%.1f s after' % (b_end - a_end)} "
                 f"A; a lock would have held B until A's end ({a_end - start - 3:.1f} s after "
                 f"B asked) and then {t_alone:.1f} s more; the same heatmap as alone: {same}")]

        # (b) two Applies at once against one after the other
        a2, b2 = session("7", ""), session("", "10-12")
        cache.clear()
        ra, t1, _ = timed(lambda: apply(a2))
        cache.clear()
        rb, t2, _ = timed(lambda: apply(b2))
        cache.clear()
        res: dict = {}
        threads = [threading.Thread(target=lambda k=k, c=c: res.__setitem__(k, apply(c)))
                   for k, c in (("a", a2), ("b", b2))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_both = time.perf_counter() - t0
        equal = (res["a"]["ppl_after"] == ra["ppl_after"] and
                 res["b"]["ppl_after"] == rb["ppl_after"])
        rows.append(common.row(
            "scale", "app: two sessions' Apply at once vs one after the other", t_both, t1 + t2,
            "s", higher_is_better=False,
            note=f"drop 7 / merge 10-12 of 30; serial {t1:.1f} + {t2:.1f} s; perplexities "
                 f"{res['a']['ppl_after']:.4f} and {res['b']['ppl_after']:.4f}, equal to the "
                 f"serial ones: {equal}; {settings.ppl_max_tokens} tokens per perplexity"))
        return rows
    finally:
        demo.close()


def run(quick: bool = True, lm=None) -> list[dict]:
    return default_rows(quick, lm)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--full", action="store_true")
    p.add_argument("--write-big", type=Path, help="write the ~7B random model to this folder")
    p.add_argument("--big", type=Path, help="stream the ~7B model from this folder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sessions", action="store_true", help="two app sessions at once")
    args = p.parse_args()
    common.quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.write_big:
        write_big_model(args.write_big)
        return
    print(common.machine(), flush=True)
    rows = big_rows(args.big, args.threads) if args.big else \
        sessions_rows() if args.sessions else run(not args.full)
    print(common.format_table(rows))
    print(common.markdown_table(rows))


if __name__ == "__main__":
    main()
