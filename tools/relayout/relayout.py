"""Move explorer's modules into stage folders (git mv) and rewrite every import and dotted path.

Usage: python /work/relayout.py ROOT [--dry]

MOVES maps old dotted module -> new dotted module. SPLITS maps (old module, symbol) -> new module
for names that left a module that was split by hand before (the split file keeps the rest).
Relative imports are resolved against each file's OLD location (a file moved earlier keeps
relative imports written for where it was), then written back as absolute imports.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(sys.argv[1]).resolve()
CONF_PATH = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--conf=")),
                 str(Path(__file__).parent / "relayout.json"))
CONF = json.loads(Path(CONF_PATH).read_text())
MOVES: dict[str, str] = CONF["moves"]
SPLITS: dict[str, dict[str, str]] = CONF.get("splits", {})     # old module -> {symbol: new module}
DRY = "--dry" in sys.argv
ONLY_CHANGED = "--only-changed" in sys.argv   # leave imports whose module stays as they are

PKG = "explorer"


def mod_to_path(mod: str) -> Path:
    """The file of an existing module (a module file wins over a package folder of the same name,
    which exists only halfway through the moves)."""
    p = ROOT / Path(*mod.split("."))
    return p.with_suffix(".py") if p.with_suffix(".py").exists() else p / "__init__.py"


def path_to_mod(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def new_name(mod: str) -> str:
    """The new dotted name of module `mod` (a package prefix moved moves its children)."""
    if mod in MOVES:
        return MOVES[mod]
    for old, new in sorted(MOVES.items(), key=lambda kv: -len(kv[0])):
        if mod.startswith(old + "."):
            return new + mod[len(old):]
    return mod


def top_names() -> set[str]:
    """Names explorer/__init__.py binds by importing them (its public API): `from explorer import
    probe` is the function, although a submodule of that name exists."""
    tree = ast.parse((ROOT / PKG / "__init__.py").read_text(encoding="utf-8"))
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.level == 1 or node.module.startswith(PKG + ".")):
            out |= {a.asname or a.name for a in node.names}
    return out


TOP_NAMES = top_names()


# -- 1. find every python file and its old module name --------------------------------------

def python_files() -> list[Path]:
    out = []
    for sub in ("explorer", "tests", "bench"):
        out += sorted((ROOT / sub).rglob("*.py"))
    out += [ROOT / "app.py"]
    return [p for p in out if p.exists()]


def old_modules() -> set[str]:
    return {path_to_mod(p) for p in (ROOT / PKG).rglob("*.py")}


def resolve(file_mod: str, is_pkg: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    parts = file_mod.split(".")
    base = parts if is_pkg else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def rewrite_imports(path: Path, file_mod: str, known: set[str]) -> str:
    src = path.read_text(encoding="utf-8")
    tree = ast.parse(src)
    lines = src.splitlines(keepends=True)
    edits: list[tuple[int, int, int, int, str]] = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            absmod = resolve(file_mod, is_pkg, node.level, node.module)
            if not (absmod == PKG or absmod.startswith(PKG + ".")):
                continue
            groups: dict[str, list[str]] = {}
            for a in node.names:
                text = a.name + (f" as {a.asname}" if a.asname else "")
                sub = f"{absmod}.{a.name}"
                if absmod == PKG and a.name in TOP_NAMES:      # the package's own API names
                    groups.setdefault(PKG, []).append(text)     # (`probe`, `export`: functions)
                elif sub in known:                             # importing a submodule by name
                    target = new_name(sub)
                    parent, leaf = target.rsplit(".", 1)
                    alias = a.asname or a.name
                    text = leaf + (f" as {alias}" if alias != leaf else "")
                    groups.setdefault(parent, []).append(text)
                elif absmod in SPLITS and a.name in SPLITS[absmod]:
                    groups.setdefault(new_name(SPLITS[absmod][a.name]), []).append(text)
                else:
                    groups.setdefault(new_name(absmod), []).append(text)
            if list(groups) == [absmod] and ONLY_CHANGED:
                continue                                       # nothing moves: leave it as written
            indent = lines[node.lineno - 1][: node.col_offset]
            stmts = []
            for mod, names in groups.items():
                one = f"from {mod} import {', '.join(names)}"
                if len(indent) + len(one) > 100:
                    one = f"from {mod} import (" + ", ".join(names) + ")"
                    # wrap long name lists
                    wrapped, cur = [], f"from {mod} import ("
                    for i, n in enumerate(names):
                        piece = n + (", " if i < len(names) - 1 else ")")
                        if len(indent) + len(cur) + len(piece) > 100:
                            wrapped.append(cur.rstrip())
                            cur = " " * len(f"from {mod} import (")
                        cur += piece
                    wrapped.append(cur)
                    one = ("\n" + indent).join(wrapped)
                stmts.append(one)
            edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset,
                          ("\n" + indent).join(stmts)))
        elif isinstance(node, ast.Import):
            changed = False
            names = []
            for a in node.names:
                if a.name == PKG or a.name.startswith(PKG + "."):
                    nn = new_name(a.name)
                    changed |= nn != a.name
                    names.append(nn + (f" as {a.asname}" if a.asname else ""))
                else:
                    names.append(a.name + (f" as {a.asname}" if a.asname else ""))
            if changed:
                edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset,
                              "import " + ", ".join(names)))
    # apply bottom-up
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    spans = sorted((offsets[l0 - 1] + c0, offsets[l1 - 1] + c1, text)
                   for l0, c0, l1, c1, text in edits)
    out, pos = [], 0
    for a, b, text in spans:
        out.append(map_text(src[pos:a], known))
        out.append(text)
        pos = b
    out.append(map_text(src[pos:], known))
    return "".join(out)


# -- 2. dotted names and paths in strings, docs and comments ---------------------------------

DOTTED = re.compile(r"(?<![\w.])explorer(?:\.\w+)+")
PATHED = re.compile(r"(?<![\w/.])explorer(?:/\w+)+(?:\.py\b|/)")


def map_dotted(s: str, known: set[str]) -> str:
    parts = s.split(".")
    for k in range(len(parts), 1, -1):
        prefix = ".".join(parts[:k])
        if prefix in known:
            rest = parts[k:]
            if prefix in SPLITS and rest and rest[0] in SPLITS[prefix]:
                return ".".join([new_name(SPLITS[prefix][rest[0]])] + rest)
            return ".".join([new_name(prefix)] + rest)
    return s


def map_pathed(s: str, known: set[str]) -> str:
    if s.endswith(".py"):
        mod = s[:-3].replace("/", ".")
        if mod.endswith(".__init__"):
            return map_pathed(s[: -len("/__init__.py")] + "/", known) + "__init__.py"
        if mod in known:
            return new_name(mod).replace(".", "/") + ".py"
        return s
    mod = s.rstrip("/").replace("/", ".")
    return new_name(mod).replace(".", "/") + "/" if mod in known else s


TEST_MOVES: dict[str, str] = CONF.get("tests", {})      # "test_old.py" -> "test_new.py"
TESTED = re.compile(r"\b(" + "|".join(re.escape(k[:-3]) for k in TEST_MOVES) + r")\.py\b") \
    if TEST_MOVES else None


def map_text(text: str, known: set[str]) -> str:
    text = DOTTED.sub(lambda m: map_dotted(m.group(0), known), text)
    text = PATHED.sub(lambda m: map_pathed(m.group(0), known), text)
    if TESTED is not None:
        text = TESTED.sub(lambda m: TEST_MOVES[m.group(1) + ".py"][:-3] + ".py", text)
        stems = {k[:-3]: v[:-3] for k, v in TEST_MOVES.items()}
        text = re.sub(r"(?m)^(\s*)(from|import) (test_\w+)\b",
                      lambda m: m.group(1) + m.group(2) + " " + stems.get(m.group(3), m.group(3)),
                      text)
    return text


def main() -> None:
    known = old_modules()
    files = python_files()
    # moved files: their module name before the move (to resolve their relative imports)
    file_old_mod = {p: path_to_mod(p) for p in files}
    new_src = {}
    for p in files:
        new_src[p] = rewrite_imports(p, file_old_mod[p], known)
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "bench").glob("*.md")), ROOT / "pyproject.toml", ROOT / ".ci" / "run"]
    doc_src = {d: map_text(d.read_text(encoding="utf-8"), known) for d in docs if d.exists()}
    if DRY:
        for p in files:
            if new_src[p] != p.read_text(encoding="utf-8"):
                print("would change", p.relative_to(ROOT))
        return
    for p, s in new_src.items():
        p.write_text(s, encoding="utf-8")
    for d, s in doc_src.items():
        d.write_text(s, encoding="utf-8")
    # 3. git mv, parents first created, each package with an __init__.py
    sources = {}
    for old in MOVES:
        src = mod_to_path(old)
        if src.exists():
            sources[old] = src.parent if src.name == "__init__.py" else src
    for old, new in MOVES.items():
        if old not in sources:
            print("not in this tree:", old)
            continue
        src = sources[old]
        dst = ROOT / Path(*new.split("."))
        if not src.is_dir():
            dst = dst.with_suffix(".py")
        dst.parent.mkdir(parents=True, exist_ok=True)
        init = dst.parent / "__init__.py"
        pkg_dir = dst.parent
        while pkg_dir != ROOT and not (pkg_dir / "__init__.py").exists():
            (pkg_dir / "__init__.py").write_text("")
            subprocess.run(["git", "add", str(pkg_dir / "__init__.py")], cwd=ROOT, check=True)
            pkg_dir = pkg_dir.parent
        subprocess.run(["git", "mv", str(src), str(dst)], cwd=ROOT, check=True)
        del init
    for old, new in TEST_MOVES.items():
        if (ROOT / "tests" / old).exists():
            subprocess.run(["git", "mv", f"tests/{old}", f"tests/{new}"], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
