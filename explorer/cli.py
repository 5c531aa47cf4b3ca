"""Command line over the same API as the web app: `python -m explorer COMMAND ...` or `layer-explorer`.

Every command takes --json and then prints exactly one JSON object on stdout. Errors caused by input
print one line, "error: ...", on stderr and exit with status 2.

Adding a command: write `def cmd_NAME(args) -> dict` (the JSON object; `_print_text` renders it for
humans; a `str` is printed as it is) and `def add_NAME(sub)` that declares its arguments, then list
it in `COMMANDS`. Method and measure lists and their parameters come from the registries
(`compress --help`, `compress --method laco --help-params`, `similarity --help`).

Examples:
    python -m explorer eval --model smollm2-135m --text wiki --json
    python -m explorer eval --model smollm2-135m --drop 14,15 --seqlen 256 --max-tokens 4096
    python -m explorer export --model smollm2-135m --drop 14 --out exports/smol-drop14
    python -m explorer report --model smollm2-135m --drop 14,15 --out report.html
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Callable, TextIO

from .errors import ExplorerError, one_line
from .layer_lists import parse_layers


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="embedded name, Hugging Face id, model folder or .gguf file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model repository's own Python code to run (off by default)")
    p.add_argument("--offload", default="auto", choices=["auto", "cpu", "disk", "none"],
                   help="a model that does not fit: auto streams its layers one at a time (from "
                        "CPU RAM to a GPU, else from its files on disk); cpu/disk force it; none "
                        "refuses it (docs/scale.md)")
    p.add_argument("--max-memory", default=None,
                   help="memory to use at most, e.g. 6GiB (the compute device) or "
                        "cpu=8GiB,cuda:0=20GiB")
    p.add_argument("--device-map", default=None,
                   help="accelerate's device map (e.g. auto: spread over the GPUs, the rest "
                        "offloaded to CPU or --offload-folder)")
    p.add_argument("--offload-folder", default=None,
                   help="folder for boundary states beyond the RAM budget and for accelerate's "
                        "disk offload")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", default="wiki",
                   help="wiki, news, wikitext2 (their evaluation half) or a .txt path (evaluated "
                        "whole; compress calibrates on one half and evaluates on the other)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per perplexity window")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="evaluate at most this many tokens (0: all)")
    p.add_argument("--bos", default="auto", choices=["auto", "always", "never"],
                   help="BOS token in front of each window")


def _load(args):
    from .load import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code,
                      offload=getattr(args, "offload", "auto"),
                      max_memory=getattr(args, "max_memory", None),
                      device_map=getattr(args, "device_map", None),
                      offload_folder=getattr(args, "offload_folder", None),
                      progress=_load_progress(args))


def _load_progress(args):
    """Print load_model's offload decision (one line on stderr): the user sees why a pass is
    slower than usual."""
    import sys

    def progress(event) -> None:
        if "one at a time" in event.note:
            print(event.describe(), file=sys.stderr)
    return progress


def _ppl(lm, args, variant=None, texts=None, calibrated: bool = False):
    """Perplexity on --text: a user's file whole, or only its evaluation half when the command
    also calibrates on it (`calibrated`; the protocol line then says so)."""
    from .evaluate import perplexity
    from .text import load_texts

    text, source = (texts or load_texts(args.text)).for_evaluation(calibrated)
    return perplexity(lm, text, variant=variant, seqlen=args.seqlen,
                      max_tokens=args.max_tokens or None, bos=args.bos, source=source)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a model, optionally with layers dropped")
    _model_args(p)
    _text_args(p)
    p.add_argument("--drop", default="", help="layers to drop, e.g. 3,7 or 10-12")
    from .tasks import add_task_args
    add_task_args(p)
    from .speed import add_speed_args
    add_speed_args(p)


def cmd_eval(args) -> dict:
    from .speed import check_speed_args, cli_speed
    from .tasks import check_task_args, cli_extras
    from .variant import Variant

    check_task_args(args)                                   # refused before the model loads
    check_speed_args(args)
    lm = _load(args)
    variant = Variant.identity(lm).drop(parse_layers(args.drop)) if args.drop else None
    compared = {}
    if variant is not None:     # the original's figure beside it (cached after the first run)
        before = _ppl(lm, args)
        compared = {"layers_before": lm.num_layers, "ppl_before": before.ppl}
    r = _ppl(lm, args, variant)
    if variant is not None:
        compared.update(ppl_after=r.ppl, ppl_ratio=r.ppl / compared["ppl_before"])
    return {"model": args.model, "num_layers": variant.num_layers if variant else lm.num_layers,
            "dropped": parse_layers(args.drop), **compared, **r.to_dict(),
            **cli_extras(lm, args, variant), **cli_speed(lm, args, variant)}


def add_export(sub) -> None:
    p = sub.add_parser("export", help="save a model with layers dropped as a transformers folder")
    _model_args(p)
    p.add_argument("--drop", default="", help="layers to drop, e.g. 3,7 or 10-12")
    p.add_argument("--recipe", default=None, help="a recipe JSON file to replay instead of --drop")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--format", default="folder", choices=["folder", "gguf"],
                   help="a transformers folder, or one GGUF file for llama.cpp (--out x.gguf)")
    p.add_argument("--quant", default=None, choices=["f16", "q8_0"],
                   help="GGUF weight type (default f16)")


def cmd_export(args) -> dict:
    from .export import export
    from .recipe import Recipe
    from .variant import Variant

    lm = _load(args)
    if args.recipe:
        recipe = _read_recipe(args.recipe)     # with the fitted tensors saved next to it
        variant = recipe.build(lm, report=lambda line: print(line, file=sys.stderr))
    else:
        variant = Variant.identity(lm).drop(parse_layers(args.drop)) if args.drop \
            else Variant.identity(lm)
        recipe = Recipe.of(variant)
    if args.format == "gguf":
        from .gguf_export import export_gguf
        return {"model": args.model, "ops": recipe.ops, **export_gguf(
            variant, args.out, quant=args.quant or "f16", recipe=recipe,
            overwrite=args.overwrite).to_dict()}
    if args.quant:
        raise ExplorerError("--quant is for --format gguf")
    out = export(variant, args.out, recipe=recipe, overwrite=args.overwrite)
    return {"model": args.model, "num_layers": variant.num_layers, "out": str(out),
            "ops": recipe.ops}


def _read_recipe(name: str):
    """The `Recipe` in the file `name` (--recipe) with the fitted tensors saved next to it, or one
    line saying why not."""
    from pathlib import Path

    from .recipe import Recipe

    if not Path(name).is_file():
        raise ExplorerError(f"recipe file '{name}' does not exist")
    return Recipe.load(name)


def add_report(sub) -> None:
    from .manifold import LAYER_METHODS
    from .measure import MEASURES

    p = sub.add_parser("report", help="one self-contained HTML file of the analysis, the plan, "
                       "perplexity before/after, healing and generations (explorer.report)")
    _model_args(p)
    _text_args(p)
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
    p.add_argument("--layer-map", default="mds", choices=list(LAYER_METHODS),
                   help="how the layer map places the boundaries")


def cmd_report(args) -> dict:
    from .measure import get_measure
    from .report import ReportSizes, Subject, build_report, check_output, subject_of_recipe
    from .text import load_texts
    from .variant import Variant

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
                             ("--max-tokens", args.max_tokens, 0)):
        if value < low:
            raise ExplorerError(f"{name} must be at least {low} (got {value})")
    recipe = _read_recipe(args.recipe) if args.recipe else None
    lm = _load(args)
    texts = load_texts(args.text)
    subject = subject_of_recipe(lm, recipe) if recipe else \
        Subject(Variant.identity(lm).drop(layers) if layers else Variant.identity(lm))
    sizes = ReportSizes(probe_seqlen=args.calib_seqlen, probe_samples=args.calib_samples,
                        seqlen=args.seqlen, max_tokens=args.max_tokens or None, bos=args.bos,
                        gen_tokens=args.gen_tokens, layer_map=args.layer_map)
    report = build_report(lm, texts, subject, sizes=sizes, measures=measures)
    out = report.write(args.out, args.overwrite)
    return {**report.summary, "out": str(out), "bytes": len(report.html.encode())}


def _listing_parser(sub, name: str, help: str, what: str, listing: str):
    """A subcommand whose help ends with a registry's components and their parameters."""
    return sub.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog=f"{what} and their parameters (--param NAME=VALUE):\n{listing}")


