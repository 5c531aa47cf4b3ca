"""Add `from .MOD import names` to FILE for the names pyflakes finds undefined there, taken from a
map name -> module given as MOD:name,name ... arguments; --typing puts them under TYPE_CHECKING."""
import re
import subprocess
import sys
from pathlib import Path

f, *specs = [a for a in sys.argv[1:] if a != "--typing"]
typing_only = "--typing" in sys.argv
owner = {}
for spec in specs:
    mod, names = spec.split(":")
    for n in names.split(","):
        owner[n] = mod
out = subprocess.run([sys.executable, "-m", "pyflakes", f], capture_output=True, text=True).stdout
need: dict[str, set[str]] = {}
for line in out.splitlines():
    m = re.search(r"undefined name '(\w+)'", line)
    if m and m.group(1) in owner:
        need.setdefault(owner[m.group(1)], set()).add(m.group(1))
if need:
    src = Path(f).read_text()
    lines = src.splitlines(keepends=True)
    last = max(i for i, l in enumerate(lines) if l.startswith(("from .", "from explorer", "import ")))
    while lines[last].rstrip().endswith(("(", ",")) or (lines[last + 1].startswith(" ") and not lines[last + 1].strip().startswith(("def", "class"))):
        last += 1
    add = "".join(f"from .{mod} import {', '.join(sorted(ns))}\n" for mod, ns in sorted(need.items()))
    if typing_only:
        add = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n" + "".join("    " + l for l in add.splitlines(keepends=True))
    lines.insert(last + 1, add)
    Path(f).write_text("".join(lines))
    print(f, "<-", dict(need))
