"""Similarity measures: the cost of each (L+1) x (L+1) matrix next to the forward pass that made
the states it reads.

Ours: `explorer.measure.measures.similarity(pr, name)` with default parameters, for every measure in the
registry, plus NPIB's adjacent profile (`adjacent(pr, "npib")`, L cells instead of all pairs).
Baseline: the probe itself, one hooked forward pass over the same calibration windows
(`pr.seconds`): a measure that costs a fraction of it adds little to an exploration session.
`ratio` > 1 means the measure is that many times cheaper than the forward pass.

Expected costs (L+1 = 31 boundaries, N recorded tokens, H = 576):
    cosine, bi  one Gram product of the unit-norm states: (L+1)^2 N H flops
    angular     per-sample last-token Grams: (L+1)^2 B H
    cka         Gram rows of at most 2048 tokens: (L+1) N^2 H
    npib        diffusion maps on 256 points per boundary plus KSG on (L+1) L / 2 pairs of
                256 x 256 distance blocks

Run: `python bench/bench_measures.py [--full]` (quick: 16 windows of 128 tokens; full: 32).
"""

from __future__ import annotations

import time

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "measures"


def run(quick: bool = True, model: str = common.DEFAULT_MODEL, lm=None,
        text: str | None = None) -> list[dict]:
    """One row per measure: seconds for its matrix against seconds of the probe forward pass."""
    from explorer.measure.measures import MEASURES, adjacent, similarity
    from explorer.probe.probe import probe

    lm, text = common.model_and_calibration(model, lm, text)
    samples = 16 if quick else 32
    reps = 1 if quick else 3
    pr = probe(lm, text, seqlen=128, num_samples=samples)
    B, T = pr.input_ids.shape
    forward_s = pr.seconds
    base_note = (f"baseline: the probe forward pass that produced the states ({B}x{T} tokens, "
                 f"{forward_s:.2f} s); N={pr.num_tokens} recorded tokens")

    jobs = {name: (lambda n=name: similarity(pr, n)) for name in MEASURES}
    jobs["npib adjacent"] = lambda: adjacent(pr, "npib")
    rows = []
    for name, job in jobs.items():
        times = []
        for _ in range(reps):
            dt, out = common.time_once(job, pr.states.device)
            times.append(dt)
        shape = "x".join(str(s) for s in out.shape)
        spread = f"; {reps} runs {common.spread(times)}" if reps > 1 else ""
        rows.append(common.row(BENCH, f"{name} ({shape})", common.median(times), forward_s, "s",
                               higher_is_better=False, note=base_note + spread))
    return rows


if __name__ == "__main__":
    start = time.perf_counter()
    common.main(run)
    print(f"total {time.perf_counter() - start:.1f} s")
