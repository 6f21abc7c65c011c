"""The items of a user's image folder or CSV list, their splits, and which files cannot be read.

Layouts (:mod:`bobkit.data.user` declares them):

* an image folder with one subfolder per class (files anywhere below it), optionally inside ``train/``, ``val/``
  and ``test/`` split folders;
* a CSV of ``path,label[,split]`` (a header row naming those columns is optional), paths relative to a root.

An image is any file whose suffix a PIL plugin opens (:func:`image_suffixes`); hidden files and other files are
ignored. Whether a file really decodes is checked by decoding it (:func:`unreadable_files`), in parallel threads.

A dataset stays inside its declared folder: a CSV path that is absolute, climbs out with ``..`` or names a
``$VARIABLE`` or ``~``, and a folder's symbolic link to a file or folder elsewhere, are refused by name unless the
declaration opts out (``allow_outside=True``: the declaration's ``allow_outside: true``).
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bobkit.utils.progress import progress_bar

__all__ = ["SPLIT_FOLDERS", "Item", "image_suffixes", "list_folder", "list_csv", "stratified_assignment",
           "unreadable_files"]

#: Split folder names recognised at the top of an image folder.
SPLIT_FOLDERS = ("train", "val", "test")
# PIL formats with an opener but no decoder of their own here (stubs, vector or video formats).
_NOT_IMAGES = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "EPS", "PDF", "MPEG", "FITS"})
#: Files checked before the progress bar shows.
_QUIET_CHECKS = 500


class ListingError(ValueError):
    """A folder or CSV that does not have a usable layout; the message names the path and what is wrong."""


@dataclass(frozen=True)
class Item:
    """One listed image: its file, class name, split (None: assigned later) and what identifies its content."""

    path: Path
    label: str
    split: str | None = None


@cache
def image_suffixes() -> frozenset[str]:
    """Lower-case file suffixes (``.jpg``, ``.png``, ``.tif``, ...) that an installed PIL plugin can open."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in _NOT_IMAGES)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in image_suffixes()


def _outside(path: Path, root: Path) -> bool:
    """Whether ``path``, symbolic links resolved, lies outside ``root`` (also resolved)."""
    return not path.resolve().is_relative_to(root.resolve())


def _refuse_outside(paths: list[Path], root: Path, what: str) -> None:
    outside = [p for p in paths if _outside(p, root)]
    if outside:
        raise ListingError(f"{len(outside)} {what} lead out of {root} through symbolic links (e.g. {outside[0]} -> "
                           f"{outside[0].resolve()}); copy them in, or declare allow_outside: true")


def _images_below(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder`` (hidden folders skipped), sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if _is_image(f)]
    return sorted(found)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _stray_images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and _is_image(p.name))


def list_folder(root: Path, *, allow_outside: bool = False) -> list[Item]:
    """Every image of a class-folder tree, with its class (and its split when ``root`` has split folders).

    Raises
    ------
    ListingError
        ``root`` is not a folder, holds images outside class folders, mixes split folders with class folders,
        holds no image at all, or (unless ``allow_outside``) links to files or folders outside itself.
    """
    if not root.is_dir():
        raise ListingError(f"image folder {root} does not exist (or is not a folder)")
    top = _class_folders(root)
    splits = [p for p in top if p.name in SPLIT_FOLDERS]
    if splits:
        others = [p.name for p in top if p.name not in SPLIT_FOLDERS]
        if others:
            raise ListingError(f"{root} has split folders ({', '.join(p.name for p in splits)}) and other folders "
                               f"{others}: put every class folder inside a split folder, or use no split folders")
        parts = [(p, p.name) for p in splits]
    else:
        parts = [(root, None)]
    items: list[Item] = []
    for folder, split in parts:
        stray = _stray_images(folder)
        if stray:
            raise ListingError(f"{folder} holds images outside any class folder (e.g. {stray[0]}); put each image "
                               f"in a folder named after its class")
        for class_dir in _class_folders(folder):
            items += [Item(p, class_dir.name, split) for p in _images_below(class_dir)]
    if not items:
        raise ListingError(f"no images found under {root} (expected one folder per class with images in it, "
                           f"optionally inside {'/, '.join(SPLIT_FOLDERS)}/ split folders)")
    if not allow_outside:
        _refuse_outside([item.path for item in items], root, "image file(s)")
    return items


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ListingError(f"CSV {path} cannot be read: {exc}") from exc


