"""What every command shares: the model and text options, loading, perplexity on --text, the
NAME=VALUE parameter syntax and recipe files. Each command's own module declares the rest."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Iterator

from explorer.core.errors import ExplorerError
from explorer.core.progress import Event


def model_args(p: argparse.ArgumentParser) -> None:
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


def text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", default="wiki",
                   help="wiki, news, wikitext2 (their evaluation half) or a .txt path (evaluated "
                        "whole; compress calibrates on one half and evaluates on the other)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per perplexity window")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="evaluate at most this many tokens (0: all)")
    p.add_argument("--bos", default="auto", choices=["auto", "always", "never"],
                   help="BOS token in front of each window")


def load(args):
    from explorer.load.loader import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code,
                      offload=getattr(args, "offload", "auto"),
                      max_memory=getattr(args, "max_memory", None),
                      device_map=getattr(args, "device_map", None),
                      offload_folder=getattr(args, "offload_folder", None),
                      progress=load_progress(args))


def load_progress(args):
    """Print load_model's offload decision (one line on stderr): the user sees why a pass is
    slower than usual. Under ranks rank 0 alone prints."""
    from explorer.core.ranks import world

    def progress(event: Event) -> None:
        if "one at a time" in event.note and world()[0] == 0:
            print(event.describe(), file=sys.stderr)
    return progress


def ppl(lm, args, variant=None, texts=None, calibrated: bool = False, checkpoint=None):
    """Perplexity on --text: a user's file whole, or only its evaluation half when the command
    also calibrates on it (`calibrated`; the protocol line then says so). checkpoint: a
    `LayerCheckpoint` (`layer_checkpoint`): the pass saves each layer and can resume."""
    from explorer.evaluate.perplexity import perplexity
    from explorer.probe.text import load_texts

    text, source = (texts or load_texts(args.text)).for_evaluation(calibrated)
    return perplexity(lm, text, variant=variant, seqlen=args.seqlen,
                      max_tokens=args.max_tokens or None, bos=args.bos, source=source,
                      checkpoint=checkpoint)


def checkpoint_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint FOLDER and --resume: a layer-major pass that saves each layer and goes on
    from the last one saved (explorer/core/resume.py)."""
    p.add_argument("--checkpoint", default=None, metavar="FOLDER",
                   help="run layer by layer and save each layer's states here, so that a killed "
                   "run can go on with --resume (explorer/core/resume.py)")
    p.add_argument("--resume", action="store_true",
                   help="go on from the layer saved in --checkpoint (refused in one line when "
                   "the model, text or settings changed)")


def layer_checkpoint(args, name: str | None = None):
    """The `LayerCheckpoint` of --checkpoint (in its subfolder `name`: one per pass of a command
    that makes several), or None without --checkpoint."""
    from pathlib import Path

    from explorer.core.resume import LayerCheckpoint

    if args.resume and not args.checkpoint:
        raise ExplorerError("--resume needs --checkpoint FOLDER (where the run saved its layers)")
    if not args.checkpoint:
        return None
    folder = Path(args.checkpoint) / name if name else Path(args.checkpoint)
    return LayerCheckpoint(folder, resume=args.resume)


@contextmanager
def resumable(args) -> Iterator[None]:
    """A rank that stopped (`ranks.RankStopped`) while this command checkpoints: the line says
    that the checkpoint stays usable and how to go on."""
    from explorer.core.ranks import RankStopped

    try:
        yield
    except RankStopped as exc:
        if not getattr(args, "checkpoint", None):
            raise
        raise RankStopped(f"{exc}; the checkpoint in {args.checkpoint} stays usable: run the "
                          "same command again with --resume") from None


def parse_params(items: list[str], flag: str = "--param") -> dict[str, str]:
    """["T=0.3", "replacement=linear"] -> {"T": "0.3", ...}: text, which the declared parameters
    (explorer.core.params) read as their own types."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ExplorerError(f"{flag} '{item}' must look like NAME=VALUE")
        out[name.strip()] = value
    return out


def listing_parser(sub, name: str, help: str, what: str, listing: str):
    """A subcommand whose help ends with a registry's components and their parameters."""
    return sub.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog=f"{what} and their parameters (--param NAME=VALUE):\n{listing}")


def read_recipe(name: str):
    """The `Recipe` in the file `name` (--recipe) with the fitted tensors saved next to it, or one
    line saying why not."""
    from pathlib import Path

    from explorer.apply.recipe import Recipe

    if not Path(name).is_file():
        raise ExplorerError(f"recipe file '{name}' does not exist")
    return Recipe.load(name)
