"""The request options: one frozen type every front end takes or derives from.

:class:`RerankOptions` names each option once, with its default, its bounds and a line of
help. ``RerankRequest.build`` checks them here, the library's ``score/rank/predict`` take them
as keywords, and the CLI and tools/drift generate their flags from them
(:func:`add_arguments`).
predict.py must restate them as literals, because Cog reads its defaults statically; a test
keeps those literals equal to these (a field's ``cog_default`` where Replicate's default
differs from the library's).

Adding an option: a field here (with its :class:`Option`), an ``Input`` in predict.py, and
whatever the option changes downstream.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_MAX_LENGTH,
    LONG_DOCUMENTS_NAMES,
    MAX_LENGTH_LIMIT,
    Limits,
    check_choice,
)
from ..validation import check_bool, check_int, check_text

SAME = object()  # ``cog_default``: Replicate's default is the library's


@dataclass(frozen=True)
class Option:
    """How one option is checked and described (a dataclass field's metadata)."""

    help: str
    kind: str  # "text", "int", "bool" or "choice"
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False  # None is a value: "the default behaviour"
    cog_default: Any = SAME  # Replicate's default where it differs from the library's
    # a bool option's CLI flag that sets it false, and that flag's help
    cli_negative: tuple[str, str] | None = None

    def check(self, name: str, value: Any, limits: Limits) -> Any:
        """The value, checked; raises ``ValueError`` whose message starts with ``name``."""
        if value is None and self.nullable:
            return None
        if self.kind == "text":
            return check_text(name, value, max_chars=limits.max_query_chars, allow_empty=True)
        if self.kind == "int":
            return check_int(name, value, low=self.low, high=self.high)  # type: ignore[arg-type]
        if self.kind == "bool":
            return check_bool(name, value)
        return check_choice(name, value, self.choices)


def _option(default: Any, **spec: Any) -> Any:
    return field(default=default, metadata={"option": Option(**spec)})


@dataclass(frozen=True, kw_only=True)
class RerankOptions:
    """How to score and what to return. Fields are checked in this order."""

    instruction: str | None = _option(
        None,
        kind="text",
        nullable=True,
        help="English task instruction; omitted (None): the model card's default; an empty "
        "one is kept",
    )
    max_length: int = _option(
        DEFAULT_MAX_LENGTH,
        kind="int",
        low=1,
        high=MAX_LENGTH_LIMIT,
        help="most tokens per prompt; a longer document is truncated at the end (or chunked)",
    )
    batch_size: int = _option(
        DEFAULT_BATCH_SIZE,
        kind="int",
        low=1,
        help="most documents per forward pass (passes are also bounded by tokens)",
    )
    top_k: int | None = _option(
        None,
        kind="int",
        low=0,
        nullable=True,
        cog_default=5,
        help="how many of the best documents to return; 0 or omitted returns all",
    )
    return_documents: bool = _option(
        True,
        kind="bool",
        cli_negative=("--no-documents", "omit document text in results"),
        help="include each document's text in the results (false: null)",
    )
    long_documents: str = _option(
        "truncate",
        kind="choice",
        choices=LONG_DOCUMENTS_NAMES,
        help="a document longer than max_length: truncate cuts its end (the model card's way); "
        "chunk scores it whole as overlapping windows and keeps its best window",
    )
    chunk_overlap: int | None = _option(
        None,
        kind="int",
        low=0,
        high=MAX_LENGTH_LIMIT,
        nullable=True,
        help="with long_documents=chunk: tokens consecutive windows share (default: "
        f"{DEFAULT_CHUNK_OVERLAP}, at most 1/8 of the window)",
    )

    @classmethod
    def build(cls, limits: Limits | None = None, /, **values: Any) -> RerankOptions:
        """Check each named option (in field order); unnamed ones keep their defaults.

        Raises ``ValueError`` naming the field, or ``TypeError`` for an unknown name.
        """
        limits = Limits() if limits is None else limits
        unknown(values)
        return cls(**{n: spec(n).check(n, v, limits) for n, v in _ordered(values)})

    @property
    def chunked(self) -> bool:
        return self.long_documents == "chunk"


def specs() -> list[tuple[str, Option, Any]]:
    """``(name, option, default)`` of every option, in field order."""
    return [(f.name, f.metadata["option"], f.default) for f in fields(RerankOptions)]


def spec(name: str) -> Option:
    return _SPECS[name]


def unknown(values: Iterable[str], allowed: Iterable[str] = ()) -> None:
    """Raise ``TypeError`` for a name that is no option (nor in ``allowed``)."""
    extra = [n for n in values if n not in _SPECS and n not in set(allowed)]
    if extra:
        raise TypeError(f"unknown option {extra[0]!r}; the options are {', '.join(_SPECS)}")


def _ordered(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(n, values[n]) for n in _SPECS if n in values]


_SPECS = {f.name: f.metadata["option"] for f in fields(RerankOptions)}


# -- command-line flags, generated ---------------------------------------------------------


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """One ``--flag`` per option (``--max-length``...), its default None: unset flags are
    left out of :func:`from_arguments`, so the options type's defaults apply. Values are
    checked by :meth:`RerankOptions.build`, with the option's own message."""
    skip = set(exclude)
    shown = dict(defaults or {})
    for name, option, default in specs():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        what = shown.get(name, default)
        suffix = "" if what is None else f" (default: {what})"
        if option.kind == "bool":
            negative, text = option.cli_negative or (f"--no-{flag[2:]}", f"{name}: false")
            parser.add_argument(negative, dest=name, action="store_false", default=None, help=text)
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": option.help + suffix}
        if option.kind == "int":
            kwargs.update(type=int, metavar="N")
        elif option.kind == "choice":
            kwargs["choices"] = option.choices
        parser.add_argument(flag, **kwargs)


def from_arguments(
    args: argparse.Namespace, *, exclude: Iterable[str] = (), **overrides: Any
) -> dict[str, Any]:
    """The options a parsed command line names (``overrides`` fill in the unset ones)."""
    skip = set(exclude)
    out = dict(overrides)
    for name, _, _ in specs():
        value = getattr(args, name, None)
        if name not in skip and value is not None:
            out[name] = value
    return out
