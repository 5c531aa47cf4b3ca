"""The damage map (explorer/measure/damage.py) and its cheaper estimates: what they cost, and how well the
estimates and the similarities rank the candidates the map measured.

Rows (each with its baseline, measured in the same run):
  map            every single layer and every block of up to B layers, each candidate run from
                 its cut on the dense states (ours) against running each candidate from the
                 embeddings (baseline: three candidates timed, first, middle and last, scaled to
                 every candidate). Target (issue 31, full mode: B = 4, 32 windows of 128
                 tokens, the analysis's default): at most 180 s on 2 idle cores.
  streamed       the same map on the model loaded with its layers streamed from disk
                 (load_model(offload="disk")) against the in-memory map: at most 1.5x.
  first-order    the Taylor estimate (one forward and one backward pass) against an analysis
                 (the probe and every registered similarity on the same windows): at most 1.5x;
                 the note gives its Spearman against the map for each block size (aim >= 0.9).
  fewer windows  the map on a quarter of the windows against the full map; Spearman in the note.
  trust          each similarity's Spearman against the measured NLL increase, per block size
                 (ours = the Spearman of single layers; no baseline).
  plan (full mode): the `damage` plan's perplexity at 3, 6 and 9 removed on held-out
                 wiki (4096 tokens, seqlen 512), unhealed, against the angular plan's. The
                 methods table (docs/methods.md) takes its damage rows from
                 `python bench/methods_table.py --methods damage,damage:mode=greedy --max-tokens
                 4096 --resume` (--resume keeps the other methods' rows) and the healed ones from
                 `python bench/bench_heal.py --table --resume --methods damage,damage:mode=greedy`
                 (which rebuilds the recorded drops, searching nothing again).

Quick mode (the `python -m explorer bench` default): 8 windows of 128 tokens, blocks up to 2,
no plans. Figures taken on a shared machine are slower than on idle cores: say so.

Run: `python bench/bench_damage.py [--full]` (the plans run in full mode). Expected cost on 2 idle
cores, by arithmetic (docs/measures.md, "Protocol and cost"): the full map is about 75 TFLOP, some
65 full forward passes of its 4064 tokens; at the idle perplexity speed of RESULTS.md (about 375
tokens/s at seqlen 128, i.e. ~100 GFLOP/s) that is about 12 minutes, not 3 (the 180 s target
needs about 4x less work than an exact fp32 map does). Measured on idle cores (RESULTS.md,
session 14): 562 s. The full mode runs it about 2.5 times
over (in memory, streamed, a quarter of the windows) plus the plans: about 35-45 minutes in all.
"""

from __future__ import annotations

import time

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "damage"


def _rhos(rows) -> str:
    return ", ".join(f"size {r.size}: {r.spearman:.3f}" for r in rows)


