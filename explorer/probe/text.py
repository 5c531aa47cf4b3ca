"""Text sources for calibration (probing, fitting) and evaluation (perplexity).

Sources: "wiki" (107 English Wikipedia articles shipped in gensim's test data, the closest offline
stand-in for WikiText), "news" (gensim's Lee corpus, 300 news articles), "mix" (the two in
alternating pieces), "wikitext2" (the papers' standard, through `datasets`, needs the hub), or a
user's text / .txt file.

Calibration and evaluation text are disjoint by construction: a source is a list of documents and
`split_documents` gives the odd-numbered documents to calibration and the even-numbered ones to
evaluation (a single document is cut in two halves at a paragraph boundary).

The split is used only where one command needs both from the same source (compress calibrates and
evaluates; its protocol line says "evaluation half"). A user's own text that is only evaluated is
evaluated whole (`Texts.for_evaluation`); a builtin source always evaluates on its evaluation half,
the documented protocol of the measured tables.

Example:
    >>> texts = load_texts("wiki")
    >>> len(texts.evaluation) > len(texts.calibration) > 0
    True
"""

from __future__ import annotations

import bz2
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from explorer.load.embedded import cache_root
from explorer.core.errors import TextError, one_line

MAX_TEXT_BYTES = 20 * 2**20   # 20 MiB: larger files or pastes are refused before being read whole
MIN_CHARS = 20
BUILTIN_SOURCES = ("wiki", "news", "mix", "wikitext2")
MIX_CHUNK = 2000              # characters per alternating piece of the "mix" source


