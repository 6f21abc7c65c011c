"""The one download helper: stream a URL into place atomically, hashing while writing, within a size limit.

Used by the manifest (:func:`bobkit.data.download`) and, through it, by the backbone weights. What it guarantees:

* nothing appears at the destination unless the whole transfer arrived and passed the caller's check (the bytes go
  to a temp file next to the destination, fsynced and renamed by :func:`bobkit.utils.files.atomic_path`);
* a declared size is enforced: a ``Content-Length`` above it fails before any byte is read, and reading stops one
  byte past it (:class:`~bobkit.data.errors.DownloadSizeError`), so a hostile or broken server cannot fill the disk;
* a full disk is reported as a full disk (:class:`~bobkit.data.errors.DiskFullError`), never as a network error.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bobkit.data.errors import DiskFullError, DownloadError, DownloadSizeError
from bobkit.utils.files import HASH_BLOCK, atomic_path

__all__ = ["Fetched", "fetch_url", "is_disk_full"]

USER_AGENT = "bobkit-data/1"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class Fetched:
    """What arrived: where it will land, its size and its hashes (computed from the bytes as they were written)."""

    url: str
    dest: Path
    size: int
    sha256: str
    md5: str


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception is a local out-of-space / out-of-quota error."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _content_length(resp: object) -> int | None:
    headers = getattr(resp, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _copy_limited(resp: IO[bytes], out: IO[bytes], url: str, dest: Path, max_bytes: int | None) -> Fetched:
    """Copy the response into ``out`` (at most ``max_bytes`` + 1 bytes read), hashing as it goes."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
    while True:
        want = HASH_BLOCK if max_bytes is None else min(HASH_BLOCK, max_bytes + 1 - size)
        try:
            chunk = resp.read(want)
        except OSError as exc:  # the connection broke mid-transfer
            raise DownloadError(url, str(dest), exc) from exc
        if not chunk:
            break
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise DownloadSizeError(url, str(dest), max_bytes, f"more than {max_bytes} bytes (stopped reading)")
        out.write(chunk)  # an OSError here is local (disk), handled by the caller
        sha.update(chunk)
        md5.update(chunk)
    return Fetched(url, dest, size, sha.hexdigest(), md5.hexdigest())


def fetch_url(
    url: str,
    dest: str | os.PathLike[str],
    *,
    size_bytes: int | None = None,
    check: Callable[[Fetched], None] | None = None,
    timeout: float = 60.0,
) -> Fetched:
    """Download ``url`` to ``dest`` atomically.

    Parameters
    ----------
    url
        ``http(s)://`` or ``file://`` URL.
    dest
        Final path; the transfer goes to a temp file in the same folder.
    size_bytes
        The declared size (from the manifest): more bytes are refused while reading, fewer after the transfer.
        None: no limit.
    check
        Called with what arrived before it is renamed into place; raising (e.g. a checksum mismatch) discards it.
    timeout
        Socket timeout in seconds.

    Raises
    ------
    DownloadError
        The transfer failed (offline, DNS, refused, timeout, HTTP error, broken connection); names the URL.
    DownloadSizeError
        More or fewer bytes than ``size_bytes``.
    DiskFullError
        The local disk (or quota) filled up; names the folder, the bytes needed and the bytes free.
    """
    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with atomic_path(dest) as tmp:
            try:
                resp = urllib.request.urlopen(request, timeout=timeout)
            except OSError as exc:  # urllib's URLError/HTTPError are OSErrors: offline, DNS, refused, 404
                raise DownloadError(url, str(dest), getattr(exc, "reason", exc)) from exc
            with resp, open(tmp, "wb") as out:
                announced = _content_length(resp)
                if size_bytes is not None and announced is not None and announced > size_bytes:
                    raise DownloadSizeError(url, str(dest), size_bytes, f"a Content-Length of {announced}")
                fetched = _copy_limited(resp, out, url, dest, size_bytes)
            if size_bytes is not None and fetched.size != size_bytes:
                raise DownloadSizeError(url, str(dest), size_bytes, f"{fetched.size} bytes")
            if check is not None:
                check(fetched)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(str(dest), size_bytes, _free_bytes(dest.parent)) from exc
        raise
    return fetched