def add_similarity(sub) -> None:
    from .measure import MEASURES, measures_help

    p = _listing_parser(sub, "similarity", "layer-by-layer similarity matrix of the residual "
                        "stream (explorer.measure)", "measures", measures_help())
    _model_args(p)
    p.add_argument("--measure", default="cosine", help=", ".join(MEASURES))
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="measure parameter, e.g. max_tokens=4096 (see below); repeatable")
    p.add_argument("--text", default="wiki", help="wiki, news, wikitext2 or a .txt path")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per calibration window")
    p.add_argument("--samples", type=int, default=32, help="calibration windows")
    p.add_argument("--bos", default="auto", choices=["auto", "always", "never"],
                   help="BOS token in front of each window")
    p.add_argument("--keep-first", action="store_true",
                   help="also use the first position of each window (massive activations)")
    p.add_argument("--models", default="", help="several models side by side (a,b,c): one "
                   "adjacent-layer profile each on relative depth 0..1, instead of --model's matrix")


def cmd_similarity(args) -> dict:
    import time

    from .measure import get_measure, similarity
    from .probe import probe
    from .text import load_texts

    info = get_measure(args.measure)
    params = info.resolve(parse_params(args.param))        # refused before the model loads
    if args.models:
        from .profiles import cli_profiles
        return cli_profiles(args, params)
    lm = _load(args)
    texts = load_texts(args.text)
    pr = probe(lm, texts.calibration, seqlen=args.seqlen, num_samples=args.samples,
               bos=args.bos, skip_first=not args.keep_first)
    start = time.perf_counter()
    matrix = similarity(pr, args.measure, **params)
    return {"model": args.model, "measure": info.name, "title": info.title,
            "higher_is_similar": info.higher_is_similar, "paper": info.paper,
            "num_layers": pr.num_layers, "num_tokens": pr.num_tokens,
            "skip_first": pr.skip_first, "text": texts.source,
            "matrix": [[round(v, 6) for v in row] for row in matrix.tolist()],
            "adjacent": [round(v, 6) for v in matrix.diagonal(1).tolist()],
            "probe_seconds": round(pr.seconds, 2),
            "measure_seconds": round(time.perf_counter() - start, 2)}


