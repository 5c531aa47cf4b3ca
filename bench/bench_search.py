"""Perplexity-guided search and the dense cache (docs/search.md), each side by side with the same
work done without them, in the same run; the results must agree.

- SLEB: the search on SmolLM2 (quick: 1 of 30 layers on 4 x 128 calibration tokens, each side
  twice in ABBA order; full: 6 of 30 on 8 x 128, the method's default, each side once). Ours runs
  each candidate from the current model's stored residual stream with exact early stops on
  lower bounds of its NLL, so that most candidates skip the 49k x 576 head
  (explorer/plan/ppl_search.py); the baseline is the same search running every candidate from
  the embeddings over every window, as a loop of plain perplexity calls does. The layers removed
  must be the same.
- After: the perplexity of a variant that drops a middle layer (15 of 30), from the dense states
  at boundary 15 against a full pass (quick: 4k tokens, full: 16k at 512 per window). Same figure
  to 1e-6.
- Compress: `python -m explorer compress --method shortgpt --remove 6` in a new process, the first
  call (no cached dense figure: the dense figures and states under the cache folder are deleted
  first) against a second call (figure and states read from disk), medians of 2 (quick, 4k
  evaluation tokens) or 3 (full, the default 16k) pairs. Same figures.

Targets (issue 13): search >= 2x with the cache, compress >= 1.8x on a second call, SLEB 6 of 30
in under 5 minutes on 2 cores (full mode).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

try:
    from . import common
except ImportError:          # run as a script: python bench/bench_search.py
    import common  # type: ignore[no-redef]

MIDDLE = 15


def _sleb_rows(lm, calibration: str, quick: bool) -> list[dict]:
    from explorer.plan.ppl_search import PerplexitySearch
    from explorer.plan.sleb import sleb_search
    from explorer.probe.probe import calibration_windows

    remove, windows = (1, 4) if quick else (6, 8)
    ids = calibration_windows(lm, calibration, 128, windows)
    L = lm.num_layers
    sides = {"ours": dict(), "baseline": dict(cache=False, abandon=False)}
    # quick: ABBA order (ours, baseline, baseline, ours), so that a slow drift of the machine's
    # load hits both sides alike, each side's figure the mean of its two runs; full: one run of
    # each (the baseline alone is several minutes), for an idle machine
    names = list(sides)
    seconds = {name: [] for name in names}
    results = {}
    for name in (names + names[::-1]) if quick else names:
        dt, results[name] = common.time_once(
            lambda kw=sides[name]: sleb_search(PerplexitySearch(lm, ids, **kw), remove))
        seconds[name].append(dt)
    orders = {name: r.order for name, r in results.items()}
    if len({tuple(o) for o in orders.values()}) != 1:
        raise AssertionError(f"SLEB removed different layers: {orders}")
    mean = {name: sum(ts) / len(ts) for name, ts in seconds.items()}
    fast = results["ours"]
    scored = sum(len(s) for s in fast.steps)
    stopped = sum(not x.complete for s in fast.steps for x in s)
    what = f"SLEB {remove} of {L} layers, {windows} x 128 calibration tokens"
    note = (f"removed {fast.order} on both sides (calibration ppl {fast.ppl:.4g}); {scored} "
            f"candidates, {stopped} stopped early; baseline: every candidate from the embeddings "
            f"over every window; "
            + (f"mean of 2 runs in ABBA order (ours {common.spread(seconds['ours'])}, baseline "
               f"{common.spread(seconds['baseline'])})" if quick else "one run each"))
    if not quick:
        note += f"; target SLEB 6/30 < 300 s: {'met' if mean['ours'] < 300 else 'missed'}"
    return [common.row("search", what, mean["ours"], mean["baseline"], "s",
                       higher_is_better=False, note=note)]


def _after_rows(lm, text: str, quick: bool) -> list[dict]:
    from explorer import Variant, perplexity

    kw = dict(seqlen=512, max_tokens=4096 if quick else 16384, source="wiki")
    perplexity(lm, text, **kw)                   # the dense figure and its states (not timed)
    v = Variant.identity(lm).drop([MIDDLE])
    times, res = common.interleaved(
        {"ours": lambda: perplexity(lm, text, variant=v, **kw),
         "baseline": lambda: perplexity(lm, text, variant=v, cache=False, **kw)},
        reps=2 if quick else 3, warmup=0)
    ours, base = res["ours"], res["baseline"]
    rel = abs(ours.ppl / base.ppl - 1)
    if rel > 1e-6 or ours.start == 0:
        raise AssertionError(f"cached after figure {ours.ppl} (from boundary {ours.start}) vs "
                             f"full pass {base.ppl}")
    return [common.row(
        "search", f"after perplexity, layer {MIDDLE} dropped, {ours.tokens} tokens",
        common.median(times["ours"]), common.median(times["baseline"]), "s",
        higher_is_better=False,
        note=f"ours from the dense states at boundary {ours.start}, baseline a full pass; ppl "
             f"{ours.ppl:.4f} both (rel diff {rel:.1e}); spread ours "
             f"{common.spread(times['ours'])}, baseline {common.spread(times['baseline'])}")]


def _compress_rows(model: str, quick: bool) -> list[dict]:
    from explorer.core.dense_cache import CACHE

    tokens, reps = (4096, 2) if quick else (16384, 3)
    cmd = [sys.executable, "-m", "explorer", "compress", "--model", model, "--method",
           "shortgpt", "--remove", "6", "--max-tokens", str(tokens), "--json"]
    times: dict[str, list[float]] = {"first": [], "second": []}
    outs = {}
    for _ in range(reps):
        CACHE.clear(disk=True)          # the first call finds no dense figure and no states
        for name in ("first", "second"):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            times[name].append(time.perf_counter() - t0)
            outs[name] = json.loads(out.stdout)
    first, second = outs["first"], outs["second"]
    if not second["ppl_before_cached"] or second["ppl_before"] != first["ppl_before"] or \
            abs(second["ppl_after"] / first["ppl_after"] - 1) > 1e-6:
        raise AssertionError(f"second compress differs: {first} vs {second}")
    t1, t2 = common.median(times["first"]), common.median(times["second"])
    return [common.row(
        "search", f"compress shortgpt 6, second call vs first ({tokens} eval tokens)", t2, t1, "s",
        higher_is_better=False,
        note=f"new process each (load, plan, before, after), median of {reps} pairs (first "
             f"{common.spread(times['first'])}, second {common.spread(times['second'])}); "
             f"second: dense figure cached, after from boundary {second['ppl_after_start']} of "
             f"the disk states; ppl {first['ppl_before']:.4f} -> {first['ppl_after']:.4f} both; "
             f"target >= 1.8x: {'met' if t1 / t2 >= 1.8 else 'missed'}")]


PARTS = ("sleb", "after", "compress")


def run(quick: bool = True, model: str = common.DEFAULT_MODEL, lm=None,
        only: tuple[str, ...] = PARTS) -> list[dict]:
    from explorer import load_texts

    lm, calibration = common.model_and_calibration(model, lm)
    text = load_texts("wiki").evaluation
    rows = _sleb_rows(lm, calibration, quick) if "sleb" in only else []
    rows += _after_rows(lm, text, quick) if "after" in only else []
    rows += _compress_rows(model, quick) if "compress" in only else []
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="SLEB 6 of 30 on 8 x 128, 16k tokens")
    ap.add_argument("--only", default=",".join(PARTS), help="some of " + ",".join(PARTS))
    args = ap.parse_args()
    common.quiet()
    print(common.machine())
    print(common.format_table(run(not args.full, only=tuple(args.only.split(",")))))
