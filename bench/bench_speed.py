"""What a cut buys: the measured speed-up of 6 of 30 layers removed on the default model.

Ours: the variant (angular distance's plan at 6 removed, layers 13-18; any plan of 6 drops costs
the same, since every layer of SmolLM2 has the same shape). Baseline: the dense model.
Both are measured by `explorer.evaluate.speed.measure_speed` in the same run: one warm-up call each, then
rounds in which dense and variant run back to back in alternating order; each figure is the median
of the rounds, the note gives the spread of the paired ratios ((max - min) / median) and the
fraction of the dense model's time spent outside its decoder layers (embedding, final norm, head,
per-step overhead), which bounds the speed-up below the layer ratio 30/24 = 1.25 (Amdahl's law).

Cases: prefill of 512 tokens at batch 1 and 8 (seconds; last-position logits only), decode of 128
new tokens with the KV cache at batch 1 and 8 (tokens/s), weights' bytes and the KV cache's bytes.
`quick` uses 3 rounds and batches 1 and 8 at 64 new tokens; `--full` 7 rounds at 128 new tokens.
"""

from __future__ import annotations

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "speed"
REMOVE = 6


def run(quick: bool = True, model: str = common.DEFAULT_MODEL, lm=None) -> list[dict]:
    from explorer import Variant, load_model
    from explorer.evaluate.speed import measure_speed

    if lm is None:
        lm = load_model(model)
    L = lm.num_layers
    # angular distance's block at 6 removed on SmolLM2 (docs/methods.md): layers 13-18; on another
    # model, a fifth of its layers in the middle
    remove = REMOVE if L == 30 else max(1, L // 5)
    start = 13 if L == 30 else max(1, (L - remove) // 2)
    v = Variant.identity(lm).drop(list(range(start, start + remove)))
    r = measure_speed(lm, v, batches=(1, 8), prefill_tokens=512, decode_prompt=64,
                      new_tokens=64 if quick else 128, repeats=3 if quick else 7)
    rows = []
    for c in r.cases:
        note = (f"speed-up x{c.speedup:.3f}, spread {100 * c.speedup_spread:.1f}% over "
                f"{r.repeats} paired rounds; {100 * c.outside_dense:.1f}% of the dense time "
                f"outside the decoder layers (best possible x{r.amdahl_bound(c):.3f}, layer "
                f"ratio x{r.layer_ratio:.3f}); {r.threads} torch threads")
        if c.kind == "prefill":
            rows.append(common.row(BENCH, f"prefill {c.tokens} tok, batch {c.batch}, {L - remove}"
                                   f" of {L} layers", c.variant.median, c.dense.median, "s",
                                   higher_is_better=False, note=note))
        else:
            rows.append(common.row(BENCH, f"decode {c.tokens} new tok, batch {c.batch}, "
                                   f"{L - remove} of {L} layers", c.rate(c.variant),
                                   c.rate(c.dense), "tok/s", higher_is_better=True, note=note))
    md, mv = r.memory_dense, r.memory_variant
    rows.append(common.row(BENCH, "weights' bytes", mv.weights_bytes, md.weights_bytes, "bytes",
                           higher_is_better=False, note="embeddings and head are kept (tied)"))
    rows.append(common.row(BENCH, f"KV cache bytes, batch {r.cases[-1].batch}",
                           mv.kv_cache_bytes, md.kv_cache_bytes, "bytes", higher_is_better=False,
                           note=f"after {r.decode_prompt} + {r.new_tokens} tokens"))
    return rows


if __name__ == "__main__":
    common.main(run)
