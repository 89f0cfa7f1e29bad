"""The documents file of the ``rerank`` command: bytes -> text -> a list of strings.

Pure functions, so that every rule below is tested without running the model. Every failure
is a ``ValueError`` whose message names the file (``stdin`` for ``-``) and says what was
expected, because the person reading it has only the command line they typed.

Formats (``--documents-format``):

- ``lines``: one document per line. Lines end at ``\\n`` or ``\\r\\n`` only, so a form feed,
  vertical tab, U+2028 or any other character that ``str.splitlines`` would also split at stays
  inside its document. Whitespace-only lines are skipped; other lines are kept as they are.
- ``json``: the text (surrounding whitespace ignored) is a JSON array of strings.
- ``auto``: text whose first non-whitespace character is ``[`` is read as ``json`` (and is an
  error, with a hint to pass ``lines``, when it is not valid JSON); other text that is valid
  JSON as a whole (an object, a string, a number, true, false, null) is an error, because it
  is not a list of documents; all other text is read as ``lines``.

A UTF-8 byte-order mark at the start is ignored in every format.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO, TextIO

FORMATS = ("auto", "json", "lines")
EXPECTED = "expected a JSON array of strings"
LINES_HINT = "to read one document per line, pass --documents-format lines"
BOM = "\ufeff"


def label(path: str, option: str = "--documents") -> str:
    """How messages name the source: the option that gave it (``tools.drift`` reads its
    ``--requests`` file with these functions too) and the path."""
    return f"{option} - (stdin)" if path == "-" else f"{option} {path}"


def decode(data: bytes, path: str, option: str = "--documents") -> str:
    """``data`` as UTF-8 text; an error naming the file and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{label(path, option)}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None


def read_file(path: str, stdin: TextIO | None, option: str = "--documents") -> str:
    """The text of ``path``, or of ``stdin`` for ``-``, decoded as UTF-8."""
    if path == "-":
        if stdin is None:
            raise ValueError(f"{label(path, option)}: there is no standard input")
        buffer: BinaryIO | None = getattr(stdin, "buffer", None)
        if buffer is None:  # a text stream without bytes underneath (e.g. io.StringIO)
            return stdin.read()
        return decode(buffer.read(), path, option)  # UTF-8 whatever the locale says stdin is
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(f"{label(path, option)}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{label(path, option)}: {exc.strerror or exc}") from None
    return decode(data, path, option)


def split_lines(text: str) -> list[str]:
    """One document per ``\\n``- or ``\\r\\n``-ended line; whitespace-only lines skipped."""
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [line for line in lines if line.strip()]


def json_kind(value: Any) -> str:
    if value is None:
        return "JSON null"
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, int | float):
        return "a JSON number"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, list):
        return "a JSON array"
    return "a JSON object"


def as_documents(value: Any, path: str, *, auto: bool) -> list[str]:
    """``value`` if it is a list of strings, else an error saying what it is instead."""
    hint = f"; {LINES_HINT}" if auto else ""
    if isinstance(value, dict):
        if "documents" in value or "input" in value:
            hint = "; for a saved request body, pass only its documents array"
        raise ValueError(f"{label(path)}: {EXPECTED}, got a JSON object{hint}")
    if not isinstance(value, list):
        raise ValueError(f"{label(path)}: {EXPECTED}, got {json_kind(value)}{hint}")
    for i, doc in enumerate(value):
        if not isinstance(doc, str):
            raise ValueError(f"{label(path)}: {EXPECTED}, but documents[{i}] is {json_kind(doc)}")
    return value


def read_documents(text: str, documents_format: str = "auto", path: str = "-") -> list[str]:
    """The documents in ``text`` under the rules of the module docstring."""
    if documents_format not in FORMATS:
        raise ValueError(f"--documents-format must be one of {', '.join(FORMATS)}")
    text = text.removeprefix(BOM)  # the one place it is dropped, for files and stdin alike
    if documents_format == "lines":
        return split_lines(text)
    stripped = text.strip()
    if documents_format == "json" or stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except (ValueError, RecursionError) as exc:  # also too many digits, too deep
            if documents_format == "json":
                raise ValueError(f"{label(path)}: not valid JSON ({exc}); {EXPECTED}") from None
            raise ValueError(
                f"{label(path)}: starts with '[' but is not valid JSON ({exc}); {LINES_HINT}"
            ) from None
        return as_documents(value, path, auto=documents_format == "auto")
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return split_lines(text)
    return as_documents(value, path, auto=True)


def load_documents(path: str, documents_format: str, stdin: TextIO | None) -> list[str]:
    """Read and parse the ``--documents`` argument (``-`` reads ``stdin``)."""
    return read_documents(read_file(path, stdin), documents_format, path)
