"""Data-parallel ranks and runs that resume (explorer/core/ranks.py, explorer/core/resume.py, docs/scale.md),
on CPU with gloo, side by side in one run.

Each configuration is one `torchrun` launch of this file as a worker (`--worker OUT`), which
loads the default model, and then, timed between barriers so the slowest rank counts:

  - the analysis: a probe of the wiki calibration half (32 windows of 128 tokens) and its cosine,
    angular and CKA matrices;
  - the dense perplexity's per-window NLL sums (wiki evaluation half, 4096 tokens);
  - a closed-form heal of layers 20-21 dropped (40 windows of 128), the fitted down projection
    kept;
  - a seeded layer-wise heal (20 steps) of the same cut, its held-out perplexity kept (both
    heals timed: under ranks their dense states and held-out figures are shared out too);
  - SLEB's search for 2 layers to remove (its default 8 calibration windows of 128), timed: under
    ranks each candidate runs on each rank's share of the windows and the stops within a pass are
    off (docs/scale.md), so this row says what the ranks buy against what those stops saved.

Configurations: 1 rank x 1 thread (the baseline), 2 ranks x 1 thread, 1 process x 2 threads
(analysis only). Rows: the largest difference of each figure between 2 ranks and 1 (targets:
matrices 1e-6, NLL sums 1e-9 relative, maps 1e-5, held-out 1e-4 relative), the analysis wall time
(target: 2 ranks <= 0.6 x 1 rank), and the resume row: a 30-layer layer-major probe killed after
layer 15 and resumed (layers computed again, and whether the states equal an uninterrupted run).

The layer-wise training is data-parallel: each rank takes half of every step's windows and the
gradients are added (explorer/heal/train.py, sharded=True).

    python bench/bench_distributed.py            # prints the rows as JSON lines
    python -m explorer bench --only distributed
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

BENCH = "distributed"
DROP = [20, 21]
SLEB_REMOVE = 2


def worker(out: str, heal_too: bool, search: bool = False) -> None:
    """One rank: the figures and timings above, written by rank 0 to `out`."""
    import torch.distributed as dist

    from explorer import Variant, load_model, load_texts
    from explorer.evaluate.perplexity import perplexity
    from explorer.heal import heal
    from explorer.measure.measures import similarity
    from explorer.probe.probe import probe
    from explorer.core.ranks import init_from_env, world

    init_from_env()
    rank, size = world()
    barrier = dist.barrier if size > 1 else (lambda: None)
    lm = load_model(common.DEFAULT_MODEL)
    texts = load_texts("wiki")
    got: dict = {"ranks": size, "threads": torch.get_num_threads()}
    probe(lm, texts.calibration, seqlen=128, num_samples=2 * size)          # warm-up
    barrier()
    t0 = time.perf_counter()
    pr = probe(lm, texts.calibration, seqlen=128, num_samples=32)
    got["sims"] = {m: similarity(pr, m) for m in ("cosine", "angular", "cka")}
    barrier()
    got["analysis_s"] = time.perf_counter() - t0
    if heal_too:
        got["nll"] = perplexity(lm, texts.evaluation, seqlen=128, max_tokens=4096).window_nll
        kw = dict(calibration=texts.calibration, seqlen=128, windows=40, held_out=4, seed=0)
        barrier()
        t0 = time.perf_counter()
        cf = heal(Variant.identity(lm).drop(DROP), "closed-form", **kw)
        barrier()
        got["closed_form_s"] = time.perf_counter() - t0     # its dense states and held-out too
        k = cf.details["fits"][0]["slot"]
        got["map"] = lm.arch.part(cf.variant.layer(k), lm.arch.mlp_down).weight.detach().clone()
        t0 = time.perf_counter()
        lw = heal(Variant.identity(lm).drop(DROP), "layerwise", steps=20, **kw)
        barrier()
        got["layerwise_s"] = time.perf_counter() - t0       # the dense states cached by then
        got["held_out"] = lw.held_out_after
    if search:
        from explorer.plan import compress

        barrier()
        t0 = time.perf_counter()
        plan = compress(lm, "sleb", remove=SLEB_REMOVE, calibration=texts.calibration)
        barrier()
        got["sleb_s"] = time.perf_counter() - t0
        got["sleb_removed"] = sorted(plan.removed)
    if rank == 0:
        torch.save(got, out)


def _launch(ranks: int, threads: int, heal_too: bool, folder: Path) -> dict:
    """One torchrun launch of the worker; `heal_too` adds the heal rows and the SLEB search."""
    out = folder / f"r{ranks}t{threads}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
           "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", __file__, "--worker",
           str(out)] + (["--heal", "--search"] if heal_too else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun {ranks}x{threads} failed: {done.stderr[-1500:]}")
    return torch.load(out, weights_only=False)


def _resume_row(lm) -> dict:
    """A 30-layer layer-major probe killed after layer 15, resumed from its checkpoint."""
    from explorer import load_texts
    from explorer.probe.probe import probe
    from explorer.core.resume import LayerCheckpoint

    text = load_texts("wiki").calibration
    kw = dict(seqlen=128, num_samples=8, layer_major=True)
    whole = probe(lm, text, **kw)

    class Killed(Exception):
        pass

    def kill(event):
        if event.step == 15:
            raise Killed

    with tempfile.TemporaryDirectory() as tmp:
        try:
            probe(lm, text, checkpoint=LayerCheckpoint(tmp), progress=kill, **kw)
        except Killed:
            pass
        ran: list[int] = []
        t0 = time.perf_counter()
        again = probe(lm, text, checkpoint=LayerCheckpoint(tmp, resume=True),
                      progress=lambda e: ran.append(e.step), **kw)
        seconds = time.perf_counter() - t0
    recomputed = len(ran) - (lm.num_layers - 15)
    same = torch.equal(again.states, whole.states)
    return common.row(BENCH, "resume: 30-layer probe killed after layer 15", float(recomputed),
                      1.0, "layers recomputed", higher_is_better=False,
                      note=f"{len(ran)} layers run after the resume ({seconds:.1f} s); states "
                      f"{'equal' if same else 'DIFFER from'} the uninterrupted run's; target <= 1")


def run(quick: bool = True, lm=None) -> list[dict]:
    from explorer import load_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one = _launch(1, 1, True, folder)
        two = _launch(2, 1, True, folder)
        threads = _launch(1, 2, False, folder)
    rows = []
    for m in one["sims"]:
        d = float((two["sims"][m] - one["sims"][m]).abs().max())
        rows.append(common.row(BENCH, f"2 ranks vs 1: {m} matrix", d, 1e-6, "max abs diff",
                               higher_is_better=False, note="target <= 1e-6"))
    n1, n2 = sum(one["nll"]), sum(two["nll"])
    rows.append(common.row(BENCH, "2 ranks vs 1: NLL sum", abs(n2 - n1) / abs(n1), 1e-9,
                           "relative diff", higher_is_better=False,
                           note=f"{len(one['nll'])} windows; target <= 1e-9"))
    d = float((two["map"].double() - one["map"].double()).abs().max()
              / one["map"].double().abs().max())
    rows.append(common.row(BENCH, "2 ranks vs 1: closed-form map", d, 1e-5,
                           "max diff / max |w|", higher_is_better=False,
                           note=f"layers {DROP} dropped, 40 windows; target <= 1e-5"))
    d = abs(two["held_out"] - one["held_out"]) / one["held_out"]
    rows.append(common.row(BENCH, "2 ranks vs 1: seeded layerwise held-out ppl", d, 1e-4,
                           "relative diff", higher_is_better=False,
                           note=f"{one['held_out']:.4f} vs {two['held_out']:.4f}; each rank "
                           "trains on half of every step's windows; target <= 1e-4"))
    base = one["analysis_s"]
    rows.append(common.row(BENCH, "analysis: 2 ranks x 1 thread vs 1 rank x 1 thread",
                           two["analysis_s"], base, "s", higher_is_better=False,
                           note=f"{two['analysis_s'] / base:.2f}x the 1-rank time (target "
                           "<= 0.6x); probe 32 x 128 + cosine, angular, CKA"))
    rows.append(common.row(BENCH, "analysis: 1 process x 2 threads vs 1 x 1",
                           threads["analysis_s"], base, "s", higher_is_better=False,
                           note=f"{threads['analysis_s'] / base:.2f}x the 1-thread time"))
    for key, what in (("closed_form_s", "closed-form heal (its dense pass, fit and held-out "
                       "figures)"), ("layerwise_s", "layer-wise heal, 20 steps (dense states "
                                     "cached)")):
        rows.append(common.row(BENCH, f"{what}: 2 ranks x 1 thread vs 1", two[key], one[key],
                               "s", higher_is_better=False,
                               note=f"{two[key] / one[key]:.2f}x the 1-rank time; layers {DROP} "
                               "dropped, 40 + 4 held-out windows of 128"))
    rows.append(common.row(BENCH, f"SLEB search (remove {SLEB_REMOVE}): 2 ranks x 1 thread vs 1",
                           two["sleb_s"], one["sleb_s"], "s", higher_is_better=False,
                           note=f"{two['sleb_s'] / one['sleb_s']:.2f}x the 1-rank time; removed "
                           f"{two['sleb_removed']} vs {one['sleb_removed']} (the same plan "
                           "expected); 8 x 128 calibration windows; under ranks the stops "
                           "within a candidate's pass are off"))
    rows.append(_resume_row(lm if lm is not None else load_model(common.DEFAULT_MODEL)))
    return rows


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker(sys.argv[sys.argv.index("--worker") + 1], "--heal" in sys.argv,
               "--search" in sys.argv)
    else:
        for r in run():
            print(json.dumps(r))
