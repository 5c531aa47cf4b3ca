"""`similarity`: the layer-by-layer similarity matrix of one model, or several models'
adjacent-layer profiles side by side (`--models a,b,c`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from explorer.cli.common import (checkpoint_args, layer_checkpoint, listing_parser, load,
                                 model_args, parse_params, resumable)


def add(sub) -> None:
    from explorer.measure import damage
    from explorer.measure.measures import MEASURES, measures_help

    p = listing_parser(sub, "similarity", "layer-by-layer similarity matrix of the residual "
                        "stream (explorer.measure.measures), or the measured damage map (--measure "
                        "damage: explorer.measure.damage; Ctrl-C stops it at the next candidate and prints the "
                        "cells done, marked partial)", "measures",
                       measures_help() + "\n" + damage.params_help())
    model_args(p)
    p.add_argument("--measure", default="cosine", help=", ".join([*MEASURES, "damage"]))
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="measure parameter, e.g. max_tokens=4096 (see below); repeatable")
    p.add_argument("--text", default="wiki", help="wiki, news, wikitext2 or a .txt path")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per calibration window")
    p.add_argument("--samples", type=int, default=32, help="calibration windows")
    p.add_argument("--bos", default="auto", choices=["auto", "always", "never"],
                   help="BOS token in front of each window")
    p.add_argument("--keep-first", action="store_true",
                   help="also use the first position of each window (massive activations)")
    checkpoint_args(p)
    p.add_argument("--models", default="", help="several models side by side (a,b,c): one "
                   "adjacent-layer profile each on relative depth 0..1, instead of --model's matrix")
    p.add_argument("--csv", default=None, metavar="PATH",
                   help="also write the matrix (damage: one row per measured cell) as CSV")


def run(args) -> dict:
    import time

    from explorer.measure.measures import get_measure, similarity
    from explorer.probe.probe import probe
    from explorer.probe.text import load_texts

    if args.measure == "damage":
        return _damage(args)
    info = get_measure(args.measure)
    params = info.resolve(parse_params(args.param))        # refused before the model loads
    if args.models:
        from explorer.measure.profiles import compare_models
        return compare_models(args.models, measure=args.measure, text=args.text,
                              seqlen=args.seqlen, samples=args.samples, bos=args.bos,
                              skip_first=not args.keep_first, params=params, device=args.device,
                              dtype=args.dtype).to_dict()
    cp = layer_checkpoint(args)
    lm = load(args)
    texts = load_texts(args.text)
    with resumable(args):
        pr = probe(lm, texts.calibration, seqlen=args.seqlen, num_samples=args.samples,
                   bos=args.bos, skip_first=not args.keep_first, checkpoint=cp)
    start = time.perf_counter()
    matrix = similarity(pr, args.measure, **params)
    if args.csv:
        _write(args.csv, "\n".join(",".join(f"{v:.6g}" for v in row)
                                    for row in matrix.tolist()) + "\n")
    return {"model": args.model, "measure": info.name, "title": info.title,
            "higher_is_similar": info.higher_is_similar, "paper": info.paper,
            "num_layers": pr.num_layers, "num_tokens": pr.num_tokens,
            "skip_first": pr.skip_first, "text": texts.source,
            "matrix": [[round(v, 6) for v in row] for row in matrix.tolist()],
            "adjacent": [round(v, 6) for v in matrix.diagonal(1).tolist()],
            "probe_seconds": round(pr.seconds, 2),
            "measure_seconds": round(time.perf_counter() - start, 2),
            # the boundary the probe went on from (rank 0's, under ranks); None: from the start
            **({"resumed_at_layer": cp.resumed_at} if cp is not None else {})}



def _damage(args) -> dict:
    """`--measure damage`: the measured map on the calibration windows, progress on stderr."""
    import sys

    from explorer.measure.damage import damage_map, resolve_params
    from explorer.core.errors import ExplorerError
    from explorer.probe.probe import calibration_windows
    from explorer.core.progress import CancelToken, printer
    from explorer.core.ranks import world
    from explorer.probe.text import load_texts

    if args.models:
        raise ExplorerError("--models compares similarity profiles; the damage map takes one "
                            "--model")
    params = resolve_params(parse_params(args.param))     # refused before the model loads
    lm = load(args)
    ids = calibration_windows(lm, load_texts(args.text).calibration, args.seqlen, args.samples,
                              args.bos)
    token = CancelToken()
    lead = world()[0] == 0           # ranks: rank 0 alone prints progress (and decides a Stop)
    with _interrupt_stops(token):
        dm = damage_map(lm, ids, max_block=params["max_block"],
                        progress=printer(sys.stderr) if lead else None, cancel=token)
    if dm.partial:
        print(f"\nstopped: partial: {dm.progress_note} (the cells done are in the output)",
              file=sys.stderr)
    if args.csv:
        _write(args.csv, dm.to_csv())
    out = {"model": args.model, "text": args.text, "metric": params["metric"], **dm.to_dict()}
    out["adjacent"] = [out["matrix"][params["metric"]][i][i + 1] for i in range(dm.num_layers)]
    return out


@contextmanager
def _interrupt_stops(token) -> Iterator[None]:
    """While the map runs, a first Ctrl-C (SIGINT) cancels `token`: the map ends at its next
    candidate and its cells done are printed, marked partial. A second one interrupts as usual.
    Outside the main thread (no signal handlers there) nothing changes."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum, frame) -> None:
        token.cancel()
        print("\nstopping at the next candidate (Ctrl-C again to quit)", file=sys.stderr)
        signal.signal(signal.SIGINT, previous)
    previous = signal.signal(signal.SIGINT, first) or signal.default_int_handler
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _write(path: str, text: str) -> None:
    from pathlib import Path

    from explorer.core.errors import ExplorerError

    try:
        Path(path).write_text(text)
    except OSError as e:
        raise ExplorerError(f"cannot write the CSV file '{path}': {e.strerror}") from None
