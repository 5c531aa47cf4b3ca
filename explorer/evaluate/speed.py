"""What a cut buys: the measured speed and memory of a variant, side by side with the dense model.

Parameter counts say little about speed: a token still passes through the embedding, the final
norm and the vocabulary head, and at small batches a CPU or GPU spends part of each step on
overhead that does not shrink with the layer count. So the figures here are timed on the current
device, with the dense model and the variant measured in the same run:

* prefill latency: one forward pass over a prompt of `prefill_tokens` (default 512) tokens at
  each batch size (default 1 and 8), logits of the last position only (as a server's prefill);
* decode: tokens per second of greedy decoding with the KV cache, `new_tokens` (default 128) new
  tokens per sequence after a `decode_prompt`-token prompt (the prompt's own pass is not timed);
* weights' bytes (the variant's parameters: kept layers, new layers, embeddings and head), the KV
  cache's bytes at the end of decoding, and the peak memory of a run (CUDA: the allocator's peak;
  CPU: the process's resident memory sampled every millisecond above its level before the run,
  a lower bound since the allocator reuses freed memory).

Timing protocol: for each case one warm-up call per model, then `repeats` rounds in which dense
and variant run back to back, in alternating order (dense first on even rounds), so that drift
in the machine's load falls on both. Each figure is the median of its rounds, with the spread
(max - min) / median; the speed-up is the median of the per-round ratios dense time / variant
time, with their spread.

What limits the speed-up: after the timed rounds, one more pass per model with a timer around each
decoder layer (forward pre/post hooks) gives the fraction of the time spent outside the decoder
layers (embedding, rotary tables and masks, final norm, head, the Python and framework overhead
of the step). With a fraction f outside the layers, removing layers can at best give
1 / (f + (1 - f) x L'/L) (Amdahl's law), below the layer ratio L/L'. The report gives both.

The measurement never changes the model: no weight is written (the variant is swapped in by
`Variant.applied()` under the model's lock), the hooks are removed, and the timing inputs are
random token ids from a fixed seed.

Example:
    >>> r = measure_speed(lm, Variant.identity(lm).drop([10, 11, 12]))
    >>> r.case("decode", 1).speedup, r.outside_fraction()
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from explorer.core.errors import ExplorerError
from explorer.core.model import LoadedModel
from explorer.evaluate.footprint import (PeakSampler, cache_bytes, largest_batch, run_bytes,
                                         weights_bytes)
from explorer.core.progress import Event, Progress
from explorer.core.backbone import this_thread_only
from explorer.load.memory import _fmt, available_bytes
from explorer.core.variant import Variant
from explorer.evaluate.speed_report import MemoryFigures, SpeedCase, SpeedReport, Timing


class SpeedError(ExplorerError):
    """A speed measurement that cannot run as asked (a batch that does not fit, bad sizes)."""


def check_batches(lm: LoadedModel, batches: Sequence[int], prefill_tokens: int,
                  decode_tokens: int) -> None:
    """Refuse (one line) a batch whose estimated run does not fit, naming the largest that does."""
    free = available_bytes(lm.device)
    for b in sorted(batches, reverse=True):
        need = run_bytes(lm, b, prefill_tokens, decode_tokens)
        if need > free:
            best = largest_batch(lm, prefill_tokens, decode_tokens, free)
            fits = f"the largest batch that fits is {best}" if best else \
                "not even batch 1 fits; use fewer tokens"
            raise SpeedError(f"batch {b} does not fit in memory for the speed measurement (needs "
                             f"about {_fmt(need)}, {_fmt(free)} free on {lm.device.type}): {fits}")


# -- timing ----------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _layer_timer(lm: LoadedModel, model: nn.Module, total: list[float] | None
                 ) -> Iterator[None]:
    """Adds the seconds spent inside the applied model's decoder layers to total[0] (None: no
    hooks, nothing timed)."""
    if total is None:
        yield
        return
    starts: list[float] = []

    def pre(module, args):
        _sync(lm.device)
        starts.append(time.perf_counter())

    def post(module, args, output):
        _sync(lm.device)
        total[0] += time.perf_counter() - starts.pop()

    handles = []
    try:
        for layer in lm.arch.layer_list(model):
            handles.append(layer.register_forward_pre_hook(this_thread_only(pre)))
            handles.append(layer.register_forward_hook(this_thread_only(post)))
        yield
    finally:
        for h in handles:
            h.remove()


def _forward_kwargs(model: nn.Module) -> dict:
    import inspect

    names = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in names else {}


@torch.inference_mode()
def _prefill(model: nn.Module, ids: torch.Tensor, kw: dict) -> None:
    model(input_ids=ids, use_cache=False, **kw)


@torch.inference_mode()
def _decode(lm: LoadedModel, model: nn.Module, prompt: torch.Tensor, new_tokens: int, kw: dict,
            timed: list[float] | None, layer_time: list[float] | None) -> object:
    """Greedy decoding with the KV cache; only the `new_tokens` steps are timed (the prompt's
    pass is not). Returns the cache."""
    out = model(input_ids=prompt, use_cache=True, **kw)
    cache = out.past_key_values
    nxt = out.logits[:, -1:].argmax(-1)                            # (b, 1)
    _sync(lm.device)
    with _layer_timer(lm, model, layer_time):
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True, **kw)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        _sync(lm.device)
        if timed is not None:
            timed.append(time.perf_counter() - t0)
    return cache


def measure_speed(lm: LoadedModel, variant: Variant | None = None, *,
                  batches: Sequence[int] = (1, 8), prefill_tokens: int = 512,
                  decode_prompt: int = 64, new_tokens: int = 128, repeats: int = 5,
                  warmup: int = 1, seed: int = 0,
                  progress: Progress | None = None) -> SpeedReport:
    """Prefill latency, decode tokens/s, weights', KV cache and peak memory of the dense model and
    of `variant` (None or the identity: the dense model alone), measured in one run.

    batches: batch sizes of both cases; prefill_tokens: prompt length timed in prefill;
    decode_prompt, new_tokens: the prompt before decoding (not timed) and the tokens decoded.
    repeats: timed rounds per case and model; warmup: untimed calls per case and model first.
    A batch whose estimated memory does not fit is refused first (`SpeedError`, naming the largest
    batch that fits).
    """
    for name, value, low in (("prefill_tokens", prefill_tokens, 2), ("decode_prompt",
                             decode_prompt, 1), ("new_tokens", new_tokens, 1),
                             ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < low:
            raise SpeedError(f"{name} must be an integer of at least {low} (got {value!r})")
    batches = sorted(set(batches))
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise SpeedError(f"batch sizes must be positive integers (got {list(batches)})")
    limit = getattr(lm.config, "max_position_embeddings", None)
    if limit and max(prefill_tokens, decode_prompt + new_tokens) > limit:
        raise SpeedError(f"the model takes at most {limit} positions; ask for fewer tokens")
    check_batches(lm, batches, prefill_tokens, decode_prompt + new_tokens)
    compressed = variant is not None and not variant.is_identity()
    models: list[tuple[str, Variant]] = [("dense", Variant.identity(lm))] + \
        ([("variant", variant)] if compressed else [])
    gen = torch.Generator().manual_seed(seed)
    vocab = lm.config.vocab_size
    inputs = {b: (torch.randint(0, vocab, (b, prefill_tokens), generator=gen).to(lm.device),
                  torch.randint(0, vocab, (b, decode_prompt), generator=gen).to(lm.device))
              for b in batches}
    cases = [("prefill", b) for b in batches] + [("decode", b) for b in batches]

    def cost(kind: str, b: int) -> int:       # tokens one call runs: the progress' weights
        return b * (prefill_tokens if kind == "prefill" else decode_prompt + new_tokens)
    # every case's calls per model (warm-up, timed rounds, the profiled pass), then the largest
    # decode run once per model for the memory figures
    calls = len(cases) * len(models) * (warmup + repeats + 1) + len(models)
    work = sum(cost(*c) for c in cases) * len(models) * (warmup + repeats + 1) + \
        len(models) * cost("decode", batches[-1])
    done = [0, 0]                              # calls, tokens
    t_start = time.perf_counter()

    def report(msg: str, kind: str, b: int) -> None:
        """One call done: the fraction counts tokens run (a decode call of batch 8 weighs 8
        times one of batch 1), so an estimate from the rate so far is not fooled by the short
        calls that come first."""
        done[0] += 1
        done[1] += cost(kind, b)
        if progress:
            progress(Event("speed", done[1] / work, step=done[0], total=calls, unit="calls",
                           note=msg))

    def run_once(v: Variant, kind: str, b: int, timed: list[float] | None,
                 layer_time: list[float] | None = None) -> object:
        """One call of a case; appends its seconds to `timed` and the seconds inside the decoder
        layers to layer_time[0] (hooked: only for the profiled pass). Returns the decode cache."""
        prefill_ids, prompt = inputs[b]
        with v.applied() as model:
            kw = _forward_kwargs(model)
            if kind == "decode":
                return _decode(lm, model, prompt, new_tokens, kw, timed, layer_time)
            with _layer_timer(lm, model, layer_time):
                _sync(lm.device)
                t0 = time.perf_counter()
                _prefill(model, prefill_ids, kw)
                _sync(lm.device)
                if timed is not None:
                    timed.append(time.perf_counter() - t0)
            return None

    results: list[SpeedCase] = []
    try:
        for kind, b in cases:
            times: dict[str, list[float]] = {name: [] for name, _ in models}
            for _ in range(warmup):
                for name, v in models:
                    run_once(v, kind, b, None)
                    report(f"warm-up, {kind} batch {b}, {name}", kind, b)
            for r in range(repeats):
                order = models if r % 2 == 0 else models[::-1]
                for name, v in order:
                    run_once(v, kind, b, times[name])
                    report(f"{kind} batch {b}, round {r + 1}/{repeats}, {name}", kind, b)
            outside = {}
            for name, v in models:           # the profiled pass: time inside the layers
                timed: list[float] = []
                inside = [0.0]
                run_once(v, kind, b, timed, inside)
                outside[name] = max(0.0, 1.0 - inside[0] / timed[0]) if timed[0] > 0 \
                    else float("nan")
                report(f"{kind} batch {b}, time inside the layers, {name}", kind, b)
            dense_t = Timing(tuple(times["dense"]))
            var_t = Timing(tuple(times["variant"])) if compressed else None
            ratios = tuple(d / v for d, v in zip(times["dense"], times["variant"])) \
                if compressed else ()
            results.append(SpeedCase(kind=kind, batch=b,
                                     tokens=prefill_tokens if kind == "prefill" else new_tokens,
                                     dense=dense_t, variant=var_t, ratios=ratios,
                                     outside_dense=outside["dense"],
                                     outside_variant=outside.get("variant", float("nan"))))
        memory = {}
        big = batches[-1]
        for name, v in models:               # the largest decode run: KV cache and peak memory
            with PeakSampler(lm.device) as peak:
                cache = run_once(v, "decode", big, None)
            report(f"memory of decode batch {big}, {name}", "decode", big)
            memory[name] = MemoryFigures(weights_bytes=weights_bytes(v),
                                         kv_cache_bytes=cache_bytes(cache),
                                         peak_bytes=peak.peak)
            del cache
    except torch.OutOfMemoryError:
        best = largest_batch(lm, prefill_tokens, decode_prompt + new_tokens)
        raise SpeedError(f"batch {max(batches)} ran out of memory on {lm.device.type}: try batch "
                         f"{min(best, max(batches) // 2) or 1} or fewer tokens") from None
    peak_kind = ("CUDA allocator peak above the weights" if lm.device.type == "cuda" else
                 "process resident memory sampled every 1 ms above its level before the run "
                 "(a lower bound: the allocator reuses memory freed by earlier runs)")
    notes = []
    if lm.device.type == "cpu":
        notes.append(f"CPU timings with {torch.get_num_threads()} threads; on a machine shared "
                     "with other work the spread shows how far to trust a ratio")
    return SpeedReport(device=str(lm.device), dtype=str(lm.dtype).replace("torch.", ""),
                       threads=torch.get_num_threads(), layers_dense=lm.num_layers,
                       layers_variant=variant.num_layers if compressed else None,
                       variant=variant.describe() if compressed else None,
                       prefill_tokens=prefill_tokens, decode_prompt=decode_prompt,
                       new_tokens=new_tokens, repeats=repeats, cases=tuple(results),
                       memory_dense=memory["dense"], memory_variant=memory.get("variant"),
                       peak_kind=peak_kind, seconds=time.perf_counter() - t_start,
                       notes=tuple(notes))
