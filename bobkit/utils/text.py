"""Values in messages: one helper that keeps an error line short whatever value it names."""

from __future__ import annotations

import reprlib
from typing import Any

#: Characters of a value's repr an error message shows (the rest is elided with ``...``).
REPR_LIMIT = 80

_REPR = reprlib.Repr()
_REPR.maxstring = REPR_LIMIT
_REPR.maxother = REPR_LIMIT
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 6
_REPR.maxlevel = 3


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters (containers shortened item by item, then the whole).

    Error messages name the bad value; a 400 KB list pasted into a grid must not make a 400 KB error line.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_list(names: list[str], limit: int = 8) -> str:
    """``a, b, c, ... (N more)``: a list of known names for a hint, at most ``limit`` of them."""
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