def add_compress(sub) -> None:
    from .methods import METHODS, methods_help

    p = _listing_parser(sub, "compress", "merge or prune layers with a method of the field "
                        "(explorer.methods), then compare perplexity", "methods", methods_help())
    _model_args(p)
    _text_args(p)
    p.add_argument("--method", default=None, help=", ".join(METHODS) + " (required)")
    p.add_argument("--help-params", action="store_true",
                   help="print the parameters of --method (or of every method) and exit")
    p.add_argument("--remove", type=int, default=None, help="layers by which the model shrinks")
    p.add_argument("--ratio", type=float, default=None,
                   help="fraction of parameters to remove instead of --remove")
    p.add_argument("--max-ppl-ratio", default=None, metavar="R",
                   help="instead of --remove: the largest removal whose perplexity stays within "
                        "R x dense (healed when --heal is given), e.g. 1.5 (explorer.gate)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="method parameter, e.g. T=0.3, replacement=linear or pairs=[[3,4]] (read "
                        "as the parameter's declared type); repeatable")
    p.add_argument("--calib-seqlen", type=int, default=128, help="calibration window length")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="export the result (and its recipe) to this folder")
    p.add_argument("--overwrite", action="store_true")
    from .tasks import add_task_args
    add_task_args(p)
    from .heal.command import add_heal_args
    add_heal_args(p)
    from .speed import add_speed_args
    add_speed_args(p)


