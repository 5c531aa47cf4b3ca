"""The command line's healing options: `compress ... --heal MODE [--heal-steps N]
[--heal-seconds S] [--heal-param NAME=VALUE] [--heal-text SOURCE]` (a few lines in explorer/cli.py call these).

The JSON then carries `ppl_healed` (same text and protocol as `ppl_after`), `heal` (the
`HealResult` without its full curve) and `out_of_domain`: dense, compressed and healed perplexity
on the evaluation half of another bundled text (news when calibrating on wiki, else wiki), so that
a healing that only fits its calibration text shows.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ExplorerError
from ..load import LoadedModel
from ..params import resolve
from ..variant import Variant
from .registry import MODES, check_budget, get_mode, heal, healing_text


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


def _heal_params(args) -> dict[str, str]:
    out = {}
    for item in args.heal_param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ExplorerError(f"--heal-param '{item}' must look like NAME=VALUE")
        out[name.strip()] = value
    return out


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
    resolve(mode.params, _heal_params(args), f"heal mode '{mode.name}'")
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
    from ..evaluate import perplexity
    from ..text import load_texts

    if args.heal_text is not None:
        fit = {"text": args.heal_text}
    else:
        fit = {"calibration": texts.calibration, "calibration_source": texts.source}
    r = heal(variant, args.heal, **fit, steps=args.heal_steps, seconds=args.heal_seconds,
             seed=args.seed, **_heal_params(args))
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
