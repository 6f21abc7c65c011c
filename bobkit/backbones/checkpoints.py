"""Where a backbone's checkpoint file comes from, and its verification before anything is read from it.

Order of the search for a backbone's file (never the network):

1. ``create_model(..., weights_file=PATH)``: explicit, so trusted as the user's choice (its sha256 still names the
   converted file and the feature-cache key);
2. ``$BOB_WEIGHTS_DIR/<backbone name>.<ext>`` (or the upstream file name);
3. for ``url`` backbones, the manifest entry's file in the data directories (where ``bob data --download`` and
   :func:`download` put it), then the download folder of older bobkit versions.

A ``url`` backbone's file found by 2 or 3 is verified against its manifest entry: the recorded sha256 or, where none
is published, the user's pin (``bob data --pin NAME FILE``). Packaged files are verified against the sha256 in their
registry entry. The check hashes the *open* file and the tensors are read from that same handle
(:func:`open_checkpoint`), so the file cannot be swapped in between.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from bobkit.backbones import weights as W
from bobkit.backbones.registry import Backbone
from bobkit.backbones.weights import WeightsUnavailableError, WeightsVerificationError
from bobkit.data import verify as V
from bobkit.data.errors import ChecksumError, DataError, UnverifiedFileError
from bobkit.utils.paths import weights_cache_dir

__all__ = ["local_names", "find_local", "explicit_file", "how_to_supply", "download", "open_checkpoint",
           "is_verified"]


def _legacy_downloads_dir() -> Path:
    """Where bobkit before the manifest entries saved URL downloads (still searched, and verified like any file)."""
    return weights_cache_dir() / "downloads"


def local_names(entry: Backbone) -> list[str]:
    """File names looked for in ``$BOB_WEIGHTS_DIR``: ``<name>.<ext>``, and the upstream name when it is specific."""
    names = [f"{entry.name}{suffix}" for suffix in W.LOCAL_SUFFIXES]
    upstream = os.path.basename(entry.url) if entry.url else ""
    # An upstream name that only names the architecture (VICReg's "resnet50.pth") could be any ResNet-50 file.
    if upstream and upstream.split(".", 1)[0] != entry.timm_model:
        names.append(upstream)
    return names


def _manifest_file(entry: Backbone):
    """``(manifest entry, file spec)`` of a ``url`` backbone's checkpoint."""
    from bobkit.data.manifest import load_manifest

    item = load_manifest().entry(entry.weights_entry)
    return item, item.file()


def find_local(entry: Backbone) -> Path | None:
    """The backbone's checkpoint on this machine (``$BOB_WEIGHTS_DIR``, the data directories), else None."""
    from bobkit.data.manifest import candidates

    found = W.find_local_file(local_names(entry))
    if found is not None or entry.weights_entry is None:
        return found
    _, spec = _manifest_file(entry)
    legacy = _legacy_downloads_dir() / f"{entry.name}.pth"
    return next((p for p in [*candidates(spec), legacy] if p.is_file()), None)


def explicit_file(entry: Backbone, weights_file: str | Path) -> Path:
    """The file given as ``weights_file=`` (must exist)."""
    path = Path(weights_file).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"weights_file {path} for backbone {entry.name!r} does not exist")
    return path


def how_to_supply(entry: Backbone) -> str:
    """How a user gets the weights onto this machine (for error messages)."""
    current = os.environ.get("BOB_WEIGHTS_DIR")
    dirs = f"$BOB_WEIGHTS_DIR (= {current})" if current else "$BOB_WEIGHTS_DIR (not set)"
    files = " / ".join(n for n in local_names(entry) if not n.endswith((".pt", ".bin", ".pth.tar")))
    fetch = f"`bob data --download {entry.weights_entry}`, or " if entry.weights_entry else ""
    return (f"To supply them: {fetch}run once with internet access (unset HF_HUB_OFFLINE / BOB_OFFLINE), or put "
            f"the checkpoint in {dirs} as {files}, or pass create_model(..., weights_file=PATH).")


def download(entry: Backbone) -> Path:
    """Fetch a ``url`` backbone's checkpoint through its manifest entry (size-capped, atomic); returns the file.

    The file is stored even without a recorded hash (so it can be pinned), but :func:`open_checkpoint` refuses it
    until then.
    """
    from bobkit.data.manifest import download as manifest_download

    try:
        (path,) = manifest_download(entry.weights_entry)
    except (DataError, OSError) as exc:
        raise WeightsUnavailableError(
            f"could not download weights of {entry.name!r} from {entry.url}: {exc}. {how_to_supply(entry)}"
        ) from exc
    return path


def _check(entry: Backbone, path: Path, digest: str) -> None:
    if entry.source == "packaged":
        if entry.package_sha256 and digest != entry.package_sha256.lower():
            raise WeightsVerificationError(
                f"{path} has sha256 {digest}, expected {entry.package_sha256}; the packaged file is corrupt or a "
                f"different release (reinstall {entry.package}). Nothing was read from it."
            )
        return
    if entry.weights_entry is None:
        return  # a timm-hub backbone's local override, named by the user after the backbone
    item, spec = _manifest_file(entry)
    try:
        V.check_digest(path, digest, item, spec, required=True)
    except (ChecksumError, UnverifiedFileError) as exc:
        raise WeightsVerificationError(f"weights of {entry.name!r}: {exc}") from exc


@contextmanager
def open_checkpoint(entry: Backbone, path: Path, *, explicit: bool = False) -> Iterator[IO[bytes]]:
    """Open ``path``, verify the opened file (unless ``explicit``), and yield it at position 0 for reading.

    Raises
    ------
    WeightsVerificationError
        Wrong sha256, or (``url`` backbones) no recorded hash and no pin; the message gives the hash and the
        ``bob data --pin`` command. Nothing has been unpickled.
    """
    with open(path, "rb") as handle:
        digest = V.file_digest(handle)
        if not explicit:
            _check(entry, path, digest)
        handle.seek(0)
        yield handle


def is_verified(entry: Backbone, path: Path) -> bool:
    """Whether :func:`open_checkpoint` would accept ``path`` (without pinning anything)."""
    if entry.weights_entry is None:
        return True
    item, spec = _manifest_file(entry)
    accepted = V.accepted_sha256(item, spec)
    if not accepted:
        return V.pin_on_first_use()
    return V.file_digest(path) in accepted
