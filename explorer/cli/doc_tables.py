"""The parameter tables in docs/ (and the settings table in README.md) are generated from the registries: `python -m explorer.cli.doc_tables`
rewrites them, `python -m explorer.cli.doc_tables --check` fails when one is stale (a test runs it).

Each table sits between two marker lines in its page:

    <!-- generated: methods parameters (python -m explorer.cli.doc_tables) -->
    | method | parameter | default | allowed | meaning |
    ...
    <!-- end generated -->
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
END = "<!-- end generated -->"


def _tables() -> dict[str, tuple[str, Callable[[], str]]]:
    from explorer.heal.registry import modes_table
    from explorer.measure.measures import measures_table
    from explorer.plan.registry import methods_table
    from explorer.core.settings import settings_table

    return {"settings": ("README.md", settings_table),
            "methods": ("docs/methods.md", methods_table),
            "measures": ("docs/measures.md", measures_table),
            "healing": ("docs/healing.md", modes_table)}


def start_marker(name: str) -> str:
    return f"<!-- generated: {name} parameters (python -m explorer.cli.doc_tables) -->"


def render(page: str, start: str, table: str) -> str:
    """`page` with the block between the marker line `start` and the next end marker replaced by
    `table` (bench/readme_figures.py renders the README's figures the same way)."""
    if start not in page:
        raise ValueError(f"no '{start}' marker in the page")
    head, rest = page.split(start, 1)
    if END not in rest:
        raise ValueError(f"no '{END}' after '{start}'")
    return head + start + "\n" + table + "\n" + END + rest.split(END, 1)[1]


def stale(root: Path = ROOT) -> list[str]:
    """The docs pages whose generated table differs from the registries."""
    out = []
    for name, (path, table) in _tables().items():
        page = (root / path).read_text(encoding="utf-8")
        if render(page, start_marker(name), table()) != page:
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        bad = stale()
        for path in bad:
            print(f"{path}: parameter table is stale; run python -m explorer.cli.doc_tables")
        return 1 if bad else 0
    for name, (path, table) in _tables().items():
        page = (ROOT / path).read_text(encoding="utf-8")
        new = render(page, start_marker(name), table())
        if new != page:
            (ROOT / path).write_text(new, encoding="utf-8")
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
