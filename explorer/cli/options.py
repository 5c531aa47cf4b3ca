"""Options that several commands add: lm-eval tasks and the capability check (`--tasks`,
`--limit`, `--capability`), healing (`--heal MODE ...`) and measured speed (`--speed ...`).

Each group has `add_*` (declare), `check_*` (refuse bad values before the model loads) and a
function that computes the JSON entries it adds.

Healing: the JSON then carries `ppl_healed` (same text and protocol as `ppl_after`), `heal` (the
`HealResult` without its full curve) and `out_of_domain`: dense, compressed and healed perplexity
on the evaluation half of another bundled text (news when calibrating on wiki, else wiki), so that
a healing that only fits its calibration text shows.
"""

from __future__ import annotations

from typing import Any, Callable

from explorer.core.errors import ExplorerError
from explorer.heal.registry import MODES, check_budget, get_mode, heal, healing_text
from explorer.core.model import LoadedModel
from explorer.core.params import resolve
from explorer.evaluate.speed import SpeedError, measure_speed
from explorer.evaluate.task_index import (TaskError, check_limit, load_check, parse_task_list,
                                          resolve_tasks)
from explorer.evaluate.tasks import evaluate_tasks
from explorer.core.variant import Variant
from explorer.cli.common import parse_params

# -- lm-eval tasks and the capability check ---------------------------------------------------

def add_task_args(p) -> None:
    """--tasks, --limit and --capability for `eval` and `compress`."""
    p.add_argument("--tasks", default="", help="lm-eval tasks to run on the dense and compressed "
                   "model: names (arc_easy,hellaswag; data from the hub) or local task YAML files")
    p.add_argument("--limit", type=int, default=None,
                   help="lm-eval samples per task (default: all)")
    p.add_argument("--capability", action="store_true",
                   help="also next-token top-1 and last-word cloze accuracy on the held-out "
                        "text, dense and compressed (no download)")


def check_task_args(args) -> None:
    """Refuse bad --tasks/--limit before the model is loaded (unknown names, unreachable data,
    --limit 0)."""
    if args.limit is not None and not args.tasks:
        raise TaskError("--limit needs --tasks (it limits the lm-eval samples per task)")
    check_limit(args.limit)
    if args.tasks:
        manager, names = resolve_tasks(parse_task_list(args.tasks))
        load_check(manager, names)


def cli_extras(lm: LoadedModel, args, variant: Variant | None, calibrated: bool = False) -> dict:
    """The `tasks` and `capability` entries of `eval`/`compress` JSON (only those asked for).
    calibrated: the command also calibrated on --text (the capability check then uses its
    evaluation half only, like the perplexity)."""
    out: dict[str, Any] = {}
    if args.tasks:
        out["tasks"] = evaluate_tasks(lm, args.tasks, variant=variant, limit=args.limit).to_dict()
    if args.capability:
        from explorer.evaluate.capability import capability
        from explorer.probe.text import load_texts

        text, source = load_texts(args.text).for_evaluation(calibrated)
        out["capability"] = capability(lm, text, variant=variant, bos=args.bos,
                                       source=source).to_dict()
    return out


# -- healing ----------------------------------------------------------------------------------

def add_heal_args(p) -> None:
    p.add_argument("--heal", default=None, metavar="MODE",
                   help="heal the compressed model: " + ", ".join(MODES) + " (explorer.heal)")
    p.add_argument("--heal-steps", type=int, default=None,
                   help="training budget of --heal layerwise/distill: optimiser steps")
    p.add_argument("--heal-seconds", type=float, default=None,
                   help="training budget of --heal layerwise/distill: seconds (whichever ends "
                        "first with --heal-steps)")
    p.add_argument("--heal-text", default=None, metavar="SOURCE",
                   help="healing text: wiki, news, mix (their calibration halves) or a .txt path "
                        "(default: the calibration half of --text)")
    p.add_argument("--heal-param", action="append", default=[], metavar="NAME=VALUE",
                   help="healing mode parameter, e.g. windows=256 or train=lora; repeatable")


def heal_params(args) -> dict[str, str]:
    """--heal-param NAME=VALUE items as text (the mode's declared parameters read their types)."""
    return parse_params(args.heal_param, "--heal-param")


