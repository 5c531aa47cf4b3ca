"""Errors a user can act on.

Every failure caused by input (a model id, a path, a layer index, a text) is raised as an
`ExplorerError` whose message is one line that says what was wrong and, where possible, what to do.
The CLI prints that line and exits with status 2; the web app shows it in a toast and keeps serving.
Anything else that escapes is a bug in Layer Explorer, not a user error.
"""


class ExplorerError(Exception):
    """A problem with what the user asked for; `str(e)` is a one-line message."""


class ModelLoadError(ExplorerError):
    """The model (id, folder or file) could not be found, read or used."""


class TextError(ExplorerError):
    """The text source is missing, empty, too short, too large or not readable."""


class LayerError(ExplorerError):
    """A layer index, pair or plan does not fit the model."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, shortened to `limit` characters."""
    text = str(exc).strip() or type(exc).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    return line if len(line) <= limit else line[: limit - 3] + "..."
