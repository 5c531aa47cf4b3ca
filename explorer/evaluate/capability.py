"""A capability check that needs no download: next-token accuracy and a last-word cloze test.

Perplexity is one number; a teacher with no network also wants to see whether the compressed model
still *predicts* the text. Two checks on the bundled held-out text (the evaluation half, disjoint
from calibration), dense and variant side by side:

* next-token top-1 accuracy: over the same windows as `perplexity` (same BOS rule), the fraction of
  positions t whose most likely next token argmax_v p(v | x_<=t) is the true token x_{t+1};
* cloze (last word, in the manner of LAMBADA, Paperno et al. 2016, arXiv 1606.06031): sentences of
  the text whose last word is cut off; an item is right when greedy decoding gives every token of
  the missing word (" word"), i.e. the argmax at each of its positions is its token. Each item has
  the same context length (the last `context_tokens` tokens before the word), so items run in
  batches with right padding, which a causal model never sees.

* generative agreement (the variant against the dense model, not against the text): from
  `num_prompts` held-out prompts of `prompt_tokens` tokens, spread evenly over the text, both
  models continue greedily for `new_tokens` (default 32) tokens with the KV cache. Reported: the
  mean number of new tokens before the variant's first token that differs from the dense model's
  (new_tokens when none differs), the token agreement (the fraction of the new tokens that are
  equal position by position), and the forced agreement (the fraction of positions where the
  variant, fed the dense continuation, picks the dense model's next token). Classification-style
  scores can recover after healing while generation does not (arXiv 2602.01997); this shows it.

Items are picked evenly over the text, so the check is deterministic. `cloze_items` also gives the
words as multiple-choice items (one right word, distractors drawn from the other items) from which
`explorer.evaluate.task_index.write_local_task` writes an lm-eval task that runs offline.

Example:
    >>> r = capability(lm, texts.evaluation, variant=v, source=texts.source)
    >>> r.dense.next_token_top1, r.compressed.cloze_accuracy
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass

import torch

from explorer.core.backbone import run_backbone
from explorer.core.errors import TextError
from explorer.evaluate.nll import final_logits
from explorer.evaluate.windows import evaluation_windows
from explorer.core.model import LoadedModel
from explorer.evaluate.generate import greedy_continuations
from explorer.core.progress import Event, Progress, scaled
from explorer.core.tokens import auto_batch_size, use_bos
from explorer.core.variant import Variant

# A sentence-final word: 3+ letters after a space, then a full stop and white space.
_LAST_WORD = re.compile(r"(?<= )([A-Za-z][a-z]{2,})\.(?=\s)")
CONTEXT_CHARS = 600        # characters of text before the word from which the context is cut
SCAN_CHARS = 400_000       # only the start of a long text is scanned for items


@dataclass(frozen=True)
class ClozeItem:
    context: str       # the text before the missing word (no trailing space)
    word: str          # the missing word, without the leading space

    def choices(self, distractors: list[str]) -> list[str]:
        return [" " + self.word] + [" " + d for d in distractors]


def cloze_items(text: str, n: int = 100) -> list[ClozeItem]:
    """Up to `n` last-word items spread evenly over the text (deterministic)."""
    scan = text[:SCAN_CHARS]
    found = []
    for m in _LAST_WORD.finditer(scan):
        start = m.start(1)
        if start < CONTEXT_CHARS:
            continue
        context = scan[start - CONTEXT_CHARS:start].rstrip()
        context = context[context.find(" ") + 1:]          # begin at a word boundary
        found.append(ClozeItem(context=context, word=m.group(1)))
    if not found:
        raise TextError("the text has no sentence long enough for the cloze check "
                        f"(needs {CONTEXT_CHARS} characters before a sentence's last word)")
    if len(found) <= n:
        return found
    step = len(found) / n
    return [found[int(k * step)] for k in range(n)]


def multiple_choice(items: list[ClozeItem], num_choices: int = 4, seed: int = 0) -> list[dict]:
    """The items as multiple choice: {"context", "choices", "answer"}; distractors are other items'
    words (never the right one), and the right answer's position is drawn with `seed`."""
    rng = random.Random(seed)
    words = sorted({it.word for it in items})
    if len(words) < num_choices:
        raise TextError(f"{len(words)} different words; {num_choices} choices need more items")
    out = []
    for it in items:
        pool = [w for w in words if w.lower() != it.word.lower()]
        choices = [it.word] + rng.sample(pool, num_choices - 1)
        answer = rng.randrange(num_choices)
        choices[0], choices[answer] = choices[answer], choices[0]
        out.append({"context": it.context, "choices": [" " + c for c in choices],
                    "answer": answer})
    return out


