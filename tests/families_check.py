"""Build, save and reload every included family with plain transformers (no explorer code).

    python tests/families_check.py [--only a,b] [--facts] [--all]

One line per family: type, class, params, seconds (build + save + reload), ok or the reason.
ok means: num_hidden_layers == 4 and the logits on a fixed (2, 24) batch match after
save_pretrained + from_pretrained (max abs diff <= TOL). --all also tries the EXCLUDED types
that are excluded only for failing here, to see whether they still fail.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import families  # noqa: E402
from families import NUM_LAYERS, VOCAB  # noqa: E402

TOL = 1e-5


def _ids() -> torch.Tensor:
    """The fixed (2, 24) batch, ids above the specials so no pad/bos/eos sits in the middle."""
    g = torch.Generator().manual_seed(1234)
    return torch.randint(3, VOCAB, (2, 24), generator=g)


def check(model_type: str) -> tuple[str, str, int, float, str, families.FamilyFacts | None]:
    """(type, class, params, seconds, 'ok' or reason, facts) for one family."""
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    cls, params, fact = "?", 0, None
    try:
        model = families.build(model_type)
        cls = type(model).__name__
        params = sum(p.numel() for p in model.parameters())
        ids = _ids()
        with torch.no_grad():
            before = model(input_ids=ids).logits
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            again = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        with torch.no_grad():
            after = again(input_ids=ids).logits
        seconds = time.perf_counter() - t0
        fact = families.facts(model)
        diff = (before - after).abs().max().item()
        problems = []
        if model.config.num_hidden_layers != NUM_LAYERS:
            problems.append(f"num_hidden_layers={model.config.num_hidden_layers}")
        if before.shape[:2] != ids.shape or not torch.isfinite(before).all():
            problems.append(f"bad logits {tuple(before.shape)}")
        if not diff <= TOL:
            problems.append(f"reload diff {diff:.2e}")
        return model_type, cls, params, seconds, "; ".join(problems) or "ok", fact
    except Exception as e:  # noqa: BLE001 - a failing family is a result, not a crash
        if "--trace" in sys.argv:
            traceback.print_exc()
        return model_type, cls, params, time.perf_counter() - t0, families._short(e), fact


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated model_types")
    ap.add_argument("--facts", action="store_true", help="print each family's FamilyFacts")
    ap.add_argument("--all", action="store_true", help="also retry the build-failure exclusions")
    ap.add_argument("--trace", action="store_true", help="print tracebacks")
    args = ap.parse_args()
    from transformers.utils import logging
    logging.set_verbosity_error()  # config warnings about default token ids are noise here
    logging.disable_progress_bar()
    torch.set_num_threads(1)  # small models; threads only add contention on shared cores

    types = list(families.INCLUDED)
    if args.all:
        types += sorted(families._BUILD_FAILS)
    if args.only:
        types = [t for t in args.only.split(",") if t]
    bad, total = 0, 0.0
    for mt in types:
        mt, cls, params, seconds, status, fact = check(mt)
        total += seconds
        bad += status != "ok"
        print(f"{mt:22s} {cls:34s} {params:>9,d} {seconds:6.2f}s {status}", flush=True)
        if args.facts and fact is not None:
            print(f"    layers={fact.layers_path} classes={fact.layer_classes} "
                  f"hetero={fact.heterogeneous} kinds={fact.layer_kinds} "
                  f"moe_layers={fact.moe_layers}")
            for name in ("per_layer_fields", "index_fields", "pattern_fields"):
                if getattr(fact, name):
                    print(f"    {name}={getattr(fact, name)}")
    print(f"{len(types) - bad}/{len(types)} ok, {total:.1f}s in all "
          f"(included {len(families.INCLUDED)}, excluded {len(families.EXCLUDED)})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
