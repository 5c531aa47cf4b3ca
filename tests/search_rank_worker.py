"""One rank of the 2-rank search test (tests/test_plan_ranks.py): SLEB, BlockPruner, EvoPress and
angular's plan on a tiny model, every candidate scored on this rank's shard of the calibration
windows; rank 0 writes what each search chose and scored. Run by torchrun:
python tests/search_rank_worker.py MODEL_FOLDER OUT_FILE."""

from __future__ import annotations

import sys

import torch


def _steps(r) -> list[list[tuple]]:
    return [[(s.key, s.total, s.complete) for s in step] for step in r.steps]


def main(folder: str, out: str) -> None:
    torch.set_num_threads(1)
    from explorer import load_model
    from explorer.core.ranks import init_from_env, world
    from explorer.plan import compress
    from explorer.plan.ppl_search import PerplexitySearch
    from explorer.plan.registry import PlanContext
    from explorer.plan.sleb import sleb_search
    from tiny import SAMPLE_TEXT

    init_from_env()
    rank, size = world()
    lm = load_model(folder)
    kw = dict(calibration=SAMPLE_TEXT, seqlen=32, num_samples=7)
    ids = PlanContext(lm, SAMPLE_TEXT, seqlen=32, num_samples=7).input_ids
    plain = PerplexitySearch(lm, ids, abandon=False)
    exact = sleb_search(plain, 2)
    fast = sleb_search(PerplexitySearch(lm, ids), 2)      # bounds and early stops
    bp = compress(lm, "blockpruner", remove=1, samples=7, **kw)
    evo = compress(lm, "evopress", remove=2, generations=3, offspring=4, first_windows=3,
                   seed=1, **kw)
    ang = compress(lm, "angular", remove=2, **kw)
    if rank == 0:
        torch.save({"ranks": size, "windows": ids.shape[0], "mine": plain.local.shape[0],
                    "exact": (exact.order, exact.ppls, _steps(exact)),
                    "fast": (fast.order, fast.ppls, _steps(fast)),
                    "bp": (bp.variant.removed(), bp.notes.split(" in this order")[0]),
                    "evo": (evo.removed, evo.params["generations"],
                            evo.notes.split(" after ")[0]),
                    "angular": (ang.removed, ang.scores)}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
