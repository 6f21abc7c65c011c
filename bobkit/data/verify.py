"""Verifying files: the one memoised hash, the user's pins, and the check every consumer of a file calls.

Memo
    Hashing a multi-gigabyte archive or checkpoint on every use is slow, so a verified digest is remembered in
    ``data_cache_dir()/verified_hashes.json``. The memo is keyed on what user space cannot set: the file's device
    and inode, checked against its size and *change* time (``st_ctime``; ``os.utime`` can forge the modification
    time, but any write or ``utime`` call moves the change time to "now"). The memo file is private (0600) and
    ignored when anyone else could have written it.

Pins
    Some files have no published checksum (the Facebook SSL checkpoints, the revisited Oxford/Paris ground truth).
    They are refused until the user pins them: ``bob data --pin NAME FILE`` (:func:`bobkit.data.manifest.pin`) records the hash the user
    saw in ``data_cache_dir()/pinned_hashes.json`` (0600); from then on the file must match it. Setting
    ``BOB_PIN_UNVERIFIED=1`` pins such files the first time they are seen (trust on first use, with a warning).
"""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bobkit.data.errors import ChecksumError, UnverifiedFileError
from bobkit.utils import paths
from bobkit.utils.files import PRIVATE_MODE, digest_stream, write_json

if TYPE_CHECKING:
    from bobkit.data.manifest import Entry, FileSpec

__all__ = ["file_digest", "pin_entry", "pins", "pinned_sha256", "accepted_sha256", "check_digest", "verify_file",
           "pin_on_first_use", "PIN_ENV"]

MEMO_FILE = "verified_hashes.json"
PINS_FILE = "pinned_hashes.json"
#: Oldest memo records are dropped beyond this many (the memo is read and rewritten on every new hash).
MEMO_LIMIT = 20_000
#: Environment variable: pin files without a recorded hash the first time they are seen.
PIN_ENV = "BOB_PIN_UNVERIFIED"


# ----------------------------------------------------------------------------------------------------------------
# Private JSON files (memo, pins)
# ----------------------------------------------------------------------------------------------------------------


def _memo_path() -> Path:
    return paths.data_cache_dir() / MEMO_FILE


def _pins_path() -> Path:
    return paths.data_cache_dir() / PINS_FILE