@dataclass(frozen=True)
class CapabilityScore:
    """The two checks for one model."""

    label: str                  # "dense" or the variant's description
    num_layers: int
    next_token_top1: float      # fraction of positions whose argmax is the true next token
    positions: int              # predicted positions
    cloze_accuracy: float       # fraction of items whose missing word is decoded greedily
    cloze_items: int
    seconds: float


@dataclass(frozen=True)
class GenerativeAgreement:
    """How far the variant's greedy continuations follow the dense model's."""

    prompts: int
    prompt_tokens: int                # text tokens per prompt (a BOS token in front when the rule
                                      # says so)
    new_tokens: int
    mean_first_disagreement: float    # new tokens before the first one that differs (mean)
    token_agreement: float            # fraction of new tokens equal position by position
    forced_agreement: float           # fed the dense continuation: fraction of equal next tokens
    seconds: float


@dataclass(frozen=True)
class CapabilityReport:
    dense: CapabilityScore | None
    compressed: CapabilityScore | None
    source: str
    seqlen: int
    context_tokens: int
    generation: GenerativeAgreement | None = None     # with a variant and the dense model

    def protocol(self) -> str:
        ref = self.dense or self.compressed
        text = (f"{self.source} held-out text: next-token top-1 over {ref.positions} positions "
                f"(windows of {self.seqlen} tokens, as perplexity); cloze: {ref.cloze_items} "
                f"sentence-final words, {self.context_tokens} tokens of context, right when "
                "greedy decoding gives the whole word")
        g = self.generation
        if g is not None:
            text += (f"; generation: {g.prompts} prompts of {g.prompt_tokens} tokens spread over "
                     f"the text, {g.new_tokens} greedy new tokens each, the variant's against the "
                     "dense model's")
        return text

    def to_dict(self) -> dict:
        out = {"source": self.source, "protocol": self.protocol()}
        for key in ("dense", "compressed", "generation"):
            run = getattr(self, key)
            if run is not None:
                out[key] = {k: (round(v, 6) if isinstance(v, float) else v)
                            for k, v in asdict(run).items()}
        return out


@torch.no_grad()
def next_token_accuracy(lm: LoadedModel, windows: torch.Tensor, variant: Variant | None = None,
                        progress: Progress | None = None) -> tuple[float, int]:
    """(top-1 accuracy, positions) over (W, T) windows; position t predicts token t+1."""
    hits, count = 0, 0
    head = (variant or Variant.identity(lm)).head_module()
    bs = auto_batch_size(lm.device, windows.shape[1])
    for batch in run_backbone(lm, windows, variant=variant, final_norm=True, batch_size=bs,
                              progress=progress, label="next-token accuracy"):
        h = batch.hidden[:, :-1].reshape(-1, batch.hidden.shape[-1])      # (b*(T-1), H)
        targets = batch.ids[:, 1:].reshape(-1)                            # (b*(T-1),)
        for s in range(0, h.shape[0], 1024):                              # (1024, V) logits
            pred = final_logits(lm, h[s:s + 1024], head=head).argmax(-1)
            hits += int((pred == targets[s:s + 1024]).sum())
        count += targets.numel()
    return hits / count, count


