"""What of the manifest is present on this machine (the table ``bob data`` prints)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bobkit.data import verify as V
from bobkit.data.errors import ChecksumError
from bobkit.data.manifest import Entry, FileSpec, Manifest, candidates, data_dirs, load_manifest

__all__ = ["STATUS_COLUMNS", "status"]

STATUS_COLUMNS = ["name", "kind", "download", "present", "where", "files_found", "files_total", "verified",
                  "size_bytes", "licence", "url"]


def _find(spec: FileSpec) -> Path | None:
    return next((p for p in candidates(spec) if p.is_file()), None)


def _verified_state(entry: Entry, found: dict[str, Path | None]) -> str:
    """``yes`` | ``mismatch`` | ``no checksum`` (pinned files count as verified) over the files found."""
    states = []
    for spec in entry.files:
        path = found[spec.filename]
        if path is None:
            continue
        try:
            states.append("yes" if V.verify_file(path, entry, spec) else "no checksum")
        except ChecksumError:
            states.append("mismatch")
    if "mismatch" in states:
        return "mismatch"
    return "yes" if all(s == "yes" for s in states) else "no checksum"


def _row(entry: Entry, verify: bool) -> dict:
    found = {spec.filename: _find(spec) for spec in entry.files}
    n_found = sum(p is not None for p in found.values())
    root = None
    if entry.root:
        root = next((d / entry.root for d in data_dirs() if (d / entry.root).is_dir()), None)
    if root is not None or (entry.files and n_found == len(entry.files)):
        present = "yes"
    elif n_found:
        present = "partial"
    else:
        present = "no"
    first = next((p for p in found.values() if p is not None), None)
    where = str(root) if root is not None else (str(first.parent) if first is not None else "")
    verified = _verified_state(entry, found) if verify and n_found else ""
    return dict(name=entry.name, kind=entry.kind, download=entry.download, present=present, where=where,
                files_found=n_found, files_total=len(entry.files), verified=verified, size_bytes=entry.size_bytes,
                licence=entry.licence, url=entry.url)


def status(*, verify: bool = False, kind: str | None = None, manifest: Manifest | None = None) -> pd.DataFrame:
    """One row per manifest entry: is it present, and where.

    Parameters
    ----------
    verify : bool
        Also check hashes of the files found (memoised per inode and change time; a pin counts as verified).
    kind : str, optional
        Only entries of this kind.

    Returns
    -------
    pandas.DataFrame
        Columns ``name, kind, download, present ('yes' | 'no' | 'partial'), where, files_found,
        files_total, verified ('yes' | 'mismatch' | 'no checksum' | ''), size_bytes, licence, url``.
        Folder datasets count as present when their extracted ``root`` folder exists.
    """
    entries = manifest if manifest is not None else load_manifest()
    rows = [_row(e, verify) for e in entries if kind is None or e.kind == kind]
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)
