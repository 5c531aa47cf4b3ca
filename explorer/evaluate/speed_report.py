"""What a speed measurement reports (`speed.measure_speed` makes it): each case's timings, dense and
variant side by side, the memory figures, and what limits the speed-up (Amdahl's law).

A case is prefill or decode at one batch size. Each timing keeps every round's seconds; a figure
is the median of its rounds with the spread (max - min) / median, and the speed-up is the median
of the per-round ratios dense seconds / variant seconds. With a fraction f of the dense time
spent outside the decoder layers, removing layers gives at best 1 / (f + (1 - f) x L'/L).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Timing:
    """Seconds of one case for one model over the timed rounds."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median over the rounds."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.median > 0 else 0.0


@dataclass(frozen=True)
class SpeedCase:
    """One case (prefill or decode at one batch size), dense and variant side by side."""

    kind: str                      # "prefill" or "decode"
    batch: int
    tokens: int                    # prompt tokens (prefill) or new tokens per sequence (decode)
    dense: Timing
    variant: Timing | None
    ratios: tuple[float, ...] = ()             # per round: dense seconds / variant seconds
    outside_dense: float = float("nan")        # fraction of the time outside the decoder layers
    outside_variant: float = float("nan")

    @property
    def speedup(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def speedup_spread(self) -> float | None:
        if not self.ratios:
            return None
        m = statistics.median(self.ratios)
        return (max(self.ratios) - min(self.ratios)) / m

    def rate(self, t: Timing) -> float:
        """Decode: new tokens per second (all sequences); prefill: prompt tokens per second."""
        return self.batch * self.tokens / t.median

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "batch": self.batch, "tokens": self.tokens,
               "dense_seconds": round(self.dense.median, 6),
               "dense_spread": round(self.dense.spread, 4),
               "dense_tokens_per_second": round(self.rate(self.dense), 2),
               "outside_layers_dense": round(self.outside_dense, 4)}
        if self.variant is not None:
            out.update({"variant_seconds": round(self.variant.median, 6),
                        "variant_spread": round(self.variant.spread, 4),
                        "variant_tokens_per_second": round(self.rate(self.variant), 2),
                        "outside_layers_variant": round(self.outside_variant, 4),
                        "speedup": round(self.speedup, 4),
                        "speedup_spread": round(self.speedup_spread, 4)})
        return out


@dataclass(frozen=True)
class MemoryFigures:
    weights_bytes: int
    kv_cache_bytes: int            # at the end of decoding at the largest batch
    peak_bytes: int | None         # of the largest decode run (see `peak_kind`)


@dataclass(frozen=True)
class SpeedReport:
    device: str
    dtype: str
    threads: int
    layers_dense: int
    layers_variant: int | None
    variant: str | None                      # the variant's description
    prefill_tokens: int
    decode_prompt: int
    new_tokens: int
    repeats: int
    cases: tuple[SpeedCase, ...]
    memory_dense: MemoryFigures
    memory_variant: MemoryFigures | None
    peak_kind: str
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def case(self, kind: str, batch: int) -> SpeedCase:
        for c in self.cases:
            if c.kind == kind and c.batch == batch:
                return c
        raise KeyError((kind, batch))

    @property
    def layer_ratio(self) -> float | None:
        """L / L': the speed-up if all of the time were in the decoder layers."""
        return self.layers_dense / self.layers_variant if self.layers_variant else None

    def outside_fraction(self) -> float:
        """Median over the cases of the dense model's fraction of time outside its layers."""
        return statistics.median(c.outside_dense for c in self.cases)

    def amdahl_bound(self, c: SpeedCase) -> float | None:
        """The best speed-up removing layers can give in case `c`, from the dense model's time
        outside its layers: 1 / (f + (1 - f) L'/L)."""
        if not self.layers_variant:
            return None
        f = c.outside_dense
        return 1.0 / (f + (1 - f) * self.layers_variant / self.layers_dense)

    def protocol(self) -> str:
        return (f"{self.device} ({self.dtype}, {self.threads} threads): prefill of "
                f"{self.prefill_tokens} tokens (last-position logits), decode of "
                f"{self.new_tokens} new tokens after a {self.decode_prompt}-token prompt with the "
                f"KV cache; dense and variant interleaved in alternating order after a warm-up, "
                f"median of {self.repeats} rounds, spread = (max - min) / median")

    def limits(self) -> str:
        """One paragraph: what keeps the measured speed-up below the layer ratio."""
        if not self.layers_variant:
            return ""
        parts = []
        for c in self.cases:
            if c.speedup is None:
                continue
            parts.append(f"{c.kind} batch {c.batch}: x{c.speedup:.2f} measured, at most "
                         f"x{self.amdahl_bound(c):.2f} with {100 * c.outside_dense:.0f}% of the "
                         "dense time outside the decoder layers")
        return (f"Layer ratio {self.layers_dense}/{self.layers_variant} = x{self.layer_ratio:.2f} "
                "if all the time were in the layers; the embedding, final norm, head and the "
                "per-step overhead do not shrink (Amdahl's law). " + "; ".join(parts) + ".")

    def to_dict(self) -> dict:
        def mem(m: MemoryFigures | None) -> dict | None:
            return None if m is None else {"weights_bytes": m.weights_bytes,
                                           "kv_cache_bytes": m.kv_cache_bytes,
                                           "peak_bytes": m.peak_bytes}
        out = {"device": self.device, "dtype": self.dtype, "threads": self.threads,
               "layers_dense": self.layers_dense, "layers_variant": self.layers_variant,
               "variant": self.variant, "layer_ratio": self.layer_ratio,
               "cases": [c.to_dict() for c in self.cases],
               "outside_layers_fraction": round(self.outside_fraction(), 4),
               "memory_dense": mem(self.memory_dense), "memory_variant": mem(self.memory_variant),
               "peak_kind": self.peak_kind, "protocol": self.protocol(),
               "limits": self.limits(), "seconds": round(self.seconds, 2),
               "notes": list(self.notes)}
        if self.layers_variant:
            for c, d in zip(self.cases, out["cases"]):
                d["amdahl_bound"] = round(self.amdahl_bound(c), 4)
        return out