def cloze_batch(lm: LoadedModel, items: list[ClozeItem], context_tokens: int,
                bos: str = "auto") -> tuple[torch.Tensor, list[tuple[int, list[int]]]]:
    """Token rows for the items: (N, P + C + K) ids, with P = 1 for a BOS token, C context tokens,
    then the word's K tokens, right-padded; and per row (first word position, word token ids).
    Items whose context is shorter than C tokens, or whose word does not tokenize on its own
    boundary, are left out."""
    tok = lm.tokenizer
    bos_id = tok.bos_token_id if use_bos(tok, bos, lm.arch.needs_bos) else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def enc(s: str) -> list[int]:
        return tok(s, add_special_tokens=False)["input_ids"]

    rows, spans = [], []
    for it in items:
        ctx = enc(it.context)
        full = enc(it.context + " " + it.word)
        if len(ctx) < context_tokens or full[:len(ctx)] != ctx or len(full) == len(ctx):
            continue
        word = full[len(ctx):]
        row = ([bos_id] if bos_id is not None else []) + ctx[-context_tokens:] + word
        spans.append((len(row) - len(word), word))
        rows.append(row)
    if not rows:
        raise TextError(f"no cloze item has {context_tokens} tokens of context; use fewer")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids, spans


@torch.no_grad()
def cloze_accuracy(lm: LoadedModel, ids: torch.Tensor, spans: list[tuple[int, list[int]]],
                   variant: Variant | None = None) -> float:
    """Fraction of rows whose word tokens are each the argmax at the position before them."""
    right = 0
    head = (variant or Variant.identity(lm)).head_module()
    bs = auto_batch_size(lm.device, ids.shape[1])
    for batch in run_backbone(lm, ids, variant=variant, final_norm=True, batch_size=bs,
                              label="cloze"):
        for j, row in enumerate(range(batch.rows.start, batch.rows.stop)):
            first, word = spans[row]
            h = batch.hidden[j, first - 1:first - 1 + len(word)]          # (K, H)
            pred = final_logits(lm, h, head=head).argmax(-1).tolist()
            right += int(pred == word)
    return right / len(spans)


def generation_prompts(lm: LoadedModel, text: str, num_prompts: int = 16,
                       prompt_tokens: int = 32, bos: str = "auto",
                       max_tokens: int | None = 16384) -> torch.Tensor:
    """(N, prompt_tokens [+1 with BOS]) prompts: windows of the text's first `max_tokens` tokens,
    `num_prompts` of them picked evenly from start to end (deterministic)."""
    w = evaluation_windows(lm, text, prompt_tokens, max_tokens, bos)
    n = min(num_prompts, w.shape[0])
    return w[[int(k * w.shape[0] / n) for k in range(n)]]


