"""The README's measured figures, each block rendered from the results file that a named command writes.

A figure in the README is either inside one of these generated blocks or names the command that
measured it (a paragraph with a figure and no command fails the check). A block sits between

    <!-- generated: NAME figures (COMMAND) -->
    ...
    <!-- end generated -->

and is the rendering of its results file under bench/results/. So a figure cannot drift from its
measurement: re-running COMMAND rewrites the file, `python bench/readme_figures.py --write` the
README, and `--check` (run by tests/test_docs.py) fails while the README and the files disagree.

Usage:
    python bench/readme_figures.py --check
    python bench/readme_figures.py --write
    python bench/readme_figures.py --measure single-drops      # writes bench/results/single_drops.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
END = "<!-- end generated -->"


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (RESULTS / name).read_text().splitlines() if line.strip()]


def _ppl(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}" if x < 1e5 else f"{x:.1e}"


# -- the blocks ----------------------------------------------------------------------------------

METHOD_ROWS = (   # (row in methods_table.jsonl, label in the README)
    ("tail", "tail (drop the last layers before the final one)"),
    ("shortgpt", "ShortGPT (lowest block influence)"),
    ("angular", "angular distance (Gromov et al.)"),
    ("laco", "LaCo (official C=7, T=0.45)"),
    ("streamline", "LLM-Streamline (one trained layer)"),
    ("mka", "MKA (NPIB, paper weights)"),
    ("come", "CoMe (no recovery)"),
    ("sleb", "SLEB (perplexity-guided, one layer at a time)"),
    ("blockpruner", "BlockPruner (attention/MLP blocks, perplexity-guided)"),
    ("evopress:seconds=3300", "EvoPress (drop sets searched whole; docs/search.md)"),
    ("damage", "measured damage (the least damaging block; docs/methods.md)"),
)
HEALED_ROWS = (("shortgpt", "ShortGPT"), ("angular", "angular distance"),
               ("streamline", "LLM-Streamline"), ("sleb", "SLEB"), ("mka", "MKA (NPIB)"),
               ("come", "CoMe"), ("damage", "measured damage"))
REMOVES = (3, 6, 9)


def _method_cell(r: dict | None, layers: int) -> str:
    if r is None:
        return "not run"
    if r["num_layers"] == layers and not r["removed"] and r["method"].startswith("laco"):
        return "no merge accepted"
    if r["method"] == "blockpruner":
        dropped = r["notes"].split(" in this order")[0].removeprefix("Dropped ").split(", ")
        return f"{_ppl(r['ppl'])} ({len(dropped)} blocks)"
    return _ppl(r["ppl"])


def methods_block() -> str:
    rows = _jsonl("methods_table.jsonl")
    by = {(r["method"], r["remove"]): r for r in rows}
    base = by[("original", 0)]
    out = [f"Dense: {_ppl(base['ppl'])} ({base['num_layers']} layers). Protocol: {base['protocol']}; "
           f"calibration {base['calibration']}.", "",
           "| method | " + " | ".join(f"{k} removed" for k in REMOVES) + " |",
           "|---|" + "---|" * len(REMOVES)]
    for key, label in METHOD_ROWS:
        if not any((key, k) in by for k in REMOVES):
            continue
        out.append(f"| {label} | " + " | ".join(_method_cell(by.get((key, k)), base["num_layers"])
                                              for k in REMOVES) + " |")
    return "\n".join(out)


def healed_block() -> str:
    cells = {(r["method"], r["remove"], r["mode"]): r["ppl"] for r in _jsonl("heal_table.jsonl")}
    out = ["| method | " + " | ".join(f"{k} removed" for k in REMOVES) + " |",
           "|---|" + "---|" * len(REMOVES)]
    for key, label in HEALED_ROWS:
        if not any((key, k, "none") in cells for k in REMOVES):
            continue
        row = []
        for k in REMOVES:
            vals = [cells.get((key, k, m)) for m in ("none", "closed-form", "layerwise")]
            row.append(" / ".join("not run" if v is None else _ppl(v, 1) for v in vals))
        out.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(out)


def single_drops_block() -> str:
    r = json.loads((RESULTS / "single_drops.json").read_text())
    drops = {int(k): v for k, v in r["drops"].items()}
    last = max(drops)
    order = sorted(drops, key=lambda k: drops[k])              # least damaging first
    return (f"Single layers, dropped one at a time ({r['protocol']}; {_ppl(r['dense'])} dense): "
            f"layer {last - 1} alone gives {_ppl(drops[last - 1], 1)} and layer {last} alone "
            f"{_ppl(drops[last], 1)}; layers 0 and 1 cost most ({_ppl(drops[0], 0)} and "
            f"{_ppl(drops[1], 1)}); the least damaging are layers "
            + ", ".join(f"{k} ({_ppl(drops[k], 1)})" for k in order[:3]) + ".")


@dataclass(frozen=True)
class Block:
    command: str                       # what regenerates its results file
    render: Callable[[], str]


BLOCKS: dict[str, Block] = {
    "methods-table": Block("python bench/methods_table.py", methods_block),
    "healed-table": Block("python bench/bench_heal.py --table", healed_block),
    "single-drops": Block("python bench/readme_figures.py --measure single-drops",
                          single_drops_block),
}


def start_marker(name: str) -> str:
    return f"<!-- generated: {name} figures ({BLOCKS[name].command}) -->"


def rendered(page: str) -> str:
    from explorer.cli.doc_tables import render

    for name, block in BLOCKS.items():
        page = render(page, start_marker(name), block.render())
    return page


# -- figures outside the blocks must name their command ----------------------------------------

FIGURE = re.compile(r"\b\d+\.\d+\s*(x|s|%|tokens/s)?\b|\b\d{2,}(,\d{3})*\s*(s|ms|tokens|MB|GB)\b")
NAMES_A_COMMAND = re.compile(r"bench/|python -m explorer|RESULTS\.md|docs/\w+\.md|tests/test_|"
                             r"[Tt]he papers")   # a figure quoted from a paper names the paper


def unsourced_paragraphs(page: str) -> list[str]:
    """Paragraphs of `page` outside generated blocks and code that state a measured figure but
    name no command, benchmark or results page it comes from."""
    text = re.sub(r"<!-- generated:.*?<!-- end generated -->", "", page, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"\A---.*?---", "", text, flags=re.S)     # the Space's front matter
    text = re.sub(r"https?://\S+", "", text)                 # addresses are not figures
    text = re.sub(r"Python \d+\.\d+", "", text)              # nor versions
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.lstrip().startswith(("|", "#", "!", "<!--")):
            continue
        if FIGURE.search(para) and not NAMES_A_COMMAND.search(para):
            out.append(para.strip().split("\n")[0][:100])
    return out


def problems() -> list[str]:
    page = README.read_text(encoding="utf-8")
    out = []
    try:
        if rendered(page) != page:
            out.append("README.md's generated figures differ from bench/results "
                       "(python bench/readme_figures.py --write)")
    except (ValueError, FileNotFoundError, KeyError) as exc:
        out.append(f"README.md: {exc}")
    out += [f"README.md: a figure with no command: '{p}...'" for p in unsourced_paragraphs(page)]
    return out


# -- measurements that no other benchmark takes -------------------------------------------------

def measure_single_drops() -> None:
    """Perplexity with each single layer dropped, the methods table's protocol (seqlen 512, 4,096
    tokens of the wiki evaluation half, fp32)."""
    from explorer import Variant, load_model, load_texts, perplexity

    lm = load_model("smollm2-135m", dtype="float32")
    texts = load_texts("wiki")
    dense = perplexity(lm, texts.evaluation, seqlen=512, max_tokens=4096, source="wiki")
    drops = {}
    for k in range(lm.num_layers):
        r = perplexity(lm, texts.evaluation, seqlen=512, max_tokens=4096, source="wiki",
                       variant=Variant.identity(lm).drop([k]))
        drops[str(k)] = r.ppl
        print(f"drop {k}: {r.ppl:.2f}", flush=True)
    out = {"model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF, fp32)", "dense": dense.ppl,
           "protocol": dense.protocol(), "drops": drops}
    (RESULTS / "single_drops.json").write_text(json.dumps(out, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--measure", choices=["single-drops"])
    args = ap.parse_args(argv)
    if args.measure == "single-drops":
        measure_single_drops()
    if args.write:
        README.write_text(rendered(README.read_text(encoding="utf-8")), encoding="utf-8")
    if args.check:
        bad = problems()
        print("\n".join(bad) or "README figures: every block matches its results, every figure "
                                 "names its command")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
