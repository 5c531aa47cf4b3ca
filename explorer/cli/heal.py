"""`heal`: heal a given variant (layers dropped with --drop, or a recipe's) with a healing mode, and
write the healed recipe with its fitted tensors (--out). Where `compress --heal` plans and heals
in one run, this heals a variant already chosen, e.g. a recipe saved earlier.

Ranks (`torchrun --nproc_per_node N -m explorer heal ...`, docs/scale.md): every mode runs as
data-parallel ranks. The fits (closed form, LinearPatch, Prune&Comp) add their per-layer sums
across ranks; the training modes (layerwise, distill, tail-finetune) give each rank its share of
every step's windows and add the gradients, so a global batch gives the one-process step.
Rank 0 alone prints the result and the progress and writes the recipe and its tensors.

Examples:
    python -m explorer heal --model smollm2-135m --drop 20,21 --mode closed-form --out r.json
    python -m explorer heal --model smollm2-135m --drop 20,21 --mode distill --heal-text news \
        --heal-seconds 240 --progress
    torchrun --nproc_per_node 2 -m explorer heal --model smollm2-135m --recipe r0.json \\
        --mode layerwise --heal-steps 200 --out r.json --json
"""

from __future__ import annotations

import sys

from explorer.core.errors import ExplorerError
from explorer.cli.common import load, model_args, read_recipe


def add(sub) -> None:
    from explorer.cli.options import add_heal_args
    from explorer.heal.registry import MODES

    p = sub.add_parser("heal", help="heal a variant (--drop or --recipe) with a healing mode and "
                       "save its recipe; runs as ranks under torchrun (docs/scale.md)")
    model_args(p)
    p.add_argument("--drop", default="", help="layers to drop, e.g. 3,7 or 10-12")
    p.add_argument("--recipe", default=None, help="a recipe JSON file to heal instead of --drop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="write the healed recipe here, its fitted tensors beside it "
                   "(export --recipe FILE.json writes the model)")
    p.add_argument("--progress", action="store_true", help="progress lines on stderr")
    add_heal_args(p)
    p.add_argument("--mode", dest="heal", metavar="MODE",
                   help="the healing mode (the same as --heal): " + ", ".join(MODES))


def run(args) -> dict:
    from explorer.apply.recipe import Recipe
    from explorer.cli.options import check_heal_args, heal_params
    from explorer.core.layer_lists import parse_layers
    from explorer.core.progress import printer
    from explorer.core.ranks import world
    from explorer.core.variant import Variant
    from explorer.heal.registry import heal

    if args.heal is None:
        raise ExplorerError("heal needs --mode MODE (closed-form, layerwise, ...)")
    if bool(args.drop) == bool(args.recipe):
        raise ExplorerError("heal needs the variant to heal: --drop LAYERS or --recipe FILE")
    check_heal_args(args)                                  # refused before the model loads
    if args.out and not args.out.endswith(".json"):
        raise ExplorerError(f"--out names the recipe file to write, ending in .json (got "
                            f"'{args.out}')")
    recipe = read_recipe(args.recipe) if args.recipe else None
    rank, size = world()
    lm = load(args)
    if recipe is not None:
        variant = recipe.build(lm, report=lambda line: rank == 0 and print(line, file=sys.stderr))
    else:
        variant = Variant.identity(lm).drop(parse_layers(args.drop))
    r = heal(variant, args.heal, text=args.heal_text or "wiki", steps=args.heal_steps,
             seconds=args.heal_seconds, seed=args.seed,
             progress=printer(sys.stderr) if args.progress and rank == 0 else None,
             **heal_params(args))
    if args.progress and rank == 0:
        print(file=sys.stderr)
    info = r.to_dict()
    info["history"] = [h for h in r.history if "held_out_ppl" in h]   # the watched points
    out = {"model": args.model, "ranks": size, **info}
    if args.out and rank == 0:               # ranks: one recipe, written by rank 0
        saved = Recipe.of(r.variant, recipe.method if recipe else "manual",
                          recipe.params if recipe else None,
                          results={"held_out_before": r.held_out_before,
                                   "held_out_after": r.held_out_after})
        missing = saved.save(args.out, lm)
        out.update(out=args.out, refit_on_replay=missing)
    return out