def agreement(dense: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(mean tokens before the first differing one, fraction of equal tokens) of two (N, K)
    continuations of the same prompts."""
    same = dense == other                                                  # (N, K) bool
    K = same.shape[1]
    first = torch.where(same.all(1), torch.full((same.shape[0],), K),
                        (~same).int().argmax(1))                            # first False per row
    return float(first.double().mean()), float(same.double().mean())


@torch.no_grad()
def forced_agreement(lm: LoadedModel, prompts: torch.Tensor, dense_cont: torch.Tensor,
                     variant: Variant) -> float:
    """Fraction of the dense continuation's tokens that the variant predicts as its argmax when fed
    the prompt and the dense continuation so far (one pass, no decoding)."""
    ids = torch.cat([prompts, dense_cont], dim=1)                          # (N, P + K)
    P, K = prompts.shape[1], dense_cont.shape[1]
    hits = 0
    for batch in run_backbone(lm, ids, variant=variant, final_norm=True, label="forced"):
        h = batch.hidden[:, P - 1:P - 1 + K]                                # (b, K, H)
        pred = final_logits(lm, h.reshape(-1, h.shape[-1]), head=variant.head_module()) \
            .argmax(-1).view(h.shape[0], K)
        hits += int((pred.cpu() == dense_cont[batch.rows]).sum())
    return hits / dense_cont.numel()


def generative_agreement(lm: LoadedModel, text: str, variant: Variant, *, num_prompts: int = 16,
                         prompt_tokens: int = 32, new_tokens: int = 32, bos: str = "auto",
                         max_tokens: int | None = 16384) -> GenerativeAgreement:
    """How far `variant`'s greedy continuations of held-out prompts agree with the dense model's
    (see the module docstring)."""
    if new_tokens < 1 or num_prompts < 1 or prompt_tokens < 1:
        raise TextError("the generative check needs at least one prompt, one prompt token and "
                        "one new token")
    start = time.perf_counter()
    prompts = generation_prompts(lm, text, num_prompts, prompt_tokens, bos, max_tokens)
    dense_cont = greedy_continuations(lm, prompts, None, new_tokens)
    var_cont = greedy_continuations(lm, prompts, variant, new_tokens)
    first, same = agreement(dense_cont, var_cont)
    forced = forced_agreement(lm, prompts, dense_cont, variant)
    return GenerativeAgreement(prompts=prompts.shape[0], prompt_tokens=prompt_tokens,
                               new_tokens=new_tokens, mean_first_disagreement=first,
                               token_agreement=same, forced_agreement=forced,
                               seconds=time.perf_counter() - start)


def capability(lm: LoadedModel, text: str, *, variant: Variant | None = None, seqlen: int = 256,
               max_tokens: int | None = 4096, num_items: int = 100, context_tokens: int = 64,
               bos: str = "auto", source: str = "text", dense: bool = True,
               generation: bool = True, num_prompts: int = 16, prompt_tokens: int = 32,
               new_tokens: int = 32, progress: Progress | None = None) -> CapabilityReport:
    """Next-token top-1 accuracy and cloze accuracy of the dense model and of `variant`, and how
    far the variant's greedy generations agree with the dense model's.

    text: held-out text (`load_texts(...).evaluation`); seqlen, max_tokens, bos: the windows of
    the next-token check (as `perplexity`); num_items, context_tokens: the cloze items.
    dense: also score the dense model (False: the variant alone, no generative check).
    generation: run the generative check (`generative_agreement`: num_prompts prompts of
    prompt_tokens tokens, new_tokens greedy tokens each) when there is a variant and `dense`.
    """
    windows = evaluation_windows(lm, text, seqlen, max_tokens, bos)
    ids, spans = cloze_batch(lm, cloze_items(text, num_items), context_tokens, bos)
    compressed = variant is not None and not variant.is_identity()
    plan = ([("dense", Variant.identity(lm))] if dense or not compressed else []) + \
        ([("compressed", variant)] if compressed else [])
    scores: dict[str, CapabilityScore] = {}
    for k, (key, v) in enumerate(plan):
        start = time.perf_counter()
        label = "dense" if v.is_identity() else v.describe()
        lo, hi = k / len(plan), (k + 1) / len(plan)
        mid = lo + (hi - lo) * 0.8
        top1, positions = next_token_accuracy(lm, windows, v, scaled(progress, lo, mid, label))
        if progress:
            progress(Event(label, mid, total=len(spans), unit="items", note="cloze"))
        cloze = cloze_accuracy(lm, ids, spans, v)
        scores[key] = CapabilityScore(label=label, num_layers=v.num_layers, next_token_top1=top1,
                                      positions=positions, cloze_accuracy=cloze,
                                      cloze_items=len(spans),
                                      seconds=time.perf_counter() - start)
    gen = None
    if generation and dense and compressed:
        if progress:
            progress(Event("generative check", 0.97, total=num_prompts, unit="prompts",
                           note=f"{new_tokens} greedy tokens"))
        gen = generative_agreement(lm, text, variant, num_prompts=num_prompts,
                                   prompt_tokens=prompt_tokens, new_tokens=new_tokens, bos=bos)
    if progress:
        progress(Event("capability check", 1.0, note="done"))
    return CapabilityReport(dense=scores.get("dense"), compressed=scores.get("compressed"),
                            source=source, seqlen=seqlen, context_tokens=context_tokens,
                            generation=gen)
