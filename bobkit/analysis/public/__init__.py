"""Public reference tables in the results schema: timm's published ImageNet and OOD results (:mod:`.timm`), the BoB
paper's backbone catalog and retrieval snapshot (:mod:`.bob`), and timm name parsing (:mod:`.tags`, from :mod:`bobkit.backbones.tags`).

Every file is a data-manifest entry shipped inside bobkit (``bobkit/reference/``), found with no download and no
``BOB_DATA_DIR``; every loader also takes an explicit ``path``.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve_public(name: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Path of a public file: ``path`` when given, else the data manifest's verified file for entry ``name``.

    The manifest searches ``$BOB_DATA_DIR``, bobkit's data cache and the copies shipped inside bobkit; a missing
    file raises ``MissingDataError`` saying how to get it.
    """
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{name}: no file at {path}")
        return path
    from bobkit.data.manifest import resolve

    return Path(resolve(name))