def list_csv(path: Path, root: Path, *, allow_outside: bool = False) -> list[Item]:
    """The items of a ``path,label[,split]`` CSV (header row optional), paths resolved against ``root``.

    Raises
    ------
    ListingError
        A missing file, a row without two or three columns, an empty path or label (names the line); unless
        ``allow_outside``, a path that is absolute, climbs out of ``root`` (``..``, a symbolic link) or names a
        ``$VARIABLE`` or ``~`` (names the line).
    """
    if not path.is_file():
        raise ListingError(f"CSV {path} does not exist")
    rows = _csv_rows(path)
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if header[:2] == ["path", "label"]:
        if header[2:] not in ([], ["split"]):
            raise ListingError(f"CSV {path}: header {rows[0]} must be path,label or path,label,split")
        rows = rows[1:]
    items = []
    for line, row in enumerate(rows, start=2 if header[:2] == ["path", "label"] else 1):
        cells = [c.strip() for c in row]
        if len(cells) not in (2, 3) or not cells[0] or not cells[1] or (len(cells) == 3 and not cells[2]):
            raise ListingError(f"CSV {path} line {line}: {row} is not path,label[,split]")
        if not allow_outside:
            _check_inside(cells[0], root, f"CSV {path} line {line}")
        file = Path(os.path.expandvars(cells[0])).expanduser()
        items.append(Item(file if file.is_absolute() else root / file, cells[1], cells[2] if len(cells) == 3 else None))
    if not items:
        raise ListingError(f"CSV {path} lists no images")
    return items


def _check_inside(raw: str, root: Path, where: str) -> None:
    """Refuse a CSV path that could name a file outside ``root``."""
    rel = Path(raw)
    why = ("is absolute" if rel.is_absolute() else "climbs out with '..'" if ".." in rel.parts
           else "names an environment variable" if "$" in raw else "starts with '~'" if raw.startswith("~")
           else "leads out through a symbolic link" if _outside(root / rel, root) else None)
    if why:
        raise ListingError(f"{where}: path {raw[:200]!r} {why}; paths stay inside {root} unless the dataset "
                           "declares allow_outside: true")


def stratified_assignment(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """A split name per item: within each class, ``round(fraction * n)`` items go to each named split, the rest
    to ``train``; a seeded permutation per class decides which (same labels, fractions and seed: same splits).

    A split with a positive fraction gets at least one item of a class that has two or more, and ``train`` keeps
    at least one while any fraction is left for it.
    """
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), "train", dtype=object)
    rest = 1.0 - sum(fractions.values())
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)[rng.permutation(int((labels == cls).sum()))]
        start = 0
        for split, fraction in fractions.items():
            n = int(round(fraction * len(idx)))
            if fraction > 0 and len(idx) >= 2:
                n = max(n, 1)
            if rest > 1e-9:
                n = min(n, len(idx) - start - 1)  # train keeps one
            n = max(0, min(n, len(idx) - start))
            out[idx[start:start + n]] = split
            start += n
    return out


def unreadable_files(paths: Sequence[Path], decode: Callable[[Path], object], *, label: str = "images",
                     workers: int | None = None) -> dict[Path, str]:
    """``{path: reason}`` of the files ``decode`` fails on (missing, truncated, not an image, too large).

    Threads decode several files at once (PIL releases the GIL while decoding); a bar shows for large folders.
    """
    workers = workers or max(1, min(8, os.cpu_count() or 1))

    def check(path: Path) -> str | None:
        try:
            decode(path)
        except Exception as exc:  # noqa: BLE001 - every failure is a reason to report, by name
            return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]  # one line, however the library words it
        return None

    bar = progress_bar(len(paths), f"checking {label}", "file", enabled=len(paths) > _QUIET_CHECKS)
    bad: dict[Path, str] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bob-check") as pool:
        for path, reason in zip(paths, pool.map(check, paths)):
            if reason is not None:
                bad[path] = reason
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return bad
