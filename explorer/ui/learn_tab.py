"""Tab 6, Learn: what each measure and method does, for students, with the papers linked.

The explanations come from the pipeline itself (`MEASURES[...].description`, `Method.description`,
the declared parameters' table), so the app, the CLI and the docs say the same thing; this module
only lays them out. The text about how to read the heatmaps is the UI's own.
"""

import re

import gradio as gr

from ..errors import ExplorerError
from ..heal import get_mode
from ..measure import MEASURES
from ..methods import get_method, list_methods
from ..params import markdown_table

CONVENTION = """**How to read the heatmaps.** A model with L layers has L+1 *boundaries*: x0 is the
input of layer 0 (the token embeddings), xk is the output of layer k-1 and the input of layer k, and
xL is the output of the last layer (before the final norm). Cell (a, b) compares xa with xb: it says
how much the **block of layers a..b-1** changes the hidden state. Cells next to the diagonal are
single layers (cell (k, k+1) is layer k). **Bright (yellow) = alike**, for every measure: a
distance's colour scale is reversed so that its low values are bright too. A bright cell means the
block in between does little: a candidate to drop, or to merge into one layer. **Click a cell
(a, b)** to pick that block."""

INTRO = """Layer Explorer measures how much each layer of a language model changes its hidden
state, and lets you remove or merge the layers that change it least, then checks what that cost
(perplexity, sample generations). The measures compare the hidden states at two depths; the
methods turn such measurements into a plan. Perplexity is exp(mean negative log-likelihood) of
the evaluation text: lower is better; the exact protocol is printed with every figure."""

_ARXIV = re.compile(r"arXiv[:\s]\s*(\d{4}\.\d{4,5})")


def link_papers(text: str) -> str:
    """'... arXiv:2403.03853' -> '... [arXiv:2403.03853](https://arxiv.org/abs/2403.03853)'."""
    return _ARXIV.sub(lambda m: f"[arXiv:{m.group(1)}](https://arxiv.org/abs/{m.group(1)})", text)


def _paper(x) -> str:
    paper = getattr(x, "paper", "") or ""
    return f"\n\n*Paper:* {link_papers(paper)}" if paper else ""


def _kind(m) -> str:
    return "similarity (higher = more alike)" if m.higher_is_similar else \
        "distance (lower = more alike; drawn with the scale reversed, so bright = alike)"


def measure_help(name: str) -> str:
    """A measure's title, direction, description and paper (the Analyse tab's help)."""
    m = MEASURES.get(name)
    if m is None:
        return ""
    return f"**{m.title}** — a {_kind(m)}.\n\n{m.description}{_paper(m)}"


def method_title(name: str) -> str:
    """A method's title for people ("ShortGPT (Block Influence)"); "manual" for a hand-made
    plan; the name itself when unknown."""
    if name == "manual":
        return "manual"
    try:
        return get_method(name).title
    except ExplorerError:
        return name


def mode_title(name: str) -> str:
    """A healing mode's title ("Closed-form linear map ..."), or the name when unknown."""
    try:
        return get_mode(name).title
    except ExplorerError:
        return name


def method_help(name: str) -> str:
    """A method's title, description and paper (the Plan tab's help)."""
    try:
        m = get_method(name)
    except ExplorerError:  # an unknown name from the page: nothing to explain
        return ""
    return f"**{m.title}**\n\n{m.description}{_paper(m)}"


def learn_markdown() -> str:
    parts = ["## What this is\n", INTRO, "\n\n", CONVENTION, "\n\n## Measures\n"]
    for name, m in MEASURES.items():
        parts.append(f"\n### {m.title} <small>(`{name}`)</small>\nA {_kind(m)}.\n\n"
                     f"{m.description}{_paper(m)}\n")
    parts.append("\n## Methods\n")
    for m in list_methods():
        params = markdown_table([(m.name, m.params)], owner_column=False) if m.params else ""
        parts.append(f"\n### {m.title} <small>(`{m.name}`)</small>\n{m.description}{_paper(m)}"
                     f"\n\n{params}\n")
    parts.append("\n## Manual merges\nA manual merge replaces a block of layers by one layer whose "
                 "linear weights combine the block's weights: *average* takes their mean, *LaCo* "
                 "keeps the first layer and adds the other layers' differences from it (Yang et "
                 "al., LaCo, " + link_papers("arXiv:2402.11187") + "). Norm weights are kept from "
                 "the first layer.\n")
    return "".join(parts)


def build(ctx) -> None:
    gr.Markdown(learn_markdown(), elem_id="lx-learn")
