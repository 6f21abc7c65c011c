"""Looking a backbone up by name: the catalog's entries first, then the ones users declared in YAML.

Above :mod:`bobkit.backbones.catalog` (importing it registers every built-in entry) and
:mod:`bobkit.backbones.user` (the ``$BOB_REGISTRY`` declarations), so the registry itself imports neither.
"""

from __future__ import annotations

import difflib

from bobkit.backbones import catalog  # noqa: F401 - importing it registers every built-in entry
from bobkit.backbones.registry import Backbone, UnknownBackboneError, registered, registered_entries
from bobkit.backbones.user import declared_backbones

__all__ = ["backbone_names", "get_backbone", "list_backbones"]


def _close_matches(name: str) -> list[str]:
    names = backbone_names()
    # A bare timm architecture ("resnet50") should list its registered tags first.
    same_arch = [n for n in names if n.split(".", 1)[0] == name.split(".", 1)[0]]
    fuzzy = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    return list(dict.fromkeys([*same_arch, *fuzzy]))[:8]


def get_backbone(name: str) -> Backbone:
    """The registry entry for ``name`` (or one of its aliases), built-in or declared.

    Raises
    ------
    UnknownBackboneError
        ``name`` is not registered; the message names it and the closest registered names.
    """
    if isinstance(name, Backbone):
        return name
    found = registered(name) if isinstance(name, str) else None
    if found is not None:
        return found
    declared = declared_backbones() if isinstance(name, str) else {}
    if name in declared:
        return declared[name]
    matches = _close_matches(str(name))
    hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
    raise UnknownBackboneError(
        f"unknown backbone {name!r}{hint} (`bob backbones` lists all {len(registered_entries()) + len(declared)}; "
        f"declare your own in a grid's `backbones:` section or a $BOB_REGISTRY file)"
    )


def list_backbones() -> list[Backbone]:
    """All registered entries in declaration order: the catalog's, then the user-declared ones."""
    return [*registered_entries(), *declared_backbones().values()]


def backbone_names() -> list[str]:
    """All registered names in declaration order (aliases excluded), user-declared ones last."""
    return [b.name for b in list_backbones()]