def check_heal_args(args) -> None:
    """Refuse bad healing options before the model loads (unknown mode or parameter, a budget of
    0 or less, a budget for a mode that trains nothing, options without --heal)."""
    if args.heal is None:
        if args.heal_steps is not None or args.heal_seconds is not None or args.heal_param or \
                args.heal_text is not None:
            raise ExplorerError("--heal-steps, --heal-seconds, --heal-param and --heal-text need "
                                "--heal MODE")
        return
    mode = get_mode(args.heal)
    resolve(mode.params, heal_params(args), f"heal mode '{mode.name}'")
    check_budget(mode, args.heal_steps, args.heal_seconds)
    if args.heal_text is not None:
        text, _ = healing_text(args.heal_text)      # an empty or missing file: one line now
        if not text.strip():
            raise ExplorerError("the healing text is empty")


def heal_result(lm: LoadedModel, args, variant: Variant, texts, ppl: Callable[..., Any]
                ) -> tuple[Variant, dict]:
    """Heal `variant` as the options say; (healed variant, the JSON entries it adds).

    ppl(variant) -> PPLResult on --text under the command's protocol.
    """
    from explorer.evaluate.perplexity import perplexity
    from explorer.probe.text import load_texts

    if args.heal_text is not None:
        fit = {"text": args.heal_text}
    else:
        fit = {"calibration": texts.calibration, "calibration_source": texts.source}
    r = heal(variant, args.heal, **fit, steps=args.heal_steps, seconds=args.heal_seconds,
             seed=args.seed, **heal_params(args))
    info = r.to_dict()
    info["history"] = [h for h in r.history if "held_out_ppl" in h]   # the watched points
    ood_source = "news" if texts.source == "wiki" else "wiki"
    ood = load_texts(ood_source)
    figures = {name: perplexity(lm, ood.evaluation, variant=v, seqlen=args.seqlen,
                                max_tokens=args.max_tokens or None, bos=args.bos,
                                source=ood_source)
               for name, v in (("ppl_before", None), ("ppl_after", variant),
                               ("ppl_healed", r.variant))}
    info["healing_text"] = r.calibration
    out_of_domain = {"text": ood_source, **{k: f.ppl for k, f in figures.items()},
                     "protocol": figures["ppl_healed"].protocol()}
    return r.variant, {"ppl_healed": ppl(r.variant).ppl, "heal": info,
                       "out_of_domain": out_of_domain}


# -- measured speed ---------------------------------------------------------------------------

def add_speed_args(p) -> None:
    """--speed and its sizes for `eval` and `compress`."""
    p.add_argument("--speed", action="store_true",
                   help="also measure prefill latency, decode tokens/s and memory of the dense "
                        "and the compressed model, interleaved (explorer.evaluate.speed)")
    p.add_argument("--speed-batches", default="1,8", help="batch sizes of --speed (e.g. 1,8)")
    p.add_argument("--speed-repeats", type=int, default=5, help="timed rounds of --speed")
    p.add_argument("--speed-new-tokens", type=int, default=128, help="tokens --speed decodes")


def parse_batches(spec: str) -> list[int]:
    out = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            b = int(part)
        except ValueError:
            raise SpeedError(f"--speed-batches takes positive integers like 1,8 (got "
                             f"'{part}')") from None
        if b < 1:
            raise SpeedError(f"--speed-batches takes positive integers like 1,8 (got {b})")
        out.append(b)
    if not out:
        raise SpeedError("--speed-batches needs at least one batch size, e.g. 1,8")
    return out


def check_speed_args(args) -> None:
    """Refuse bad --speed options before the model loads."""
    if not getattr(args, "speed", False):
        return
    parse_batches(args.speed_batches)
    if args.speed_repeats < 1:
        raise SpeedError(f"--speed-repeats must be at least 1 (got {args.speed_repeats})")
    if args.speed_new_tokens < 1:
        raise SpeedError(f"--speed-new-tokens must be at least 1 (got {args.speed_new_tokens})")


def cli_speed(lm: LoadedModel, args, variant: Variant | None,
              progress: Callable | None = None) -> dict:
    """The `speed` entry of `eval`/`compress` JSON (only when --speed was given)."""
    if not getattr(args, "speed", False):
        return {}
    r = measure_speed(lm, variant, batches=parse_batches(args.speed_batches),
                      repeats=args.speed_repeats, new_tokens=args.speed_new_tokens,
                      progress=progress)
    return {"speed": r.to_dict()}
