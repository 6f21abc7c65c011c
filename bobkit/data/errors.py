"""Exceptions raised by :mod:`bobkit.data`.

Every message names the thing that went wrong (the file, the entry, the value) and says what to do next.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class DataError(Exception):
    """Base class of all bobkit.data errors."""


class ManifestError(DataError, ValueError):
    """The manifest file is malformed (names the bad entry and field)."""


class UnknownDatasetError(DataError, ValueError):
    """A dataset / manifest entry name that does not exist (names it and close matches)."""

    def __init__(self, name: str, known: Iterable[str], what: str = "dataset") -> None:
        known = sorted(known)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {what} {name!r}.{hint} Known: {', '.join(known)}")
        self.name = name
        self.close_matches = close


class UnknownSplitError(DataError, ValueError):
    """A split the dataset does not have (names the split and the valid ones)."""

    def __init__(self, dataset: str, split: str, splits: Iterable[str]) -> None:
        splits = list(splits)
        super().__init__(f"dataset {dataset!r} has no split {split!r}; valid splits: {', '.join(splits)}")
        self.dataset, self.split, self.splits = dataset, split, splits


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder is not present anywhere bobkit looks for it."""


class DownloadError(DataError, OSError):
    """A download failed before its bytes arrived (names the URL, the destination and what to do offline)."""

    def __init__(self, url: str, dest: str, reason: object) -> None:
        super().__init__(
            f"could not download {url}: {reason}. Without network access, fetch it elsewhere and put it at {dest} "
            f"(or in $BOB_DATA_DIR under the same relative path); its sha256 is checked when it is read."
        )
        self.url, self.dest, self.reason = url, dest, reason


class ChecksumError(DataError, ValueError):
    """A data file's hash differs from the manifest (names the file, expected and actual hash)."""

    def __init__(self, path: str, expected: Iterable[str], actual: str, algorithm: str = "sha256") -> None:
        expected = list(expected)
        exp = expected[0] if len(expected) == 1 else " or ".join(expected)
        super().__init__(
            f"{algorithm} mismatch for {path}: expected {exp}, got {actual}. The file is corrupt, truncated or a "
            f"different version: delete it and download it again (bobkit.data.download)."
        )
        self.path, self.expected, self.actual, self.algorithm = path, expected, actual, algorithm


class DownloadSizeError(DownloadError):
    """The server sent more (or fewer) bytes than the manifest declares; reading stopped at the declared size."""

    def __init__(self, url: str, dest: str, declared: int, got: str) -> None:
        DataError.__init__(
            self,
            f"download of {url} does not have the declared size: the manifest says {declared} bytes, the server "
            f"sent {got}. Nothing was stored at {dest}; the file upstream changed or the server is misbehaving.",
        )
        self.url, self.dest, self.reason = url, dest, f"size {got}, declared {declared}"
        self.declared = declared


class DiskFullError(DataError, OSError):
    """A write ran out of disk space (ENOSPC) or quota (EDQUOT); names the folder and how much was needed."""

    def __init__(self, dest: str, needed: int | None, free: int | None, what: str = "download") -> None:
        need = f"{needed} bytes" if needed is not None else "an unknown number of bytes"
        have = f"{free} bytes free" if free is not None else "free space unknown"
        super().__init__(
            f"disk full while writing {dest} ({what}): it needs {need}, the file system has {have}. Free some space "
            f"or point $BOB_CACHE_DIR / $BOB_DATA_DIR at a larger disk; nothing was left half-written."
        )
        self.dest, self.needed, self.free = dest, needed, free


class UnverifiedFileError(DataError, ValueError):
    """A file that must be verified before use (a checkpoint, a pickle) has no recorded hash and no pin.

    The message gives its sha256 and the command that pins it (records the hash as trusted for this user).
    """

    def __init__(self, path: str, entry: str, sha256: str, why: str = "") -> None:
        super().__init__(
            f"refusing to use unverified {path}: manifest entry {entry!r} records no sha256 for it{why}. Its sha256 "
            f"is {sha256}. If you trust this file (e.g. you downloaded it from the URL in the manifest yourself), "
            f"pin it: `bob data --pin {entry} {path}` (in Python: bobkit.data.pin({entry!r}, {str(path)!r})), or set "
            f"BOB_PIN_UNVERIFIED=1 to pin files the first time they are seen."
        )
        self.path, self.entry, self.sha256 = path, entry, sha256
