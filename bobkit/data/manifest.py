"""The data manifest: what each dataset / table / weight file is, where it comes from, and how to verify it.

``data_manifest.yaml`` (repo root) lists every entry with a public URL, sha256, size, licence and layout.
:func:`resolve` turns an entry name into a verified local path, searching in order

1. every directory in ``$BOB_DATA_DIR`` (several may be given, separated by ``os.pathsep``),
2. :func:`bobkit.utils.paths.data_cache_dir` (where :func:`download` writes),
3. the entry's known offline locations (Debian paths, files inside installed Python packages).

Hashes are checked by :mod:`bobkit.data.verify` (memoised per inode and change time; pins for files without a
published hash); downloads go through :func:`bobkit.data.fetch.fetch_url`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

from bobkit.data import verify as V
from bobkit.data.errors import ChecksumError, ManifestError, MissingDataError, UnknownDatasetError
from bobkit.data.fetch import Fetched, fetch_url
from bobkit.utils import paths
from bobkit.utils.files import atomic_path

__all__ = [
    "KINDS",
    "DOWNLOAD_MODES",
    "FileSpec",
    "Entry",
    "Manifest",
    "default_manifest_path",
    "load_manifest",
    "data_dirs",
    "candidates",
    "resolve",
    "resolve_dir",
    "download",
    "pin",
    "file_sha256",
    "copy_into_data_dir",
]

KINDS = ("dataset", "reference_table", "weights")
DOWNLOAD_MODES = ("direct", "manual", "bundled", "package")
REQUIRED_FIELDS = ("name", "kind", "tasks", "description", "url", "licence", "layout", "download", "size_bytes")
REQUIRED_FILE_FIELDS = ("filename", "url", "sha256", "size_bytes")


# --------------------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    """One file of an entry.

    Attributes
    ----------
    filename : str
        Path relative to a data directory (e.g. ``fashion-mnist/train-images-idx3-ubyte.gz``).
    url : str or None
        Where to download it from.
    sha256 : str or None
        Hash of the file at ``url``; None when nobody recorded one we could check.
    size_bytes : int or None
        Size of the file at ``url``.
    md5 : str or None
        Upstream-published md5, used only when ``sha256`` is None.
    alternates : tuple of dict
        Other accepted copies (``{sha256, size_bytes, source}``), e.g. a Debian repack.
    offline : tuple of dict
        Known locations outside the data directories: ``{path}`` or ``{package, path}``.
    """

    filename: str
    url: str | None
    sha256: str | None
    size_bytes: int | None
    md5: str | None = None
    alternates: tuple[dict, ...] = ()
    offline: tuple[dict, ...] = ()

    @property
    def accepted_sha256(self) -> list[str]:
        """The primary hash and every alternate copy's hash (lower case)."""
        out = [self.sha256] if self.sha256 else []
        out += [a["sha256"] for a in self.alternates if a.get("sha256")]
        return [h.lower() for h in out]


@dataclass(frozen=True)
class Entry:
    """One manifest entry (a dataset, a reference table or a weight file)."""

    name: str
    kind: str
    tasks: tuple[str, ...]
    description: str
    url: str
    licence: str
    layout: str
    download: str
    size_bytes: int | None
    files: tuple[FileSpec, ...]
    root: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def filename(self) -> str | None:
        """The single file's relative path, or None for multi-file / folder entries."""
        return self.files[0].filename if len(self.files) == 1 else None

    def file(self, filename: str | None = None) -> FileSpec:
        """Look up one of the entry's files by relative path or base name.

        Parameters
        ----------
        filename : str, optional
            Needed only when the entry has several files.
        """
        if filename is None:
            if len(self.files) == 1:
                return self.files[0]
            raise ValueError(
                f"manifest entry {self.name!r} has {len(self.files)} files; pass filename= one of "
                f"{[f.filename for f in self.files]}"
            )
        for f in self.files:
            if filename in (f.filename, Path(f.filename).name):
                return f
        raise ValueError(
            f"manifest entry {self.name!r} has no file {filename!r}; files: {[f.filename for f in self.files]}"
        )


