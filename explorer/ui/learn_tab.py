"""Tab 6, Learn: what each measure and method does, for students, with the papers.

The explanations come from the pipeline itself (`MEASURES[...].description`, `Method.description`),
so the app, the CLI and the docs say the same thing; this module only lays them out. The text
about how to read the heatmaps is the UI's own.
"""

import gradio as gr

from . import features

CONVENTION = """**How to read the heatmaps.** A model with L layers has L+1 *boundaries*: x0 is the
input of layer 0 (the token embeddings), xk is the output of layer k-1 and the input of layer k, and
xL is the output of the last layer (before the final norm). Cell (a, b) compares xa with xb: it says
how much the **block of layers a..b-1** changes the hidden state. Cells next to the diagonal are
single layers (cell (k, k+1) is layer k). Similar boundaries mean the block in between does little:
a candidate to drop, or to merge into one layer. **Click a cell (a, b)** to pick that block."""

INTRO = """Layer Explorer measures how much each layer of a language model changes its hidden
state, and lets you remove or merge the layers that change it least, then checks what that cost
(perplexity, sample generations). The measures compare the hidden states at two depths; the
methods turn such measurements into a plan. Perplexity is exp(mean negative log-likelihood) of
the evaluation text: lower is better; the exact protocol is printed with every figure."""


def _paper(x) -> str:
    paper = getattr(x, "paper", "") or ""
    return f"\n\n*Paper:* {paper}" if paper else ""


def measure_help(name: str) -> str:
    m = features.measures().get(name)
    if m is None:
        return ""
    kind = "similarity (higher = more alike)" if m.higher_is_similar else \
        "distance (lower = more alike)"
    return f"**{m.title}** — a {kind}.\n\n{m.description}{_paper(m)}"


def method_help(name: str) -> str:
    for m in features.methods():
        if m.name == name:
            return f"**{m.title}**\n\n{m.description}{_paper(m)}"
    return ""


def learn_markdown() -> str:
    parts = ["## What this is\n", INTRO, "\n\n", CONVENTION, "\n\n## Measures\n"]
    ms = features.measures()
    if not ms:
        parts.append("\n(The measures are not available in this installation.)\n")
    for name in ms:
        parts.append(f"\n### `{name}`\n{measure_help(name)}\n")
    parts.append("\n## Methods\n")
    methods = features.methods()
    if not methods:
        parts.append("\n(The compression methods are not available in this installation; manual "
                     "drops and merges still work.)\n")
    for m in methods:
        parts.append(f"\n### `{m.name}`\n{method_help(m.name)}\n")
    parts.append("\n## Manual merges\nA manual merge replaces a block of layers by one layer whose "
                 "linear weights combine the block's weights: *average* takes their mean, *LaCo* "
                 "keeps the first layer and adds the other layers' differences from it (Yang et "
                 "al., LaCo, arXiv 2402.11187). Norm weights are kept from the first layer.\n")
    return "".join(parts)


def build(ctx) -> None:
    gr.Markdown(learn_markdown(), elem_id="lx-learn")