def run(quick: bool = True, model: str = common.DEFAULT_MODEL, lm=None, text: str | None = None,
        plans: bool | None = None, streamed: bool = True) -> list[dict]:
    from explorer import load_model
    from explorer.measure.damage import block_label, candidate_cells, damage_map
    from explorer.measure.damage_estimate import taylor_map
    from explorer.evaluate.perplexity import perplexity, run_windows
    from explorer.measure.measures import MEASURES, all_similarities
    from explorer.probe.probe import calibration_windows, probe
    from explorer.measure.trust import trust_rows
    from explorer.core.variant import Variant

    lm, text = common.model_and_calibration(model, lm, text)
    samples, max_block = (8, 2) if quick else (32, 4)
    plans = (not quick) if plans is None else plans
    ids = calibration_windows(lm, text, 128, samples)
    W, T = ids.shape
    L = lm.num_layers
    max_block = min(max_block, L - 1)
    cells = candidate_cells(L, max_block)
    where = f"{W} windows x {T} tokens, {L} layers"
    rows = []

    dm = damage_map(lm, ids, max_block=max_block)
    # baseline: a candidate evaluated by a full pass from the embeddings (no dense states)
    naive = []
    for a, b in (cells[0], cells[len(cells) // 2], cells[-1]):
        v = Variant.identity(lm).drop(range(a, b))
        t = time.perf_counter()
        run_windows(lm, ids, variant=v)
        naive.append(time.perf_counter() - t)
    naive_all = sum(naive) / len(naive) * len(cells) + dm.dense_seconds
    rows.append(common.row(
        BENCH, f"map, blocks <= {max_block} ({len(cells)} candidates)", dm.seconds, naive_all,
        "s", higher_is_better=False,
        note=f"{where}; NLL and KL; baseline: every candidate run from the embeddings "
             f"(3 timed: {common.spread(naive)} s each, scaled to {len(cells)}); "
             f"target (full mode, blocks <= 4, 32 windows): <= 180 s on 2 idle cores"))

    if streamed:
        disk = load_model(lm.source, offload="disk")
        sm = damage_map(disk, ids, max_block=max_block)
        same = float((sm.nll - dm.nll).nan_to_num().abs().max())
        rows.append(common.row(
            BENCH, "map on a streamed model (layers from disk)", sm.seconds, dm.seconds, "s",
            higher_is_better=False,
            note=f"{where}; baseline: the in-memory map; target: <= 1.5x it; largest NLL "
                 f"difference {same:.1e}"))
        del disk

    est = taylor_map(lm, ids, max_block=max_block)
    t = time.perf_counter()
    pr = probe(lm, input_ids=ids)
    sims = all_similarities(pr)
    analysis_s = time.perf_counter() - t
    taylor = trust_rows(dm, "taylor", est.matrix, higher_is_similar=False)
    rows.append(common.row(
        BENCH, "first-order (Taylor) estimate", est.seconds, analysis_s, "s",
        higher_is_better=False,
        note=f"{where}; baseline: an analysis (probe + {len(sims)} similarity matrices); target "
             f"<= 1.5x it; Spearman vs the map: {_rhos(taylor)} (aim >= 0.9)"))

    few = max(1, W // 4)
    fm = damage_map(lm, ids[:few], max_block=max_block)
    fewer = trust_rows(dm, "fewer", fm.matrix("nll"), higher_is_similar=False)
    rows.append(common.row(
        BENCH, f"map on {few} of {W} windows", fm.seconds, dm.seconds, "s",
        higher_is_better=False,
        note=f"baseline: the full map; Spearman vs it: {_rhos(fewer)}"))

    for name, m in sims.items():
        tr = trust_rows(dm, name, m, MEASURES[name].higher_is_similar)
        picks = ", ".join(f"size {r.size}: pick {block_label(*r.pick)} ranks "
                          f"{r.pick_rank}/{r.candidates}" for r in tr)
        rows.append(common.row(
            BENCH, f"trust: {name} vs measured damage", tr[0].spearman if tr else None, None,
            "rho", higher_is_better=True,
            note=f"{where}; Spearman {_rhos(tr)}; Kendall "
                 + ", ".join(f"size {r.size}: {r.kendall:.3f}" for r in tr) + f"; {picks}"))

    if plans:
        from explorer import load_texts
        from explorer.plan import PlanContext, get_method

        evaluation = load_texts("wiki").evaluation
        ctx = PlanContext(lm, text, seqlen=128, num_samples=32)
        sizes = [k for k in (3, 6, 9) if k < L]
        ours = get_method("damage").plans(ctx, sizes)
        for k in sizes:
            theirs = get_method("angular").plan(ctx, k)
            p_ours = perplexity(lm, evaluation, variant=ours[k].variant, max_tokens=4096).ppl
            p_base = perplexity(lm, evaluation, variant=theirs.variant, max_tokens=4096).ppl
            rows.append(common.row(
                BENCH, f"damage plan, {k} removed", p_ours, p_base, "ppl",
                higher_is_better=False,
                note=f"held-out wiki, 4096 tokens, seqlen 512, unhealed; damage removed "
                     f"{ours[k].removed}, baseline angular removed {theirs.removed}"))
    return rows


if __name__ == "__main__":
    start = time.perf_counter()
    common.main(run)
    print(f"total {time.perf_counter() - start:.1f} s")
