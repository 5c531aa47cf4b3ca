"""`report`: one self-contained HTML file of the analysis, the plan, perplexity before and after,
the healing and greedy generations (explorer/report/build.py)."""

from __future__ import annotations

from explorer.core.errors import ExplorerError
from explorer.core.layer_lists import parse_layers
from explorer.cli.common import load, model_args, read_recipe, text_args


def add(sub) -> None:
    from explorer.measure.manifold import LAYER_METHODS
    from explorer.measure.measures import MEASURES

    p = sub.add_parser("report", help="one self-contained HTML file of the analysis, the plan, "
                       "perplexity before/after, healing and generations (explorer.report.build)")
    model_args(p)
    text_args(p)
    p.add_argument("--drop", default="", help="layers to drop, e.g. 3,7 or 10-12")
    p.add_argument("--recipe", default=None, help="a recipe JSON file to replay instead of --drop "
                   "(a healing as its last step is redone and shown)")
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--measures", default="cosine,angular",
                   help="heatmaps, in order (comma list of: " + ", ".join(MEASURES) + ")")
    p.add_argument("--calib-seqlen", type=int, default=128, help="tokens per analysis window")
    p.add_argument("--calib-samples", type=int, default=32, help="analysis windows")
    p.add_argument("--gen-tokens", type=int, default=24,
                   help="new tokens per greedy generation (0: none)")
    p.add_argument("--damage", type=int, default=0, metavar="N",
                   help="also measure the damage map of every block up to N layers on the "
                        "analysis windows, and each similarity's rank correlation with it "
                        "(0: none; one pass per candidate)")
    p.add_argument("--layer-map", default="mds", choices=list(LAYER_METHODS),
                   help="how the layer map places the boundaries")


def run(args) -> dict:
    from explorer.measure.measures import get_measure
    from explorer.report.build import (ReportSizes, Subject, build_report, check_output,
                                       subject_of_recipe)
    from explorer.probe.text import load_texts
    from explorer.core.variant import Variant

    # refused before the model loads: the output, the layer list's syntax, the measures, sizes
    check_output(args.out, args.overwrite)
    if args.recipe and args.drop:
        raise ExplorerError("give --drop or --recipe, not both")
    layers = parse_layers(args.drop)
    measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    if not measures:
        raise ExplorerError("--measures needs at least one measure")
    for m in measures:
        get_measure(m)
    for name, value, low in (("--seqlen", args.seqlen, 4), ("--calib-seqlen", args.calib_seqlen, 4),
                             ("--calib-samples", args.calib_samples, 1),
                             ("--gen-tokens", args.gen_tokens, 0),
                             ("--max-tokens", args.max_tokens, 0), ("--damage", args.damage, 0)):
        if value < low:
            raise ExplorerError(f"{name} must be at least {low} (got {value})")
    recipe = read_recipe(args.recipe) if args.recipe else None
    lm = load(args)
    texts = load_texts(args.text)
    subject = subject_of_recipe(lm, recipe) if recipe else \
        Subject(Variant.identity(lm).drop(layers) if layers else Variant.identity(lm))
    sizes = ReportSizes(probe_seqlen=args.calib_seqlen, probe_samples=args.calib_samples,
                        seqlen=args.seqlen, max_tokens=args.max_tokens or None, bos=args.bos,
                        gen_tokens=args.gen_tokens, layer_map=args.layer_map)
    report = build_report(lm, texts, subject, sizes=sizes, measures=measures,
                          damage=args.damage or None)
    out = report.write(args.out, args.overwrite)
    return {**report.summary, "out": str(out), "bytes": len(report.html.encode())}

