"""Resolve conflict blocks in the given files by keeping both sides (ours, then theirs), for
blocks where both sides are only import lines; print any other block left."""
import re
import sys
from pathlib import Path

BLOCK = re.compile(r"<<<<<<< [^\n]*\n(.*?)=======\n(.*?)>>>>>>> [^\n]*\n", re.S)
for f in sys.argv[1:]:
    s = Path(f).read_text()

    def res(m):
        ours, theirs = m.group(1), m.group(2)
        lines = (ours + theirs).splitlines(keepends=True)
        if all(l.startswith(("from ", "import ", "    ")) or not l.strip() for l in lines):
            seen, out = set(), []
            for l in lines:
                if l not in seen:
                    seen.add(l); out.append(l)
            return "".join(out)
        print(f"{f}: left a non-import conflict")
        return m.group(0)

    Path(f).write_text(BLOCK.sub(res, s))
