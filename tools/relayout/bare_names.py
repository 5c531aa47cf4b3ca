"""In docs, `name.py` (a bare module file name in backticks) -> its folder path after the move."""
import json
import re
import sys
from pathlib import Path

root = Path(sys.argv[1])
moves = json.load(open("/work/relayout.json"))["moves"]
base = {}
for old, new in moves.items():
    parts = old.split(".")
    if len(parts) == 2:                       # explorer.X
        base[parts[1] + ".py"] = "/".join(new.split(".")[1:]) + ".py"
base.pop("methods.py", None)
pat = re.compile(r"(?<=`)(" + "|".join(re.escape(b) for b in base) + r")(?=[`:])")
for f in [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "bench").glob("*.md"))]:
    s = f.read_text()
    t = pat.sub(lambda m: base[m.group(1)], s)
    t = re.sub(r"(?<=`)methods/", "plan/", t)
    if t != s:
        f.write_text(t)
        print("updated", f.name)
