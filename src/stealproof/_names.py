"""Messages for registry lookups."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """A message for an unknown registry name, with close matches when there are any."""
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (available: {', '.join(known)})"


def _type_text(ann: Any) -> str:
    """A field's type for people: ``Literal['l1', 'l2']`` shows its choices as ``'l1' | 'l2'``."""
    if typing.get_origin(ann) is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(ann))
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def describe_fields(model: type[BaseModel]) -> list[str]:
    """``name: type = default`` for each field of a pydantic model, in declaration order."""
    out = []
    for name, f in model.model_fields.items():
        kind = _type_text(f.annotation)
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        out.append(f"{name}: {kind} = {default}" if default != "required" else f"{name}: {kind}")
    return out


def field_names_hint(model: type[BaseModel]) -> str:
    """`` (valid names: a, b, c)`` for an error about an unknown parameter."""
    names = list(model.model_fields)
    return f" (valid names: {', '.join(names)})" if names else " (it takes no parameters)"
