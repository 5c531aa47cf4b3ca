"""`eval`: perplexity of a model, optionally with layers dropped (the original's figure beside it),
plus lm-eval tasks, the capability check and measured speed when asked.

--checkpoint FOLDER runs each perplexity pass layer by layer and saves it after every layer (the
dense pass in FOLDER/dense, the variant's in FOLDER/variant; under ranks each rank its shard in
rank-r-of-N/ below them); a killed run started again with --resume goes on from the layer saved.
"""

from __future__ import annotations

from explorer.core.layer_lists import parse_layers
from explorer.cli.common import (checkpoint_args, layer_checkpoint, load, model_args, ppl,
                                 resumable, text_args)
from explorer.cli.options import (add_speed_args, add_task_args, check_speed_args, check_task_args,
                                  cli_extras, cli_speed)


def add(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a model, optionally with layers dropped")
    model_args(p)
    text_args(p)
    p.add_argument("--drop", default="", help="layers to drop, e.g. 3,7 or 10-12")
    checkpoint_args(p)
    add_task_args(p)
    add_speed_args(p)


def run(args) -> dict:
    from explorer.core.variant import Variant

    check_task_args(args)                                   # refused before the model loads
    check_speed_args(args)
    passes = {"dense": layer_checkpoint(args, "dense")}     # --checkpoint: a folder a pass
    lm = load(args)
    variant = Variant.identity(lm).drop(parse_layers(args.drop)) if args.drop else None
    compared = {}
    with resumable(args):
        if variant is not None:   # the original's figure beside it (cached after the first run)
            before = ppl(lm, args, checkpoint=passes["dense"])
            compared = {"layers_before": lm.num_layers, "ppl_before": before.ppl}
            passes["variant"] = layer_checkpoint(args, "variant")
        r = ppl(lm, args, variant, checkpoint=passes["variant" if variant else "dense"])
    if variant is not None:
        compared.update(ppl_after=r.ppl, ppl_ratio=r.ppl / compared["ppl_before"])
    if args.checkpoint:           # the layer each pass went on from (rank 0's, under ranks)
        compared["resumed_at_layer"] = {name: cp.resumed_at for name, cp in passes.items()
                                        if cp.resumed_at is not None}
    return {"model": args.model, "num_layers": variant.num_layers if variant else lm.num_layers,
            "dropped": parse_layers(args.drop), **compared, **r.to_dict(),
            **cli_extras(lm, args, variant), **cli_speed(lm, args, variant)}

