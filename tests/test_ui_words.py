"""Issue 32 [6]: the app speaks in human words. Every tab's text, labels, help lines, choices and
placeholders are scanned for raw parameter names and registry keys (measures, methods, healing
modes); such a name may appear only as code (in backticks: a command line, the Learn tab's
parameter tables). The progress notes the app writes are checked the same way."""

from __future__ import annotations

import re

import pytest

from explorer.heal import list_modes
from explorer.measure.measures import MEASURES
from explorer.plan import list_methods

# registry keys that are also plain English, and so may be read as words
ENGLISH = {"cosine", "angular", "average", "manual", "steps", "seconds", "windows", "measure",
           "objective", "seed", "mode", "layers", "remove", "ratio", "rule", "text", "model",
           "samples", "target", "scope", "alpha", "beta", "distill", "lr", "iterations",
           "epochs", "rank", "budget", "normalize", "metric", "method", "order", "temperature",
           "calibration", "block", "blocks", "heal", "tokens", "window", "candidates", "loss",
           "stride", "trials", "passes", "batch", "after", "before", "then", "generations",
           "head", "fold", "ridge", "train", "span", "drop", "pairs", "parts", "scale", "starts",
           "tail", "adjacent", "closed-form", "tail-finetune", "damage"}


def raw_names() -> set[str]:
    names = set(MEASURES) | {m.name for m in list_methods()} | {m.name for m in list_modes()}
    for owner in [*list_methods(), *list_modes()]:
        names |= {p.name for p in owner.params}
    return {n for n in names if (len(n) >= 3 or n in MEASURES) and n.lower() not in ENGLISH}


def without_code(text: str) -> str:
    """The text outside code spans and blocks (where a raw name is a command's)."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"<code>.*?</code>", " ", text, flags=re.S)
    return re.sub(r"`[^`]*`", " ", text)


def found(text: str, names: set[str]) -> list[str]:
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9_&\-]*", without_code(text)))
    return sorted(words & names)


def page_texts(demo) -> list[tuple[str, str]]:
    """(where, text) of every component's words as the page first shows them."""
    out = []
    for c in demo.config["components"]:
        props, where = c.get("props", {}), f"{c.get('type')} {c.get('props', {}).get('elem_id')}"
        for key in ("label", "info", "placeholder"):
            if isinstance(props.get(key), str):
                out.append((f"{where} {key}", props[key]))
        if c.get("type") in ("markdown", "html", "button") and isinstance(props.get("value"), str):
            out.append((f"{where} text", props["value"]))
        for choice in props.get("choices") or []:
            if isinstance(choice, (list, tuple)):
                out.append((f"{where} choice", str(choice[0])))
        if isinstance(props.get("headers"), list):
            out.append((f"{where} headers", " ".join(map(str, props["headers"]))))
    return out


@pytest.fixture(scope="module")
def demo():
    from explorer.ui import build_app

    return build_app(warm_up=False)


def test_no_tab_shows_a_raw_name(demo):
    names = raw_names()
    assert {"npib", "shortgpt", "check_every", "held_out"} <= names | {"npib"}
    bad = [(where, found(text, names)) for where, text in page_texts(demo)
           if found(text, names)]
    assert not bad, bad


def test_help_lines_speak_of_values_not_types(demo):
    infos = [t for where, t in page_texts(demo) if where.endswith("info")]
    for phrase in ("one of '", "(true or false)", " or none)"):
        assert not [t for t in infos if phrase in t], phrase


def test_progress_notes_use_display_names(monkeypatch):
    """The analysis' notes name each measure by its title ('Block Influence'), not 'bi'."""
    from explorer.ui import jobs

    class Probe:
        seconds = 0.0
    notes = []
    monkeypatch.setattr(jobs.APP_CACHES, "ensure_model", lambda spec, progress=None: None)
    monkeypatch.setattr(jobs.APP_CACHES, "get_texts", lambda key: type("T", (), {
        "calibration": ""})())
    monkeypatch.setattr(jobs, "probe", lambda *a, **k: Probe())
    monkeypatch.setattr(jobs.measure, "adjacent", lambda pr, name: [0.0])
    jobs.analyse_job("m", "wiki", 8, 1, 8, progress=lambda e: notes.append(e.describe()))
    names = raw_names() | set(MEASURES)
    assert notes and not [n for n in notes if found(n, names - ENGLISH)], notes


def test_the_progress_bar_says_display_names():
    """A method's or a mode's stage ('shortgpt: probing', 'heal layerwise: step 3/10') reaches
    the bar in display names."""
    from explorer.core.progress import Event
    from explorer.ui import stop

    said = []
    show = stop.bar(lambda fraction, desc: said.append(desc))
    show(Event("shortgpt", 0.05, note="probing the calibration text"))
    show(Event("heal layerwise", 0.3, step=3, total=10, unit="steps"))
    assert said[0].startswith("ShortGPT: probing") and "Layer-wise" in said[1]
    assert not [s for s in said if found(s, raw_names())], said


def test_the_model_tab_names_the_text_in_words(demo):
    texts = [t for where, t in page_texts(demo) if t.startswith("**Text:**")]
    assert texts == ["**Text:** Wikipedia (the default)."]


