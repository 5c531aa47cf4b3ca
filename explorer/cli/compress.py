"""`compress`: plan with a method of the field, compare perplexity, and optionally heal, gate by a
perplexity ratio (`--max-ppl-ratio`), run tasks, time it and export.

Ranks (`torchrun --nproc_per_node N -m explorer compress ...`, docs/scale.md): every method runs;
the probe, the perplexities and the searches' candidate scores are computed on each rank's shard
of the windows and combined, every other step runs whole on every rank, and rank 0 alone prints
and exports (`--out`: one folder, one recipe). `--heal` runs every healing mode as ranks, as the
`heal` command does (the fits add their sums across ranks, the training modes split each step's
windows and add the gradients); the healed export is rank 0's alone."""

from __future__ import annotations

from explorer.core.errors import ExplorerError
from explorer.cli.common import listing_parser, load, model_args, parse_params, ppl, text_args
from explorer.cli.options import (add_heal_args, add_speed_args, add_task_args, check_heal_args,
                                  check_speed_args, check_task_args, cli_extras, cli_speed,
                                  heal_params, heal_result)


def add(sub) -> None:
    from explorer.plan import METHODS, methods_help

    p = listing_parser(sub, "compress", "merge or prune layers with a method of the field "
                        "(explorer.plan), then compare perplexity; under `torchrun "
                        "--nproc_per_node N` it runs as N data-parallel ranks (docs/scale.md)",
                        "methods", methods_help())
    model_args(p)
    text_args(p)
    p.add_argument("--method", default=None, help=", ".join(METHODS) + " (required)")
    p.add_argument("--help-params", action="store_true",
                   help="print the parameters of --method (or of every method) and exit")
    p.add_argument("--remove", type=int, default=None, help="layers by which the model shrinks")
    p.add_argument("--ratio", type=float, default=None,
                   help="fraction of parameters to remove instead of --remove")
    p.add_argument("--max-ppl-ratio", default=None, metavar="R",
                   help="instead of --remove: the largest removal whose perplexity stays within "
                        "R x dense (healed when --heal is given), e.g. 1.5 (explorer.evaluate.gate)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="method parameter, e.g. T=0.3, replacement=linear or pairs=[[3,4]] (read "
                        "as the parameter's declared type); repeatable")
    p.add_argument("--calib-seqlen", type=int, default=128, help="calibration window length")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="export the result (and its recipe) to this folder")
    p.add_argument("--overwrite", action="store_true")
    add_task_args(p)
    add_heal_args(p)
    add_speed_args(p)


def run(args) -> dict | str:
    import time

    from explorer.export.folder import export
    from explorer.plan import METHODS, compress, get_method
    from explorer.apply.recipe import Recipe
    from explorer.core.ranks import world
    from explorer.probe.text import load_texts

    if args.help_params:
        return _params_help(args)
    if not args.method:
        raise ExplorerError("compress needs --method; one of: " + ", ".join(METHODS))
    method = get_method(args.method)
    params = method.resolve(parse_params(args.param))      # refused before the model loads
    check_task_args(args)
    check_heal_args(args)
    check_speed_args(args)
    rank, size = world()
    if args.max_ppl_ratio is not None:
        from explorer.evaluate.gate import check_gate
        check_gate(args.max_ppl_ratio)
        if args.remove is not None or args.ratio is not None:
            raise ExplorerError("--max-ppl-ratio chooses the size itself: give it without "
                                "--remove or --ratio")
    lm = load(args)
    texts = load_texts(args.text)
    start = time.perf_counter()
    if args.max_ppl_ratio is not None:    # the largest size within the gate (explorer/evaluate/gate.py)
        plan, variant, result = _gated(lm, args, texts, params)
    else:
        plan = compress(lm, args.method, remove=args.remove, ratio=args.ratio,
                        calibration=texts.calibration, calibration_source=texts.source,
                        seqlen=args.calib_seqlen, num_samples=args.calib_samples,
                        seed=args.seed, **params)
        plan_seconds = time.perf_counter() - start
        before = ppl(lm, args, texts=texts, calibrated=True)   # cached after the first call
        after = ppl(lm, args, plan.variant, texts=texts, calibrated=True)
        result = {"model": args.model, "method": plan.method, "ppl_before": before.ppl,
                  "ppl_after": after.ppl, "removed": plan.removed, "merged": plan.merged,
                  "num_layers": plan.variant.num_layers, "params": plan.params,
                  "protocol": after.protocol(), "notes": plan.notes,
                  "plan_seconds": round(plan_seconds, 2),
                  # explorer/core/dense_cache.py: the dense figure reused, the boundary "after" ran
                  # from
                  "ppl_before_cached": before.cached, "ppl_after_start": after.start}
        variant = plan.variant
        if args.heal:      # ppl_healed, heal, out_of_domain (cli/options.py)
            variant, healed = heal_result(lm, args, variant, texts,
                                          lambda v: ppl(lm, args, v, texts=texts,
                                                         calibrated=True))
            result.update(healed)
    result.update(cli_extras(lm, args, plan.variant, calibrated=True))
    result.update(cli_speed(lm, args, variant))
    if args.out and rank == 0:            # ranks: rank 0 alone writes the export and its recipe
        recipe = Recipe.of(variant, plan.method, plan.params,
                           results={k: result[k] for k in ("ppl_before", "ppl_after", "protocol",
                                                          "ppl_healed", "tasks", "capability",
                                                          "gate", "speed")
                                    if k in result})
        result["out"] = str(export(variant, args.out, recipe=recipe,
                                   overwrite=args.overwrite))
    return result


def _params_help(args) -> dict | str:
    """--help-params: the declared parameters of one method, or of all (text, or JSON rows)."""
    from explorer.plan import get_method, list_methods
    from explorer.core.params import describe, help_text

    methods = [get_method(args.method)] if args.method else list_methods()
    if not args.json:
        return help_text([(m.name, m.title, m.params) for m in methods])
    return {"methods": {m.name: [{**row, "choices": list(row["choices"] or []) or None}
                                 for row in describe(m.params)] for m in methods}}


def _gated(lm, args, texts, params: dict) -> tuple:
    """compress --max-ppl-ratio: (plan, final variant, the JSON entries) of `quality_gate`."""
    from explorer.evaluate.gate import quality_gate

    text, source = texts.for_evaluation(True)
    g = quality_gate(lm, args.method, args.max_ppl_ratio, evaluation=text,
                     evaluation_source=source, calibration=texts.calibration,
                     calibration_source=texts.source, seqlen=args.seqlen,
                     max_tokens=args.max_tokens or None, bos=args.bos,
                     calib_seqlen=args.calib_seqlen, calib_samples=args.calib_samples,
                     seed=args.seed, heal=args.heal, heal_steps=args.heal_steps,
                     heal_seconds=args.heal_seconds,
                     heal_params=heal_params(args) if args.heal else None, **params)
    result = {"model": args.model, "method": g.method, "ppl_before": g.dense_ppl,
              "ppl_after": g.ppl_unhealed, "removed": g.plan.removed, "merged": g.plan.merged,
              "num_layers": g.variant.num_layers, "params": g.plan.params,
              "protocol": g.protocol, "notes": g.plan.notes, "gate": g.to_dict()}
    if args.heal:
        result["ppl_healed"] = g.ppl
    return g.plan, g.variant, result

