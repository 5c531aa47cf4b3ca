"""Errors a user can act on.

Every failure caused by input (a model id, a path, a layer index, a text) is raised as an
`ExplorerError` whose message is one line that says what was wrong and, where possible, what to do.
The CLI prints that line and exits with status 2; the web app shows it in a toast and keeps serving.
Anything else that escapes is a bug in Layer Explorer, not a user error.
"""

import os
import re


class ExplorerError(Exception):
    """A problem with what the user asked for; `str(e)` is a one-line message.

    The message is kept one line and secret-free whatever it quotes: line breaks in echoed input
    are shown as \\n, and Hugging Face tokens are redacted (the web app shows `str(e)` as is).
    """

    def __str__(self) -> str:
        text = redact(super().__str__())
        return text.replace("\r", "\\r").replace("\n", "\\n")


class ModelLoadError(ExplorerError):
    """The model (id, folder or file) could not be found, read or used."""


class TextError(ExplorerError):
    """The text source is missing, empty, too short, too large or not readable."""


class LayerError(ExplorerError):
    """A layer index, pair or plan does not fit the model."""


SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "HF_API_TOKEN")
_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{8,}")


def redact(text: str) -> str:
    """`text` with Hugging Face tokens (the values of HF_TOKEN & co., and anything shaped like
    hf_XXXX) replaced by "***", so that no message, log line or CLI output can leak one."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if len(value) >= 8:
            text = text.replace(value, "***")
    return _TOKEN_RE.sub("hf_***", text)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, secrets redacted, shortened to
    `limit` characters."""
    text = redact(str(exc)).strip() or type(exc).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def named_line(exc: BaseException, limit: int = 160) -> str:
    """'ValueError: <its first line>', for a refusal that quotes what a library raised."""
    return f"{type(exc).__name__}: {one_line(exc, limit)}"


class ParamError(ExplorerError):
    """A parameter of a method, measure or healing mode has a wrong name, type or value.

    A refused value also carries what it was refused for (`param`: the declared `Param`,
    `owner`: its owner's key, `given`: the value), so an edge can say it in its own words (the
    app: labels and display names instead of the CLI's names)."""

    param = None
    owner: str = ""
    given = None