def parse_params(items: list[str]) -> dict[str, str]:
    """["T=0.3", "replacement=linear"] -> {"T": "0.3", ...}: text, which the declared parameters
    (explorer.params) read as their own types."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ExplorerError(f"--param '{item}' must look like NAME=VALUE")
        out[name.strip()] = value
    return out


def _params_help(args) -> dict | str:
    """--help-params: the declared parameters of one method, or of all (text, or JSON rows)."""
    from .methods import get_method, list_methods
    from .params import describe, help_text

    methods = [get_method(args.method)] if args.method else list_methods()
    if not args.json:
        return help_text([(m.name, m.title, m.params) for m in methods])
    return {"methods": {m.name: [{**row, "choices": list(row["choices"] or []) or None}
                                 for row in describe(m.params)] for m in methods}}


def cmd_compress(args) -> dict | str:
    import time

    from .export import export
    from .methods import METHODS, compress, get_method
    from .recipe import Recipe
    from .text import load_texts

    if args.help_params:
        return _params_help(args)
    if not args.method:
        raise ExplorerError("compress needs --method; one of: " + ", ".join(METHODS))
    method = get_method(args.method)
    params = method.resolve(parse_params(args.param))      # refused before the model loads
    from .tasks import check_task_args, cli_extras
    check_task_args(args)
    from .heal.command import check_heal_args, heal_result
    check_heal_args(args)
    from .speed import check_speed_args, cli_speed
    check_speed_args(args)
    if args.max_ppl_ratio is not None:
        from .gate import check_gate
        check_gate(args.max_ppl_ratio)
        if args.remove is not None or args.ratio is not None:
            raise ExplorerError("--max-ppl-ratio chooses the size itself: give it without "
                                "--remove or --ratio")
    lm = _load(args)
    texts = load_texts(args.text)
    start = time.perf_counter()
    if args.max_ppl_ratio is not None:    # the largest size within the gate (explorer/gate.py)
        plan, variant, result = _gated(lm, args, texts, params)
    else:
        plan = compress(lm, args.method, remove=args.remove, ratio=args.ratio,
                        calibration=texts.calibration, calibration_source=texts.source,
                        seqlen=args.calib_seqlen, num_samples=args.calib_samples,
                        seed=args.seed, **params)
        plan_seconds = time.perf_counter() - start
        before = _ppl(lm, args, texts=texts, calibrated=True)   # cached after the first call
        after = _ppl(lm, args, plan.variant, texts=texts, calibrated=True)
        result = {"model": args.model, "method": plan.method, "ppl_before": before.ppl,
                  "ppl_after": after.ppl, "removed": plan.removed, "merged": plan.merged,
                  "num_layers": plan.variant.num_layers, "params": plan.params,
                  "protocol": after.protocol(), "notes": plan.notes,
                  "plan_seconds": round(plan_seconds, 2),
                  # explorer/dense_cache.py: the dense figure reused, the boundary "after" ran
                  # from
                  "ppl_before_cached": before.cached, "ppl_after_start": after.start}
        variant = plan.variant
        if args.heal:      # ppl_healed, heal, out_of_domain (explorer/heal/command.py)
            variant, healed = heal_result(lm, args, variant, texts,
                                          lambda v: _ppl(lm, args, v, texts=texts,
                                                         calibrated=True))
            result.update(healed)
    result.update(cli_extras(lm, args, plan.variant, calibrated=True))
    result.update(cli_speed(lm, args, variant))
    if args.out:
        recipe = Recipe.of(variant, plan.method, plan.params,
                           results={k: result[k] for k in ("ppl_before", "ppl_after", "protocol",
                                                          "ppl_healed", "tasks", "capability",
                                                          "gate", "speed")
                                    if k in result})
        result["out"] = str(export(variant, args.out, recipe=recipe,
                                   overwrite=args.overwrite))
    return result


def _gated(lm, args, texts, params: dict) -> tuple:
    """compress --max-ppl-ratio: (plan, final variant, the JSON entries) of `quality_gate`."""
    from .gate import quality_gate
    from .heal.command import _heal_params

    text, source = texts.for_evaluation(True)
    g = quality_gate(lm, args.method, args.max_ppl_ratio, evaluation=text,
                     evaluation_source=source, calibration=texts.calibration,
                     calibration_source=texts.source, seqlen=args.seqlen,
                     max_tokens=args.max_tokens or None, bos=args.bos,
                     calib_seqlen=args.calib_seqlen, calib_samples=args.calib_samples,
                     seed=args.seed, heal=args.heal, heal_steps=args.heal_steps,
                     heal_seconds=args.heal_seconds,
                     heal_params=_heal_params(args) if args.heal else None, **params)
    result = {"model": args.model, "method": g.method, "ppl_before": g.dense_ppl,
              "ppl_after": g.ppl_unhealed, "removed": g.plan.removed, "merged": g.plan.merged,
              "num_layers": g.variant.num_layers, "params": g.plan.params,
              "protocol": g.protocol, "notes": g.plan.notes, "gate": g.to_dict()}
    if args.heal:
        result["ppl_healed"] = g.ppl
    return g.plan, g.variant, result


BENCHES = ("perplexity", "probe", "variant", "measures", "speed", "gpu")  # bench/bench_NAME.py


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmarks against the naive way (bench/), as a table")
    p.add_argument("--model", default="smollm2-135m", help="model the CPU benchmarks use")
    p.add_argument("--only", default="", help="comma list of: " + ", ".join(BENCHES))
    p.add_argument("--full", action="store_true", help="more tokens and repetitions (slower)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _bench_package(root) -> None:
    """Make `bench` (the source tree's folder, not part of the installed package) importable as a
    package by its path, without putting the source root on sys.path."""
    import importlib.util

    if "bench" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "bench", root / "bench" / "__init__.py", submodule_search_locations=[str(root / "bench")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)


def cmd_bench(args) -> dict:
    """Run bench/bench_NAME.run(quick) for each benchmark; one model load shared where possible."""
    import importlib
    import inspect
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "common.py").is_file():
        raise ExplorerError(f"the benchmarks live in the source tree ({root / 'bench'} is "
                            "missing): run from a git checkout of Layer Explorer")
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        raise ExplorerError(f"unknown benchmark(s) {', '.join(unknown)}; known: "
                            + ", ".join(BENCHES))
    _bench_package(root)
    common = importlib.import_module("bench.common")
    start = time.perf_counter()
    lm = None
    rows: list[dict] = []
    for name in names:
        if not (root / "bench" / f"bench_{name}.py").is_file():
            rows.append(common.row(name, "not benched", None, None, "-", higher_is_better=True,
                                   note=f"bench/bench_{name}.py is not there yet"))
            continue
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)  # stdout keeps the result
        module = importlib.import_module(f"bench.bench_{name}")
        kwargs = {}
        if name != "gpu" and "lm" in inspect.signature(module.run).parameters:
            if lm is None:
                lm = _load(argparse.Namespace(model=args.model, device="cpu", dtype="auto",
                                              trust_remote_code=False))
            kwargs["lm"] = lm
        for r in module.run(not args.full, **kwargs):
            common.check_row(r)
            rows.append(r)
    m = common.machine()
    machine = (f"{m['cpu']}, {m['nproc']} cores ({m['torch_threads']} torch threads), "
               f"{m.get('gpu') or 'no GPU'}, torch {m['torch']}, transformers {m['transformers']}"
               f", {m['date']}")
    return {"machine": machine, "seconds": round(time.perf_counter() - start, 1),
            "table": "\n" + common.format_table(rows), "rows": rows}


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "eval": (add_eval, cmd_eval),
    "export": (add_export, cmd_export),
    "similarity": (add_similarity, cmd_similarity),
    "compress": (add_compress, cmd_compress),
    "report": (add_report, cmd_report),
    "bench": (add_bench, cmd_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layer-explorer",
                                     description="Explore, merge and drop transformer layers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


# Fields the text output leaves to --json: per-window values, and the boundary a variant's pass
# started from (stored dense states before its first change: a speed detail, not a result).
JSON_ONLY = ("window_nll", "start")


def _print_text(result: dict) -> None:
    for key, value in result.items():
        if key in JSON_ONLY:
            continue
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, (list, dict)) and len(json.dumps(value)) > 200:
            value = json.dumps(value)[:200] + " ..."
        print(f"{key:>18}: {value}")


def quiet_libraries() -> None:
    """Silence the libraries' own logging, warnings and progress bars (huggingface_hub's retry
    lines, transformers' "Loading weights" bars): a failing command then prints exactly one line,
    ours. `--verbose` or LAYER_EXPLORER_VERBOSE=1 keeps them."""
    import logging

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("huggingface_hub", "transformers", "accelerate", "datasets", "gguf", "urllib3",
                 "httpx", "filelock", "lm_eval"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        import huggingface_hub.utils as hub_utils
        import transformers.utils.logging as tf_logging

        hub_utils.disable_progress_bars()
        hub_utils.logging.set_verbosity(logging.CRITICAL)
        tf_logging.set_verbosity(logging.CRITICAL)
        tf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None, stderr: TextIO | None = None) -> int:
    """Run one command; returns the exit status. `stderr`: where the error line goes (default
    sys.stderr; in-process tests pass their own stream so no other thread's redirect can take it)."""
    stderr = stderr or sys.stderr
    parser = build_parser()
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep the libraries' logs, warnings and progress bars")
    args = parser.parse_args(argv)
    if not (args.verbose or os.environ.get("LAYER_EXPLORER_VERBOSE") == "1"):
        quiet_libraries()
    try:
        result = COMMANDS[args.command][1](args)
    except ExplorerError as exc:
        # One line, secrets (HF tokens) redacted, whatever the message was built from.
        print(f"error: {one_line(exc, limit=1000)}", file=stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=stderr)
        return 130
    if isinstance(result, str):       # a command's own text (e.g. compress --help-params)
        print(result)
    elif args.json:
        print(json.dumps(result))
    else:
        _print_text(result)
    return 0
