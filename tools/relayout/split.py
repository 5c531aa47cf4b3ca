"""Move top-level definitions NAMES from module file SRC into a new module file DST.

python /work/split.py SRC DST DOCSTRING_FILE NAME [NAME ...]
DST gets DOCSTRING + SRC's import block (prune it after with pyflakes) + the moved definitions in
their order; SRC keeps the rest. Comments directly above a definition travel with it.
"""
import ast
import sys
from pathlib import Path

src_p, dst_p, doc_p, *names = sys.argv[1:]
names = set(names)
src = Path(src_p).read_text()
tree = ast.parse(src)
lines = src.splitlines(keepends=True)
body = tree.body
first = next(i for i, n in enumerate(body)
             if isinstance(n, (ast.Assign, ast.AnnAssign, ast.FunctionDef, ast.ClassDef)))
header_end = body[first].lineno - 1 - len(getattr(body[first], "decorator_list", []) and [1] or [])
imports_end = max(n.end_lineno for n in body[:first] if isinstance(n, (ast.Import, ast.ImportFrom)))
imports_start = min(n.lineno for n in body[:first] if isinstance(n, (ast.Import, ast.ImportFrom))) - 1
keep, move = [], []
prev = imports_end
for n in body[first:]:
    seg = "".join(lines[prev:n.end_lineno])
    prev = n.end_lineno
    if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
        own = {n.name}
    elif isinstance(n, ast.Assign):
        own = {t.id for t in n.targets if isinstance(t, ast.Name)}
    elif isinstance(n, ast.AnnAssign):
        own = {n.target.id}
    else:
        own = set()
    (move if own & names else keep).append(seg)
found = set()
for n in body[first:]:
    for nm in ({n.name} if isinstance(n, (ast.FunctionDef, ast.ClassDef)) else
               {t.id for t in getattr(n, "targets", []) if isinstance(t, ast.Name)}):
        found.add(nm)
assert names <= found, names - found
tail = "".join(lines[prev:])
imports = "".join(lines[imports_start:imports_end])
doc = Path(doc_p).read_text().rstrip() + "\n\nfrom __future__ import annotations\n\n"
imports_wo_future = imports.replace("from __future__ import annotations\n", "").lstrip("\n")
Path(dst_p).write_text(doc + imports_wo_future + "\n" + "".join(move).rstrip() + "\n")
Path(src_p).write_text("".join(lines[:imports_end]) + "".join(keep).rstrip() + "\n" + tail)
