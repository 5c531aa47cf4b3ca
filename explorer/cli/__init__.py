"""Command line over the same API as the web app: `python -m explorer COMMAND ...` or `layer-explorer`.

Every command takes --json and then prints exactly one JSON object on stdout. Errors caused by input
print one line, "error: ...", on stderr and exit with status 2.

One module per command (`eval.py`, `export.py`, `similarity.py`, `compress.py`, `heal.py`,
`report.py`, `bench.py`), each with `add(sub)` (declare its arguments) and `run(args)` (the JSON object as a
dict; a `str` is printed as it is); `common.py` holds the options every command shares and
`options.py` the option groups several commands add (tasks, healing, speed). Adding a command: a
module like those, listed in `COMMANDS`. Method and measure lists and their parameters come from
the registries (`compress --help`, `compress --method laco --help-params`, `similarity --help`).

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
from types import ModuleType
from typing import TextIO

from explorer.core.errors import ExplorerError, one_line
from explorer.core.settings import get
from explorer.cli import bench, compress, eval, export, heal, report, similarity
from explorer.cli.common import parse_params

__all__ = ["COMMANDS", "build_parser", "main", "parse_params"]

COMMANDS: dict[str, ModuleType] = {
    "eval": eval,
    "export": export,
    "similarity": similarity,
    "compress": compress,
    "heal": heal,
    "report": report,
    "bench": bench,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layer-explorer",
                                     description="Explore, merge and drop transformer layers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add(sub)
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



# Commands that run as data-parallel ranks under torchrun (explorer/core/ranks.py, docs/scale.md):
# rank 0 alone prints their result and writes their files (compress --out, heal --out).
RANKED = ("similarity", "eval", "compress", "heal")


def _join_ranks(command: str) -> int:
    """Join torchrun's process group when there is one; this process's rank (0 alone)."""
    from explorer.core.ranks import init_from_env

    rank, size = init_from_env()
    if size > 1 and command not in RANKED:
        raise ExplorerError(f"'{command}' does not run as {size} ranks yet (only "
                            f"{', '.join(RANKED)} do): run it as one process")
    return rank


def main(argv: list[str] | None = None, stderr: TextIO | None = None) -> int:
    """Run one command; returns the exit status. `stderr`: where the error line goes (default
    sys.stderr; in-process tests pass their own stream so no other thread's redirect can take it)."""
    stderr = stderr or sys.stderr
    parser = build_parser()
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep the libraries' logs, warnings and progress bars")
    args = parser.parse_args(argv)
    if not (args.verbose or get("LAYER_EXPLORER_VERBOSE")):
        quiet_libraries()
    try:
        rank = _join_ranks(args.command)
        result = COMMANDS[args.command].run(args)
    except ExplorerError as exc:
        # One line, secrets (HF tokens) redacted, whatever the message was built from.
        print(f"error: {one_line(exc, limit=1000)}", file=stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=stderr)
        return 130
    if rank != 0:                     # rank 0 alone prints (and writes) the result
        return 0
    if isinstance(result, str):       # a command's own text (e.g. compress --help-params)
        print(result)
    elif args.json:
        print(json.dumps(result))
    else:
        _print_text(result)
    return 0