def _as_tuple_of_dicts(value: Any, where: str) -> tuple[dict, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ManifestError(f"{where}: expected a list of mappings, got {value!r}")
    return tuple(dict(v) for v in value)


def _file_spec(raw: dict, where: str) -> FileSpec:
    missing = [k for k in REQUIRED_FILE_FIELDS if k not in raw]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)} (use null for unknown values)")
    sha = raw["sha256"]
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise ManifestError(f"{where}: sha256 must be 64 hex characters or null, got {sha!r}")
    for alt in raw.get("alternates") or []:
        if not isinstance(alt, dict) or not isinstance(alt.get("sha256"), str) or len(alt["sha256"]) != 64:
            raise ManifestError(f"{where}: every alternate needs a 64-character sha256, got {alt!r}")
    offline = _as_tuple_of_dicts(raw.get("offline"), f"{where}.offline")
    for loc in offline:
        if "path" not in loc:
            raise ManifestError(f"{where}.offline: every location needs 'path' (and optional 'package'): {loc!r}")
    return FileSpec(
        filename=str(raw["filename"]),
        url=raw["url"],
        sha256=sha.lower() if sha else None,
        size_bytes=raw["size_bytes"],
        md5=raw.get("md5"),
        alternates=_as_tuple_of_dicts(raw.get("alternates"), f"{where}.alternates"),
        offline=offline,
    )


def _entry(raw: Any, index: int) -> Entry:
    if not isinstance(raw, dict):
        raise ManifestError(f"manifest entry #{index}: expected a mapping, got {type(raw).__name__}")
    label = f"manifest entry {raw.get('name', f'#{index}')!r}"
    missing = [k for k in REQUIRED_FIELDS if k not in raw or (raw[k] in (None, "", []) and k != "size_bytes")]
    if missing:
        raise ManifestError(f"{label}: missing required field(s) {', '.join(missing)}")
    if raw["kind"] not in KINDS:
        raise ManifestError(f"{label}: kind must be one of {KINDS}, got {raw['kind']!r}")
    if raw["download"] not in DOWNLOAD_MODES:
        raise ManifestError(f"{label}: download must be one of {DOWNLOAD_MODES}, got {raw['download']!r}")
    tasks = raw["tasks"]
    if isinstance(tasks, str):
        tasks = [tasks]
    if "files" in raw and "filename" in raw:
        raise ManifestError(f"{label}: give either 'filename' (one file) or 'files' (a list), not both")
    if "files" in raw:
        if not isinstance(raw["files"], list) or not raw["files"]:
            raise ManifestError(f"{label}: 'files' must be a non-empty list")
        files = tuple(_file_spec(f, f"{label} files[{i}]") for i, f in enumerate(raw["files"]))
    elif "filename" in raw:
        if "sha256" not in raw:
            raise ManifestError(f"{label}: single-file entries need 'sha256' (null when unknown)")
        single = {
            "filename": raw["filename"],
            "url": raw["url"],
            "sha256": raw["sha256"],
            "size_bytes": raw["size_bytes"],
            "md5": raw.get("md5"),
            "alternates": raw.get("alternates"),
            "offline": raw.get("offline"),
        }
        files = (_file_spec(single, label),)
    else:
        # A folder-only entry (manual download, no single archive): it must say where the folder goes.
        if not raw.get("root"):
            raise ManifestError(f"{label}: needs 'filename', 'files' or 'root'")
        if "sha256" not in raw:
            raise ManifestError(f"{label}: needs 'sha256' (null when unknown)")
        files = ()
    return Entry(
        name=str(raw["name"]),
        kind=raw["kind"],
        tasks=tuple(tasks),
        description=" ".join(str(raw["description"]).split()),
        url=str(raw["url"]),
        licence=str(raw["licence"]),
        layout=str(raw["layout"]),
        download=raw["download"],
        size_bytes=raw["size_bytes"],
        files=files,
        root=raw.get("root"),
        raw=dict(raw),
    )


