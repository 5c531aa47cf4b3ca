"""Names that explain themselves (issue 33 item 2), applied to a tree: python renames.py ROOT"""
import re
import sys
from pathlib import Path

root = Path(sys.argv[1])
heal = root / "explorer" / "heal"
# 1. the closed form's defaults, written once in closed_form.py
cf = heal / "closed_form.py"
s = cf.read_text()
if "CLOSED_FORM_DEFAULTS" not in s:
    s = s.rstrip() + ("\n\n\n# The closed form's declared defaults, for the modes that start from it (layer-wise,\n"
                      "# distillation, Prune&Comp, tail fine-tuning).\n"
                      "CLOSED_FORM_DEFAULTS = {p.name: p.default for p in ClosedForm.params}\n")
    cf.write_text(s)
for f in ["layerwise.py", "prune_comp.py", "tail_finetune.py", "distill.py"]:
    p = heal / f
    s = p.read_text()
    s = s.replace("CF = {p.name: p.default for p in ClosedForm.params}\n", "")
    s = re.sub(r"\bCF\b", "CLOSED_FORM_DEFAULTS", s)
    s = re.sub(r"\bLW\b", "LAYERWISE_DEFAULTS", s)
    s = re.sub(r"\bLR\b", "DEFAULT_LR_BY_PART", s)
    if "CLOSED_FORM_DEFAULTS" in s and not re.search(r"closed_form import [^\n]*CLOSED_FORM_DEFAULTS", s):
        s = re.sub(r"(from [\w.]*closed_form import \(?)", r"\1CLOSED_FORM_DEFAULTS, ", s, count=1)
    p.write_text(s)
    print(f, "ClosedForm" in s and "import" in s)
for p in (root / "explorer" / "methods").glob("*.py"):
    s = p.read_text()
    s2 = re.sub(r"\bABANDON\b", "EARLY_STOP", s)
    if s2 != s:
        p.write_text(s2)
# ui/registry.Registry -> AppCaches, REGISTRY -> APP_CACHES
for p in list((root / "explorer").rglob("*.py")) + list((root / "tests").rglob("*.py")) + [root / "app.py"]:
    s = p.read_text()
    s2 = re.sub(r"\bclass Registry\b(?=:\n    \"\"\"The app's caches)", "class AppCaches", s)
    s2 = re.sub(r"\bREGISTRY\b", "APP_CACHES", s2)
    if p.name in ("registry.py", "caches.py") and p.parent.name == "ui":
        s2 = s2.replace("APP_CACHES = Registry()", "APP_CACHES = AppCaches()")
    if s2 != s:
        p.write_text(s2)
