"""Remove the imports pyflakes reports unused in the given files (top-level import blocks only)."""
import ast
import re
import subprocess
import sys
from pathlib import Path

for f in sys.argv[1:]:
    out = subprocess.run([sys.executable, "-m", "pyflakes", f], capture_output=True, text=True).stdout
    unused: dict[int, set[str]] = {}
    for line in out.splitlines():
        m = re.match(rf"{re.escape(f)}:(\d+):\d+:? '(.+)' imported but unused", line)
        if m:
            unused.setdefault(int(m.group(1)), set()).add(m.group(2).split(".")[-1].split(" as ")[-1])
    if not unused:
        continue
    src = Path(f).read_text()
    tree = ast.parse(src)
    lines = src.splitlines(keepends=True)
    edits = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno in unused:
            drop = unused[node.lineno]
            keep = [a for a in node.names if (a.asname or a.name).split(".")[-1] not in drop
                    and (a.asname or a.name) not in drop]
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                text = (f"from {mod} import " + ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in keep) + "\n") if keep else ""
                if len(text) > 100:
                    text = f"from {mod} import (" + ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in keep) + ")\n"
            else:
                text = ("import " + ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in keep) + "\n") if keep else ""
            edits.append((node.lineno, node.end_lineno, text))
    for l0, l1, text in sorted(edits, reverse=True):
        lines[l0 - 1:l1] = [text] if text else []
    Path(f).write_text("".join(lines))
