"""Files: atomic writes (temp file or folder next to the target, fsynced, then renamed), content hashes, and
integrity records of cache entries.

The one place for these jobs: every sidecar, cache entry, table and download goes through here.

Durability: a rename is atomic, but without ``fsync`` a crash can leave the *renamed* file with its size and no
data (zero-filled pages on many file systems). So the temp file (or every file of a temp folder, and the folder)
is fsynced before the rename, and the parent folder after it, so the new name and the data arrive together.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

#: Permissions of shared outputs (results, caches); private files (hash memos, pins) pass ``mode=0o600``.
SHARED_MODE = 0o644
PRIVATE_MODE = 0o600
HASH_BLOCK = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# fsync
# ----------------------------------------------------------------------------------------------------------------


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data to disk (opened read-only: Linux flushes the inode's dirty pages either way)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (names created or renamed in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. certain network mounts) refuse fsync on folders
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):  # files before the folders holding them
        if path.is_file():
            fsync_file(path)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------------


@contextmanager
def atomic_path(target: str | os.PathLike[str], *, mode: int = SHARED_MODE) -> Iterator[Path]:
    """Yield a temp path next to ``target``; on success it is fsynced and renamed over ``target``.

    A crash (even SIGKILL or power loss) leaves either the old file or the complete new one, never a half-written
    or zero-filled file under the target's name.

    Parameters
    ----------
    target
        The file to (re)place.
    mode
        Permissions of the result: :data:`SHARED_MODE` (0644) by default, :data:`PRIVATE_MODE` (0600) for files
        only their owner may read or change.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, mode)
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder next to ``target``; on success its files are fsynced and it is renamed to ``target``.

    When ``target`` already exists (another process finished the same entry first), theirs is kept and the temp
    folder is discarded: cache entries are deterministic, so either copy is valid. A caller that found ``target``
    corrupt moves it aside first (:func:`move_aside`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a shared cache should be readable like any folder
    try:
        yield tmp
        _fsync_tree(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def move_aside(path: str | os.PathLike[str]) -> Path:
    """Rename a corrupt cache file or folder to ``<name>.bad-<UTC time>-<random>`` so it is recomputed, not reused.

    The bad copy is kept (not deleted) for inspection; nothing else is touched.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.bad-{stamp}-{secrets.token_hex(4)}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        pass  # another process moved it aside already
    return aside


def write_json(target: str | os.PathLike[str], payload: Any, *, mode: int = SHARED_MODE) -> None:
    """Write ``payload`` as indented JSON, atomically (NaN written as null)."""
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_text(json.dumps(_json_safe(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf floats with None and numpy scalars with Python ones so JSON stays strict."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


# ----------------------------------------------------------------------------------------------------------------
# Hashes
# ----------------------------------------------------------------------------------------------------------------


def digest_stream(handle: IO[bytes], algorithm: str = "sha256") -> str:
    """Hex digest (``sha256`` or ``md5``) of an open binary file from its current position, in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    for block in iter(lambda: handle.read(HASH_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


def sha256_stream(handle: IO[bytes]) -> str:
    """Hex sha256 of an open binary file from its current position, read in 1 MiB blocks."""
    return digest_stream(handle, "sha256")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``."""
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def sha256_bytes(data: bytes | str) -> str:
    """Hex sha256 of in-memory bytes (text is UTF-8 encoded): cache keys, payload fingerprints."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def source_fingerprint(*objects: Any, extra: str = "") -> str:
    """12 hex digits of sha256 over the source code of modules / functions / classes (plus ``extra`` text).

    Cache keys carry this instead of a hand-bumped version: editing the code that computes a cached number
    changes the key, so a stale entry is never reused.
    """
    import inspect

    return sha256_bytes("\n".join([*(inspect.getsource(o) for o in objects), extra]))[:12]


# ----------------------------------------------------------------------------------------------------------------
# Integrity records of cache entries
# ----------------------------------------------------------------------------------------------------------------


def file_record(path: str | os.PathLike[str], *, sha256: Any = sha256_file) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file, stored in a cache entry's meta and checked on read.

    ``sha256`` is the hash function (the memoised one also remembers the file, so the first read is not a re-hash).
    """
    return {"size": os.path.getsize(path), "sha256": sha256(path)}


def record_problems(folder: str | os.PathLike[str], records: Any, *, sha256: Any = sha256_file) -> list[str]:
    """What is wrong with the files of a cache entry, compared with the records written with it (empty: intact).

    Parameters
    ----------
    folder
        The entry's folder; ``records`` maps file names inside it to :func:`file_record` dicts.
    records
        As read from the entry's meta; anything but a non-empty mapping of records is itself a problem.
    sha256
        The hash function (a memoised one skips re-hashing unchanged files).
    """
    if not isinstance(records, dict) or not records:
        return ["no size/sha256 records (written by an older bobkit, or incomplete)"]
    problems = []
    for name, rec in records.items():
        path = Path(folder) / name
        if not isinstance(rec, dict) or not {"size", "sha256"} <= set(rec):
            problems.append(f"{name}: malformed record {rec!r}")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != rec["size"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, recorded {rec['size']} (truncated or grown)")
        elif sha256(path) != rec["sha256"]:
            problems.append(f"{name}: sha256 differs from the recorded one (corrupt, e.g. zero-filled after a crash)")
    return problems