@dataclass(frozen=True)
class Texts:
    """Disjoint calibration and evaluation text from one source."""

    source: str         # "wiki", "news", "wikitext2", "user", or a file name
    calibration: str    # documents joined with "\n\n"
    evaluation: str
    whole: str | None = None   # a user's text in full and as given, not stripped (None for the
                               # builtin sources): a leading space changes every window's tokens

    def for_evaluation(self, calibrated: bool = False) -> tuple[str, str]:
        """(text, source label) to evaluate on.

        calibrated: the same command also calibrates on this source, so it evaluates on the
        evaluation half only and the label says so. Otherwise a user's text is evaluated whole.
        """
        if calibrated:
            return self.evaluation, f"{self.source}, evaluation half (the other half calibrates)"
        if self.whole is not None:
            return self.whole, self.source
        return self.evaluation, self.source


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    """Disjoint (calibration, evaluation) document lists: odd-numbered docs vs even-numbered docs."""
    docs = [d.strip() for d in docs if d and d.strip()]
    if not docs:
        raise TextError("the text is empty")
    if len(docs) == 1:
        text = docs[0]
        cut = text.find("\n", len(text) // 2)
        cut = cut if cut > 0 else len(text) // 2
        return [text[cut:].strip()], [text[:cut].strip()]
    return docs[1::2], docs[0::2]


def _texts(source: str, docs: list[str]) -> Texts:
    cal, ev = split_documents(docs)
    evaluation = "\n\n".join(ev)
    if len(evaluation) < MIN_CHARS:
        total = sum(len(d.strip()) for d in docs if d)
        raise TextError(f"the text from {source} is too short: {total} characters, split into "
                        f"a calibration half and an evaluation half; give at least "
                        f"{2 * MIN_CHARS} characters (a few sentences)")
    return Texts(source=source, calibration="\n\n".join(cal), evaluation=evaluation)


def _gensim_file(name: str) -> Path:
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise TextError("the bundled texts need gensim: pip install gensim==4.4.0") from None
    return Path(datapath(name))


def wiki_documents() -> list[str]:
    """The 107 Wikipedia articles of gensim's test data, wiki markup stripped, redirects skipped.

    Parsing takes a few seconds, so the plain text is cached as JSON under the cache root.
    """
    cached = cache_root() / "text" / "enwiki-gensim-v2.json"
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))
    # first the file (a clear TextError when gensim is missing), then gensim's wiki parser
    src = _gensim_file("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    docs = []
    with bz2.open(src, "rb") as f:
        for title, markup, _pageid in extract_pages(f):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            body = re.sub(r"'{2,}", "", filter_wiki(markup))  # drop bold/italic quote marks
            body = re.sub(r"\n{3,}", "\n\n", body).strip()
            if len(body) > 200:
                docs.append(f"{title}\n\n{body}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".partial")
    tmp.write_text(json.dumps(docs), encoding="utf-8")
    tmp.replace(cached)
    return docs


def news_documents() -> list[str]:
    """gensim's Lee background corpus: 300 short news articles, one per line."""
    lines = _gensim_file("lee_background.cor").read_text(encoding="utf-8", errors="replace")
    return [ln.strip() for ln in lines.splitlines() if ln.strip()]


def _pieces(text: str, size: int = MIX_CHUNK) -> list[str]:
    """`text` cut at paragraph (else line) boundaries into pieces of about `size` characters."""
    out, cur = [], ""
    for para in re.split(r"(?<=\n)", text):
        cur += para
        if len(cur) >= size:
            out.append(cur.strip())
            cur = ""
    return out + ([cur.strip()] if cur.strip() else [])


def interleave(a: str, b: str, size: int = MIX_CHUNK) -> str:
    """Pieces of about `size` characters of a and b in turn (then the rest of the longer): a
    text whose every stretch of a few windows holds both kinds."""
    pa, pb = _pieces(a, size), _pieces(b, size)
    mixed = [p for pair in zip(pa, pb) for p in pair]
    n = min(len(pa), len(pb))
    return "\n\n".join(mixed + pa[n:] + pb[n:])


def mix_texts() -> Texts:
    """"mix": wiki and news in alternating pieces of ~2000 characters, calibration halves with
    calibration halves and evaluation halves with evaluation halves (still disjoint)."""
    w, n = load_texts("wiki"), load_texts("news")
    return Texts("mix", calibration=interleave(w.calibration, n.calibration),
                 evaluation=interleave(w.evaluation, n.evaluation))


def wikitext2_documents(split: str) -> list[str]:
    """WikiText-2 (raw) through `datasets`; needs the Hugging Face hub."""
    try:
        from datasets import load_dataset

        ds = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as exc:
        raise TextError("WikiText-2 could not be loaded (it needs the Hugging Face hub): "
                        + one_line(exc)) from None
    return ["".join(ds["text"])]


def read_text_file(path: str | Path, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A user's UTF-8 text file, refused before reading when larger than `max_bytes`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise TextError(f"text file '{path}' does not exist")
    if not p.is_file():  # a folder, a FIFO or a device (/dev/zero) would never end or hang
        raise TextError(f"'{path}' is not a regular text file")
    size = p.stat().st_size
    if size > max_bytes:
        shown = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
        raise TextError(f"text file '{p.name}' is {shown}; the limit is "
                        f"{max_bytes / 2**20:.0f} MiB")
    try:
        with open(p, "rb") as f:  # never more than the limit, even if the file grows meanwhile
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise TextError(f"text file '{p.name}' is larger than the {max_bytes / 2**20:.0f} MiB "
                            "limit")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextError(f"text file '{p.name}' is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise TextError(f"text file '{p.name}' could not be read: {one_line(exc)}") from None


def user_texts(text: str, name: str = "user", max_bytes: int = MAX_TEXT_BYTES) -> Texts:
    """Texts from a user's own string: documents are separated by blank lines."""
    if not isinstance(text, str):
        raise TextError("the text must be a string")
    too_large = f"the text is larger than the {max_bytes / 2**20:.0f} MiB limit"
    if len(text) > max_bytes:  # at least one UTF-8 byte per character: refused without encoding
        raise TextError(too_large)
    try:
        size = len(text.encode("utf-8"))  # one encode checks validity and measures the size
    except UnicodeEncodeError as exc:  # lone surrogates from a broken upload or clipboard
        raise TextError(f"the text is not valid Unicode (character {exc.start})") from None
    if size > max_bytes:
        raise TextError(too_large)
    if not text.strip():
        raise TextError("the text is empty")
    docs = [d for d in re.split(r"\n\s*\n", text) if d.strip()]
    # Many short paragraphs alternate well; a single long one is halved. The text evaluated whole is
    # the text exactly as given: stripping a file that starts with spaces shifts every window
    # (GPL-3's text: 25.15 stripped against 24.92 as it is).
    return replace(_texts(name, docs), whole=text)


def load_texts(source: str = "wiki") -> Texts:
    """Calibration and evaluation text for a source name or a .txt path."""
    if source == "wiki":
        return _texts("wiki", wiki_documents())
    if source == "news":
        return _texts("news", news_documents())
    if source == "mix":
        return mix_texts()
    if source == "wikitext2":
        return Texts("wikitext2", calibration=wikitext2_documents("train")[0][:2_000_000],
                     evaluation=wikitext2_documents("test")[0])
    if not source or not source.strip():
        raise TextError("no text source given; use wiki, news, mix, wikitext2 or a .txt path")
    p = Path(source).expanduser()
    if p.exists() or source.endswith(".txt") or "/" in source:
        return user_texts(read_text_file(p), name=p.name)
    raise TextError(f"unknown text source '{source}'; use wiki, news, mix, wikitext2 or a .txt "
                    "path")
