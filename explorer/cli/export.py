"""`export`: a variant as a transformers folder (or one GGUF file), from --drop or a recipe."""

from __future__ import annotations

import sys

from explorer.core.errors import ExplorerError
from explorer.core.layer_lists import parse_layers
from explorer.cli.common import load, model_args, read_recipe


def add(sub) -> None:
    p = sub.add_parser("export", help="save a model with layers dropped as a transformers folder")
    model_args(p)
    p.add_argument("--drop", default="", help="layers to drop, e.g. 3,7 or 10-12")
    p.add_argument("--recipe", default=None, help="a recipe JSON file to replay instead of --drop")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--format", default="folder", choices=["folder", "gguf"],
                   help="a transformers folder, or one GGUF file for llama.cpp (--out x.gguf)")
    p.add_argument("--quant", default=None, choices=["f16", "q8_0"],
                   help="GGUF weight type (default f16)")


def run(args) -> dict:
    from explorer.export.folder import export
    from explorer.apply.recipe import Recipe
    from explorer.core.variant import Variant

    lm = load(args)
    if args.recipe:
        recipe = read_recipe(args.recipe)     # with the fitted tensors saved next to it
        variant = recipe.build(lm, report=lambda line: print(line, file=sys.stderr))
    else:
        variant = Variant.identity(lm).drop(parse_layers(args.drop)) if args.drop \
            else Variant.identity(lm)
        recipe = Recipe.of(variant)
    if args.format == "gguf":
        from explorer.export.gguf import export_gguf
        return {"model": args.model, "ops": recipe.ops, **export_gguf(
            variant, args.out, quant=args.quant or "f16", recipe=recipe,
            overwrite=args.overwrite).to_dict()}
    if args.quant:
        raise ExplorerError("--quant is for --format gguf")
    out = export(variant, args.out, recipe=recipe, overwrite=args.overwrite)
    import json

    from explorer.load.selfcheck import EXPORT_CHECK_FILE

    check = out / EXPORT_CHECK_FILE
    return {"model": args.model, "num_layers": variant.num_layers, "out": str(out),
            "ops": recipe.ops,
            "reload_check": json.loads(check.read_text()) if check.is_file() else None}

