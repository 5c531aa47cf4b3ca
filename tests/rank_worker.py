"""One rank of the 2-rank gloo test (tests/test_core_ranks.py): heal a tiny model's cut in closed
form on this rank's shard of the windows; rank 0 writes the fit. Run by torchrun or by the test's
own spawn: python tests/rank_worker.py MODEL_FOLDER OUT_FILE [TEXT_SUFFIX]."""

from __future__ import annotations

import sys

import torch


def main(folder: str, out: str, suffix: str = "") -> None:
    torch.set_num_threads(1)
    from explorer import Variant, load_model
    from explorer.heal import heal
    from explorer.core.ranks import init_from_env, world
    from tiny import SAMPLE_TEXT

    init_from_env()
    rank, size = world()
    text = SAMPLE_TEXT + (suffix * rank)           # a suffix: the ranks disagree on the text
    lm = load_model(folder)
    passes = _count_heal_passes()           # the windows of each of healing's dense passes
    try:
        r = heal(Variant.identity(lm).drop([2, 3]), "closed-form", calibration=text, seqlen=32,
                 windows=12, held_out=2, seed=0)
    except Exception as exc:                      # the one-line message goes back to the test
        if rank == 0:
            torch.save({"error": str(exc)}, out)
        return
    from explorer.evaluate.perplexity import perplexity

    passes = _all_ranks(list(passes))
    lw = heal(Variant.identity(lm).drop([2, 3]), "layerwise", steps=4, batch=4, keep_best=False,
              calibration=text, seqlen=32, windows=12, held_out=2, seed=0)
    trained = [t.clone() for k in range(lw.variant.num_layers)
               for t in lw.variant.layer(k).state_dict().values()]

    from explorer.measure.measures import similarity
    from explorer.probe.probe import probe

    nll = perplexity(lm, SAMPLE_TEXT, seqlen=32, max_tokens=640).window_nll
    pr = probe(lm, SAMPLE_TEXT, seqlen=32, num_samples=7, max_tokens=150, batch_size=2)
    shares = _count_shares()              # each measure's items, and the ones this rank ran
    sims = {m: similarity(pr, m) for m in ("cosine", "bi", "angular", "cka", "npib")}
    from explorer.measure.measures import cka_matrix
    sims["cka features"] = cka_matrix(pr.states[:, :, :16])   # (L+2) 16 <= N: per-row items
    sims["npib pooled"] = similarity(pr, "npib", points="pooled")
    shares = _all_ranks(shares)
    if rank == 0:
        k = r.details["fits"][0]["slot"]
        torch.save({"down": lm.arch.part(r.variant.layer(k), lm.arch.mlp_down).weight.clone(),
                    "fits": r.details["fits"], "after": r.held_out_after, "ranks": size, "nll": nll, "sims": sims,
                    "lw_after": lw.held_out_after, "lw": trained, "shares": shares,
                    "passes": passes}, out)


def _count_heal_passes() -> list:
    """Record the number of windows of every pass healing's data runs (explorer/heal/data.py:
    the dense states, the held-out figures)."""
    from explorer.heal import data

    seen: list = []
    run = data.run_backbone

    def counting(lm, ids, **kw):
        seen.append(int(ids.shape[0]))
        return run(lm, ids, **kw)

    data.run_backbone = counting
    return seen


def _count_shares() -> list:
    """Record, for every `share_items` call of the measures, (items, this rank's items); the
    measures' chunks made small (the same in one process and under ranks)."""
    from explorer.core import ranks
    from explorer.measure import measures, npib

    seen: list = []
    chunk = measures._chunk             # small chunks, so that a tiny model's work has many
    measures._chunk = lambda L1, width, budget=0: chunk(L1, width, 2 ** 12)
    npib.CELL_BUDGET = 2 ** 17

    def counting(costs):
        mine = ranks.share_items(costs)
        seen.append((len(costs), mine))
        return mine

    measures.share_items = npib.share_items = counting
    return seen


def _all_ranks(value: list) -> list:
    """Every rank's `value`, in rank order (one process: [value])."""
    from explorer.core.ranks import world

    if world()[1] == 1:
        return [value]
    import torch.distributed as dist

    got: list = [None] * world()[1]
    dist.all_gather_object(got, value)
    return got


if __name__ == "__main__":
    main(*sys.argv[1:])
