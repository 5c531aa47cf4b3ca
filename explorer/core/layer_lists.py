"""Layer lists as text, the one syntax the CLI, the app and recipes' users type.

    "3,7,10-12"      <-> [3, 7, 10, 11, 12]           (parse_layers / format_layers)
    "10-12; 20,21"   <-> [[10, 11, 12], [20, 21]]     (parse_groups / format_groups: merge blocks)

Example:
    >>> parse_layers("3,7,10-12")
    [3, 7, 10, 11, 12]
    >>> format_layers([12, 3, 10, 11, 7])
    '3,7,10-12'
"""

from __future__ import annotations

from explorer.core.errors import LayerError

MAX_LAYER_RANGE = 10_000   # "0-99999999" must not build a list of a hundred million ints


def parse_layers(spec: str | None) -> list[int]:
    """'3,7,10-12' -> [3, 7, 10, 11, 12]; a clear error for anything else."""
    if not spec:
        return []
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise LayerError(f"layer range '{part}' is reversed: write the lower layer "
                                     f"first ({hi}-{lo})")
                if hi - lo >= MAX_LAYER_RANGE:
                    raise LayerError(f"layer range '{part}' is too long (more than "
                                     f"{MAX_LAYER_RANGE} layers)")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise LayerError(f"cannot read layer list '{spec}': use numbers like 3,7,10-12") from None
    return out


def format_layers(layers: list[int]) -> str:
    """[3, 7, 10, 11, 12] -> '3,7,10-12' (the syntax `parse_layers` reads)."""
    out, run = [], []
    for i in sorted(set(layers)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def parse_groups(text: str | None) -> list[list[int]]:
    """'10-12; 20,21' -> [[10, 11, 12], [20, 21]]: blocks of layers to merge, ';'-separated."""
    groups = [sorted(set(parse_layers(part))) for part in (text or "").split(";") if part.strip()]
    return [g for g in groups if g]


def format_groups(groups: list[list[int]]) -> str:
    """[[10, 11, 12], [20, 21]] -> '10-12; 20,21' (the syntax `parse_groups` reads)."""
    return "; ".join(format_layers(g) for g in groups)