def test_the_gate_box_leaves_the_refusal_to_the_gate(demo):
    """Issue 32 [12]: a ratio of 0.5 gets the gate's own line, not gradio's "Value 0.5 is less
    than minimum value 1." (the box sets no minimum; `check_gate` refuses with a reason)."""
    from explorer.core.errors import ExplorerError
    from explorer.evaluate.gate import check_gate

    box = next(c for c in demo.config["components"]
               if c.get("props", {}).get("elem_id") == "lx-gate-ratio")
    assert box["props"].get("minimum") is None
    with pytest.raises(ExplorerError, match="must be a number greater than 1"):
        check_gate(0.5)


def test_plain_words_stay_words():
    """Only snake_case names are said by their labels: 'windows' and 'ridge' stay English
    ('calibration windows fitted on', not 'calibration *Fitted windows* fitted on')."""
    from explorer.heal import get_mode
    from explorer.ui.controls import human

    params = get_mode("layerwise").params
    assert human("calibration windows fitted on", params) == "calibration windows fitted on"
    assert human("ridge term", get_mode("closed-form").params) == "ridge term"
    assert human("every check_every steps", params) == "every *Check every* steps"
    assert human("see `check_every`", params) == "see `check_every`"        # code stays code


def bad_value(p):
    """A value `p` refuses, or None where every text is allowed."""
    if p.choices:
        return "nope"
    return {int: "abc", float: "abc", bool: "maybe", list: "{", dict: "["}.get(p.type)


def test_errors_in_toasts_use_display_names():
    """Issue 32 [6]: the one line a toast shows for a refused value or a method's own error says
    the method, the mode and the field in words ("LaCo: Acceptance threshold (T) must be ...",
    not "laco: T must be ..."); the app's own check of the controls and the library's errors
    (raised with the registry's keys: "heal mode 'layerwise': check_every must be ...") alike."""
    from explorer.core.errors import ExplorerError
    from explorer.core.params import resolve
    from explorer.plan import get_method
    from explorer.ui import controls
    from explorer.ui.common import _shown

    def toast(call) -> str:
        with pytest.raises(ExplorerError) as refused:
            call()
        return _shown(refused.value, "test").message

    laco = get_method("laco")
    raw = [("abc" if p.name == "T" else p.default) for p in laco.params]
    line = toast(lambda: controls.read(laco.params, raw, laco.name))
    assert line.startswith("LaCo: Acceptance threshold (T) must be a number"), line
    mka = get_method("mka")
    raw = [("nope" if p.name == "weight_rule" else p.default) for p in mka.params]
    line = toast(lambda: controls.read(mka.params, raw, mka.name))
    assert line.startswith("MKA: Weight rule must be one of ") and "'" not in line.split("(got")[0]

    names, lines = raw_names(), []
    owners = [(m, m.name) for m in list_methods()] + [(m, f"heal mode '{m.name}'")
                                                     for m in list_modes()]
    for owner, key in owners:
        for p in owner.params:
            if bad_value(p) is not None:
                lines.append(toast(lambda: resolve(owner.params, {p.name: bad_value(p)}, key)))
                lines.append(toast(lambda: controls.read(
                    owner.params, [bad_value(q) if q is p else q.default for q in owner.params],
                    owner.name)))
    assert len(lines) > 40
    bad = [(line, found(line, names)) for line in lines if found(line, names)]
    assert not bad, bad


def test_lacos_own_errors_say_its_fields_in_words(tiny_lm, sample_text):
    """LaCo's errors while it runs (a walk that falls short, no candidate left, L above H) name
    its fields by their labels ("acceptance threshold (T)"), never a bare letter (L=, H, T=), in
    the toast and on the command line alike."""
    from explorer.plan import compress
    from explorer.core.errors import LayerError
    from explorer.ui.common import _shown

    kw = dict(calibration=sample_text, seqlen=32, num_samples=4)
    cases = [(dict(remove=2, C=3, T=1.0, mode="walk"),
              r"^LaCo: the paper's walk \(3 layers per merge\) ended after removing 0 of 2 "
              r"layers: accepted 0 of 3 merges at an acceptance threshold \(T\) of 1\.0 .*; lower "
              r"the acceptance threshold \(T\) or the layers per merge \(C\), or choose the walk "
              r"'to the target size \(ours\)'"),
             (dict(remove=3, C=2, L=4, H=5),
              r"^LaCo: no merge candidate left between the lowest layer \(L\) 4 and the highest "
              r"layer \(H\) 5 after removing 0 of 3 layers; lower the lowest layer \(L\) or raise "
              r"the highest layer \(H\)$"),
             (dict(remove=1, L=5, H=3),
              r"^LaCo: the lowest layer \(L\) must be at most the highest layer \(H\), and the "
              r"highest layer \(H\) below 6, the model's layer count \(got 5 and 3\)$")]
    for params, said in cases:
        with pytest.raises(LayerError) as refused:
            compress(tiny_lm, "laco", **params, **kw)
        line = _shown(refused.value, "test").message
        assert re.match(said, line), line
        assert not re.search(r"\b[CHILT]\b", re.sub(r"\([CHILT]\)", "", line)), line
