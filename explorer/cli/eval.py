"""`eval`: perplexity of a model, optionally with layers dropped (the original's figure beside it),
plus lm-eval tasks, the capability check and measured speed when asked."""

from __future__ import annotations

from explorer.core.layer_lists import parse_layers
from explorer.cli.common import load, model_args, ppl, text_args
from explorer.cli.options import (add_speed_args, add_task_args, check_speed_args, check_task_args,
                                  cli_extras, cli_speed)


def add(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a model, optionally with layers dropped")
    model_args(p)
    text_args(p)
    p.add_argument("--drop", default="", help="layers to drop, e.g. 3,7 or 10-12")
    add_task_args(p)
    add_speed_args(p)


def run(args) -> dict:
    from explorer.core.variant import Variant

    check_task_args(args)                                   # refused before the model loads
    check_speed_args(args)
    lm = load(args)
    variant = Variant.identity(lm).drop(parse_layers(args.drop)) if args.drop else None
    compared = {}
    if variant is not None:     # the original's figure beside it (cached after the first run)
        before = ppl(lm, args)
        compared = {"layers_before": lm.num_layers, "ppl_before": before.ppl}
    r = ppl(lm, args, variant)
    if variant is not None:
        compared.update(ppl_after=r.ppl, ppl_ratio=r.ppl / compared["ppl_before"])
    return {"model": args.model, "num_layers": variant.num_layers if variant else lm.num_layers,
            "dropped": parse_layers(args.drop), **compared, **r.to_dict(),
            **cli_extras(lm, args, variant), **cli_speed(lm, args, variant)}

