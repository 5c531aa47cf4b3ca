"""Perplexity of every merge/prune method at several numbers of removed layers (docs/methods.md).

One shared calibration probe (the identity probe is computed once), then for each method and each
k in --removes: plan, evaluate perplexity under the stated protocol, append one JSON line to --out
(so an interrupted run keeps what finished; --resume skips rows already there), and finally print
a Markdown table. Progressive methods whose step k depends only on the steps before it (mka, come)
are planned once at the largest k and the smaller k are rebuilt by replaying the first k ops of the
recipe, which gives exactly the variants a run with remove=k would give.

Usage:
    python bench/methods_table.py                                  # defaults below
    python bench/methods_table.py --methods tail,shortgpt --removes 3 --max-tokens 4096
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from explorer import ExplorerError, Variant, load_model, load_texts, perplexity
from explorer.plan import PlanContext, get_method
from explorer.apply.recipe import replay

PREFIX_METHODS = ("mka", "come", "sleb")   # greedy, progressive: plan k = prefix of plan max(k)
SHARED_SEARCH = ("blockpruner", "damage")   # Method.plans: one search serves every k
ORDER = ("tail", "shortgpt", "angular", "laco:mode=walk", "laco", "streamline", "mka", "come",
         "streamline:replacement=linear", "sleb", "blockpruner", "evopress", "damage",
         "damage:mode=greedy")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(ORDER))
    ap.add_argument("--removes", default="3,6,9")
    ap.add_argument("--text", default="wiki")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--calib-seqlen", type=int, default=128)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--out", default="bench/results/methods_table.jsonl")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--progress", action="store_true", help="print the methods' progress lines")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.resume and out.exists():
        done = {(r["method"], r["remove"]) for r in map(json.loads, out.read_text().splitlines())}
    elif out.exists():
        out.unlink()
    removes = [int(k) for k in args.removes.split(",")]
    lm = load_model(args.model)
    texts = load_texts(args.text)
    ctx = PlanContext(lm, texts.calibration, seqlen=args.calib_seqlen,
                      num_samples=args.calib_samples, calibration_source=texts.source,
                      progress=(lambda e: print(f"  {time.strftime('%H:%M:%S')} {e.describe()}",
                                                 flush=True)) if args.progress else None)

    def record(method: str, k: int, variant, removed, merged, plan_s: float, notes: str,
               plan_cpu: float | None = None) -> None:
        t = time.perf_counter()
        try:
            r = perplexity(lm, texts.evaluation, variant=variant, seqlen=args.seqlen,
                           max_tokens=args.max_tokens, source=texts.source)
            ppl, protocol = r.ppl, r.protocol()
        except Exception as exc:            # a broken variant is a result too (NaN/inf)
            ppl, protocol = float("nan"), f"failed: {exc}"
        row = {"method": method, "remove": k, "num_layers": variant.num_layers, "ppl": ppl,
               "removed": removed, "merged": merged, "plan_seconds": round(plan_s, 1),
               "eval_seconds": round(time.perf_counter() - t, 1), "notes": notes,
               **({} if plan_cpu is None else {"plan_cpu_seconds": round(plan_cpu, 1)}),
               "protocol": protocol,
               "calibration": f"{args.calib_samples} x {args.calib_seqlen} tokens of "
                              f"{texts.source} (calibration half)"}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{method:>10} k={k}: ppl {ppl:.2f}  plan {plan_s:.0f} s  removed {removed} "
              f"merged {merged}", flush=True)

    if ("original", 0) not in done:
        record("original", 0, Variant.identity(lm), [], [], 0.0, "")
    for name in args.methods.split(","):
        base_name, *kv = name.split(":")               # "streamline:replacement=linear"
        params = {k: json.loads(v) if v[:1].isdigit() else v
                  for k, v in (item.split("=", 1) for item in kv)}
        method = get_method(base_name)
        todo = [k for k in removes if (name, k) not in done]
        if not todo:
            continue
        if base_name in PREFIX_METHODS:
            t = time.perf_counter()
            plan = method.plan(ctx, max(todo), **params)
            plan_s = time.perf_counter() - t
            ops = plan.recipe().ops
            for k in sorted(todo):
                v = plan.variant if k == max(todo) else replay(lm, ops[:k])
                removed, merged = v.removed(), v.merged()
                record(name, k, v, removed, merged, plan_s * k / max(todo),
                       plan.notes if k == max(todo) else f"first {k} steps of the plan above")
            continue
        if base_name in SHARED_SEARCH:
            t = time.perf_counter()
            plans = method.plans(ctx, todo, **params)
            plan_s = time.perf_counter() - t
            for k in sorted(todo):
                record(name, k, plans[k].variant, plans[k].removed, plans[k].merged,
                       plan_s / len(todo), plans[k].notes)
            continue
        for k in todo:
            t, cpu = time.perf_counter(), time.process_time()
            try:
                plan = method.plan(ctx, k, **params)
            except ExplorerError as exc:     # e.g. LaCo's walk cannot reach k: its reason is a row
                record(name, k, Variant.identity(lm), [], [], time.perf_counter() - t,
                       f"refused: {exc}")
                continue
            record(name, k, plan.variant, plan.removed, plan.merged, time.perf_counter() - t,
                   plan.notes, time.process_time() - cpu)
    print_table(out, removes)
    return 0


def print_table(path: Path, removes: list[int]) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by = {(r["method"], r["remove"]): r for r in rows}
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "original"]
    base = by.get(("original", 0))
    print("\n| method | " + " | ".join(f"{k} removed" for k in removes) + " |")
    print("|---|" + "---|" * len(removes))
    if base:
        print(f"| original ({base['num_layers']} layers) | " +
              " | ".join(f"{base['ppl']:.2f}" for _ in removes) + " |")
    for m in methods:
        cells = []
        for k in removes:
            r = by.get((m, k))
            cells.append("not run" if r is None else f"{r['ppl']:.2f}" +
                         ("" if r["num_layers"] == (base or r)["num_layers"] - k else
                          f" ({r['num_layers']} layers)"))
        print(f"| {m} | " + " | ".join(cells) + " |")
    if rows:
        print(f"\nProtocol: {rows[0]['protocol']}; calibration {rows[0]['calibration']}.")


if __name__ == "__main__":
    sys.exit(main())