def _read_private_json(path: Path) -> dict[str, Any]:
    """The JSON mapping at ``path``; empty when absent, unreadable, or writable by anyone but its owner (us)."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                warnings.warn(f"ignoring {path}: it is not private to this user (mode {oct(st.st_mode & 0o777)})",
                              stacklevel=3)
                return {}
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    try:
        write_json(path, data, mode=PRIVATE_MODE)
    except OSError:
        pass  # a read-only cache only costs re-hashing (memo); pins are written by pin(), which reports errors


# ----------------------------------------------------------------------------------------------------------------
# The memoised digest
# ----------------------------------------------------------------------------------------------------------------


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "ctime_ns": st.st_ctime_ns, "mtime_ns": st.st_mtime_ns}


def _memo_key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def _digest_of_handle(handle: IO[bytes], algorithm: str) -> str:
    st = os.fstat(handle.fileno())
    key, identity = _memo_key(st), _identity(st)
    record = _read_private_json(_memo_path()).get(key)
    if isinstance(record, dict) and all(record.get(k) == v for k, v in identity.items()) and algorithm in record:
        return str(record[algorithm])
    handle.seek(0)
    digest = digest_stream(handle, algorithm)
    handle.seek(0)
    memo = _read_private_json(_memo_path())  # re-read: another process may have added records meanwhile
    record = memo.get(key)
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in identity.items()):
        record = dict(identity)
    record[algorithm] = digest
    record["seen"] = time.time()
    memo.pop(key, None)
    memo[key] = record
    if len(memo) > MEMO_LIMIT:
        oldest = sorted(memo, key=lambda k: memo[k].get("seen", 0) if isinstance(memo[k], dict) else 0)
        for stale in oldest[: len(memo) - MEMO_LIMIT]:
            del memo[stale]
    _write_private_json(_memo_path(), memo)
    return digest


def file_digest(source: str | os.PathLike[str] | IO[bytes], algorithm: str = "sha256") -> str:
    """Hex digest of a file (a path, or an open binary handle, hashed from its start), memoised.

    Parameters
    ----------
    source
        A path, or an open binary file: then exactly the opened file is hashed (and left at position 0), so the
        caller can go on to read the very bytes that were verified.
    algorithm
        ``"sha256"`` or ``"md5"``.
    """
    if isinstance(source, (io.IOBase,)) or hasattr(source, "fileno"):
        return _digest_of_handle(source, algorithm)  # type: ignore[arg-type]
    with open(source, "rb") as handle:
        return _digest_of_handle(handle, algorithm)


# ----------------------------------------------------------------------------------------------------------------
# Pins
# ----------------------------------------------------------------------------------------------------------------


def pins() -> dict[str, dict[str, dict[str, Any]]]:
    """Every pinned file: ``{entry: {filename: {sha256, size_bytes, source, pinned_at}}}``."""
    return _read_private_json(_pins_path())


def pinned_sha256(entry: str, filename: str) -> str | None:
    """The hash the user pinned for ``filename`` of manifest entry ``entry`` (None when not pinned)."""
    record = pins().get(entry, {}).get(filename)
    return str(record["sha256"]).lower() if isinstance(record, dict) and record.get("sha256") else None


def _record_pin(entry: str, filename: str, sha256: str, size: int, source: str) -> dict[str, Any]:
    everything = pins()
    record = {"sha256": sha256, "size_bytes": size, "source": source,
              "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    everything.setdefault(entry, {})[filename] = record
    write_json(_pins_path(), everything, mode=PRIVATE_MODE)
    return record


def _spec_for_file(entry: Entry, file: Path, filename: str | None) -> FileSpec:
    if filename is not None or len(entry.files) == 1:
        return entry.file(filename)
    matches = [f for f in entry.files if Path(f.filename).name == file.name]
    if len(matches) != 1:
        raise ValueError(
            f"manifest entry {entry.name!r} has {len(entry.files)} files; {file.name!r} matches none by name: pass "
            f"filename= one of {[f.filename for f in entry.files]}"
        )
    return matches[0]


def pin_entry(entry: Entry, file: str | os.PathLike[str], *, filename: str | None = None) -> dict[str, Any]:
    """Trust ``file`` as manifest entry ``entry``'s file: record its sha256 (and size) for this user.

    :func:`bobkit.data.manifest.pin` looks the entry up by name (``bob data --pin NAME FILE``).

    Parameters
    ----------
    entry
        The manifest entry, e.g. ``weights_resnet50_dino`` or ``roxford5k``.
    file
        The local copy to trust.
    filename
        Which of the entry's files it is (multi-file entries; default: matched by base name).

    Returns
    -------
    dict
        The pin record: ``sha256``, ``size_bytes``, ``source`` (the file), ``pinned_at``.

    Raises
    ------
    ChecksumError
        The manifest records a hash for this file and ``file`` does not match it (a published hash wins).
    """
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"cannot pin {entry.name!r}: {path} is not a file")
    spec = _spec_for_file(entry, path, filename)
    digest = file_digest(path)
    if spec.accepted_sha256 and digest not in spec.accepted_sha256:
        raise ChecksumError(str(path), spec.accepted_sha256, digest)
    return _record_pin(entry.name, spec.filename, digest, path.stat().st_size, str(path))


# ----------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------


def accepted_sha256(entry: Entry, spec: FileSpec) -> list[str]:
    """Hashes a copy of ``spec`` may have: the manifest's (primary and alternates), else the user's pin."""
    if spec.accepted_sha256:
        return spec.accepted_sha256
    pinned = pinned_sha256(entry.name, spec.filename)
    return [pinned] if pinned else []


def pin_on_first_use() -> bool:
    """Whether ``$BOB_PIN_UNVERIFIED`` asks to pin files without a recorded hash the first time they are seen."""
    return paths.env_flag(PIN_ENV)


def check_digest(path: str | os.PathLike[str], digest: str, entry: Entry, spec: FileSpec, *,
                 required: bool) -> bool:
    """Compare a file's sha256 with what the manifest (or a pin) accepts.

    Returns True when it matches; False when nothing is recorded and ``required`` is False.

    Raises
    ------
    ChecksumError
        A hash is recorded and ``digest`` differs.
    UnverifiedFileError
        Nothing is recorded, ``required`` is True and ``$BOB_PIN_UNVERIFIED`` is not set (then it is pinned).
    """
    accepted = accepted_sha256(entry, spec)
    if accepted:
        if digest not in accepted:
            raise ChecksumError(str(path), accepted, digest)
        return True
    if not required:
        return False
    if pin_on_first_use():
        warnings.warn(f"{PIN_ENV}: pinning unverified {path} as {entry.name}/{spec.filename} (sha256 {digest})",
                      stacklevel=3)
        _record_pin(entry.name, spec.filename, digest, os.path.getsize(path), str(path))
        return True
    raise UnverifiedFileError(str(path), entry.name, digest)


def verify_file(path: str | os.PathLike[str], entry: Entry, spec: FileSpec, *, required: bool = False) -> bool:
    """Check a file against the manifest (sha256, else md5, else a pin); see :func:`check_digest`."""
    if not accepted_sha256(entry, spec) and spec.md5:
        actual = file_digest(path, "md5")
        if actual != spec.md5.lower():
            raise ChecksumError(str(path), [spec.md5.lower()], actual, algorithm="md5")
        return True
    return check_digest(path, file_digest(path), entry, spec, required=required)