class Manifest:
    """The parsed, validated manifest.

    Parameters
    ----------
    entries : iterable of Entry
    path : Path, optional
        The YAML file it was read from (for messages).
    """

    def __init__(self, entries: Iterable[Entry], path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        for e in entries:
            if e.name in self.entries:
                raise ManifestError(f"manifest entry {e.name!r} appears twice in {path}")
            self.entries[e.name] = e

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def names(self, kind: str | None = None) -> list[str]:
        """Entry names, optionally only those of one ``kind``."""
        return [n for n, e in self.entries.items() if kind is None or e.kind == kind]

    def entry(self, name: str) -> Entry:
        """The entry called ``name``; raises :class:`UnknownDatasetError` naming it and close matches."""
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownDatasetError(name, self.entries, what="manifest entry") from None

    # The work is done by module functions so both APIs share one implementation.
    def resolve(self, name: str, filename: str | None = None, *, verify: bool = True, required: bool = False) -> Path:
        """See :func:`resolve`."""
        return resolve(name, filename, verify=verify, required=required, manifest=self)

    def resolve_dir(self, name: str) -> Path:
        """See :func:`resolve_dir`."""
        return resolve_dir(name, manifest=self)

    def download(self, name: str, filename: str | None = None, **kwargs: Any) -> list[Path]:
        """See :func:`download`."""
        return download(name, filename, manifest=self, **kwargs)


def default_manifest_path() -> Path:
    """``$BOB_DATA_MANIFEST`` if set, else ``data_manifest.yaml`` at the repository root."""
    env = os.environ.get("BOB_DATA_MANIFEST")
    return Path(env).expanduser() if env else paths.repo_root() / "data_manifest.yaml"


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> Manifest:
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise ManifestError(f"{path}: expected a mapping with an 'entries' list")
    return Manifest((_entry(raw, i) for i, raw in enumerate(doc["entries"])), path=Path(path))


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    """Read and validate a manifest (``yaml.safe_load``).

    Parameters
    ----------
    path : path-like, optional
        Defaults to :func:`default_manifest_path`.

    Returns
    -------
    Manifest

    Raises
    ------
    ManifestError
        Naming the bad entry and field.
    MissingDataError
        If the manifest file itself does not exist.
    """
    p = Path(path) if path is not None else default_manifest_path()
    if not p.is_file():
        raise MissingDataError(f"data manifest not found: {p}")
    p = p.resolve()
    return _load_cached(str(p), p.stat().st_mtime_ns)


def _manifest(manifest: Manifest | None) -> Manifest:
    return manifest if manifest is not None else load_manifest()


# --------------------------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------------------------


def data_dirs() -> list[Path]:
    """Directories searched for data, in order: ``$BOB_DATA_DIR`` entries, then the bobkit data cache."""
    out = [Path(p).expanduser() for p in os.environ.get("BOB_DATA_DIR", "").split(os.pathsep) if p.strip()]
    out.append(paths.data_cache_dir())
    return out


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _offline_candidates(spec: FileSpec) -> list[Path]:
    out = []
    for loc in spec.offline:
        if loc.get("package"):
            base = _package_dir(loc["package"])
            out.append((base / loc["path"]) if base else Path(f"<python package {loc['package']} not installed>"))
        else:
            out.append(Path(loc["path"]).expanduser())
    return out


def candidates(spec: FileSpec) -> list[Path]:
    """Every place :func:`resolve` looks for ``spec``, in search order."""
    return [d / spec.filename for d in data_dirs()] + _offline_candidates(spec)


def _missing_message(entry: Entry, spec: FileSpec, searched: list[Path]) -> str:
    where = "\n  ".join(str(p) for p in searched)
    how = {
        "direct": f"run `bob data --download {entry.name}` (in Python: bobkit.data.download({entry.name!r})), or "
        f"download {spec.url}",
        "manual": f"download it manually from {spec.url or entry.url} (see {entry.url})",
        "bundled": f"it ships inside bobkit (bobkit/reference/); reinstall bobkit or set BOB_DATA_DIR to the "
        f"folder holding {spec.filename} (upstream: {entry.url})",
        "package": f"install the Python package that ships it, or download {spec.url}",
    }[entry.download]
    return (
        f"data file {spec.filename!r} of manifest entry {entry.name!r} not found. Searched:\n  {where}\n"
        f"To get it: {how}, and put it at <data dir>/{spec.filename} (data dirs: $BOB_DATA_DIR, then "
        f"{paths.data_cache_dir()})."
    )


def resolve(
    name: str,
    filename: str | None = None,
    *,
    verify: bool = True,
    required: bool = False,
    manifest: Manifest | None = None,
) -> Path:
    """Return the verified local path of a manifest entry's file.

    Parameters
    ----------
    name : str
        Manifest entry name, e.g. ``"timm_results_imagenet"``.
    filename : str, optional
        Which file, for multi-file entries (relative path or base name).
    verify : bool
        Check the sha256 (or md5 when only that is published, or the user's pin). Hashes are memoised per inode
        and change time (:mod:`bobkit.data.verify`).
    required : bool
        Refuse a file that has no recorded hash and no pin (:class:`UnverifiedFileError`) instead of returning it
        unverified. Consumers that unpickle or load code-adjacent formats ask for this.
    manifest : Manifest, optional
        Defaults to :func:`load_manifest` ().

    Returns
    -------
    Path

    Raises
    ------
    UnknownDatasetError
        ``name`` is not in the manifest.
    MissingDataError
        Names the file, the places searched and the URL to download it from.
    ChecksumError
        Names the file, the expected and the actual hash.
    UnverifiedFileError
        ``required`` and nothing to verify against; names the file, its sha256 and how to pin it.
    """
    entry = _manifest(manifest).entry(name)
    if not entry.files:
        raise MissingDataError(
            f"manifest entry {name!r} is a folder dataset with no single file; use resolve_dir({name!r})"
        )
    spec = entry.file(filename)
    searched = candidates(spec)
    for path in searched:
        if path.is_file():
            if verify:
                V.verify_file(path, entry, spec, required=required)
            return path
    raise MissingDataError(_missing_message(entry, spec, searched))


def resolve_dir(name: str, *, manifest: Manifest | None = None) -> Path:
    """Return the extracted folder (``root``) of a folder dataset, e.g. ``<data dir>/imagenet``.

    Folders carry no checksum: the archives they were extracted from are verified by :func:`resolve` /
    :func:`download`.

    Raises
    ------
    MissingDataError
        Naming the folder, the places searched, the expected layout and where to get the data.
    """
    entry = _manifest(manifest).entry(name)
    if not entry.root:
        raise ValueError(f"manifest entry {name!r} has no 'root' folder; use resolve({name!r})")
    searched = [d / entry.root for d in data_dirs()]
    for path in searched:
        if path.is_dir():
            return path
    where = "\n  ".join(str(p) for p in searched)
    files = ", ".join(f.url for f in entry.files if f.url) or entry.url
    raise MissingDataError(
        f"dataset folder {entry.root!r} of manifest entry {name!r} not found. Searched:\n  {where}\n"
        f"Expected layout: {entry.layout}\nGet it from {entry.url} ({entry.download} download; files: {files}); "
        f"licence: {entry.licence}."
    )


# --------------------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------------------


def _download_check(entry: Entry, spec: FileSpec) -> Any:
    """The check run on a finished transfer before it is renamed into place (sha256, md5 or pin)."""

    def check(got: Fetched) -> None:
        where = f"{got.dest} (downloaded from {got.url})"
        if not V.accepted_sha256(entry, spec) and spec.md5:
            if got.md5 != spec.md5.lower():
                raise ChecksumError(where, [spec.md5.lower()], got.md5, "md5")
            return
        if not V.check_digest(where, got.sha256, entry, spec, required=False):
            warnings.warn(
                f"{spec.filename}: the manifest records no checksum; stored unverified (sha256 {got.sha256}). "
                f"Consumers that need a verified file refuse it until it is pinned: bob data --pin {entry.name} "
                f"{got.dest}",
                stacklevel=4,
            )

    return check


def download(
    name: str,
    filename: str | None = None,
    *,
    dest_dir: str | os.PathLike | None = None,
    force: bool = False,
    timeout: float = 60.0,
    manifest: Manifest | None = None,
) -> list[Path]:
    """Download an entry's file(s), verify them and move them into place atomically.

    Parameters
    ----------
    name : str
        Manifest entry name.
    filename : str, optional
        Only this file of a multi-file entry.
    dest_dir : path-like, optional
        Data directory to write into; defaults to :func:`bobkit.utils.paths.data_cache_dir`. Files land at
        ``dest_dir / spec.filename``.
    force : bool
        Download even if a verified copy is already there.
    timeout : float
        Socket timeout in seconds.

    Returns
    -------
    list of Path
        The local files (verified, or stored with a warning when the manifest records no hash).

    Raises
    ------
    MissingDataError
        The entry has no direct download (registration, licence click-through or bundled data).
    ChecksumError
        The downloaded bytes do not match; nothing is left behind.
    DownloadSizeError
        The server sent more bytes than the manifest's ``size_bytes`` (reading stops there) or fewer.
    DiskFullError
        The disk filled up (not a network error); nothing is left behind.
    """
    entry = _manifest(manifest).entry(name)
    if entry.download in ("manual", "bundled"):
        raise MissingDataError(
            f"manifest entry {name!r} cannot be downloaded automatically ({entry.download}): get it from "
            f"{entry.url} and lay it out as {entry.layout} under $BOB_DATA_DIR. Licence: {entry.licence}."
        )
    base = Path(dest_dir) if dest_dir is not None else paths.data_cache_dir()
    specs = [entry.file(filename)] if filename is not None else list(entry.files)
    out = []
    for spec in specs:
        if not spec.url:
            raise MissingDataError(f"{spec.filename} of manifest entry {name!r} has no URL; see {entry.url}")
        dest = base / spec.filename
        if dest.is_file() and not force:
            try:
                if V.verify_file(dest, entry, spec):
                    out.append(dest)
                    continue
            except ChecksumError:
                pass  # stale or partial copy: fetch again
        fetch_url(spec.url, dest, size_bytes=spec.size_bytes, check=_download_check(entry, spec), timeout=timeout)
        out.append(dest)
    return out


def pin(name: str, file: str | os.PathLike, *, filename: str | None = None,
        manifest: Manifest | None = None) -> dict[str, Any]:
    """Trust ``file`` as manifest entry ``name``'s file (``bob data --pin NAME FILE``): record its sha256 and size
    for this user (:func:`bobkit.data.verify.pin_entry`); a published hash it contradicts raises
    :class:`~bobkit.data.errors.ChecksumError`."""
    return V.pin_entry((manifest or load_manifest()).entry(name), file, filename=filename)


def file_sha256(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, memoised per inode and change time (:func:`bobkit.data.verify.file_digest`)."""
    return V.file_digest(path, algorithm)


def copy_into_data_dir(src: str | os.PathLike, name: str, filename: str | None = None, *,
                       dest_dir: str | os.PathLike | None = None, manifest: Manifest | None = None) -> Path:
    """Verify a file the user already has and copy it (atomically) to where :func:`resolve` finds it.

    Useful for manual downloads: ``copy_into_data_dir("~/Downloads/imagenet-a.tar", "imagenet_a")``.
    """
    entry = _manifest(manifest).entry(name)
    spec = entry.file(filename)
    src = Path(src).expanduser()
    V.verify_file(src, entry, spec)
    dest = (Path(dest_dir) if dest_dir is not None else paths.data_cache_dir()) / spec.filename
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest
