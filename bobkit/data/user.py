"""User datasets: an image folder, a CSV list or a COCO-format folder, declared in YAML and never coded.

Declarations come from the ``datasets:`` section of a grid or of a ``$BOB_REGISTRY`` file
(:mod:`bobkit.data.declarations`)::

    datasets:
      leaves:                           # classification / retrieval / OOD source
        folder: data/leaves             # one subfolder per class (optionally inside train/ val/ test/)
        split: {test: 0.2, seed: 0}     # without split folders: a seeded stratified split (this is the default)
        on_unreadable: skip             # skip (reported by name, counted) | fail
      leaves_field:                     # an OOD target: its classes are mapped to the source's by name
        csv: field_photos.csv           # path,label[,split]; paths relative to the CSV's folder (or root:)
        classes_of: leaves
        split: {test: 1.0}
      my_boxes:                         # detection / instance segmentation
        coco: data/boxes                # instances_{train,val}.json + train/ val/ (or images/) image folders

Any image PIL opens, of any size and mode (gray, RGBA, CMYK, 16-bit), is decoded as RGB. Files that do not decode
are found before any task runs and are skipped with a count and their names (``on_unreadable: skip``) or stop
the run with their names (``fail``). A dataset's *content key* hashes its file list (relative paths, classes,
splits, sizes and modification times, or sha256 with ``fingerprint: content``) and its declaration: the feature
cache and the run keys carry it, so an edited folder is extracted and run again.
"""

from __future__ import annotations

import difflib
import json
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bobkit.data.declarations import Declaration, DeclarationError, declarations
from bobkit.data.errors import DataError
from bobkit.data.images import decode_image
from bobkit.data.listing import Item, ListingError, list_csv, list_folder, stratified_assignment, unreadable_files
from bobkit.utils.files import sha256_bytes, write_json
from bobkit.utils.paths import data_cache_dir
from bobkit.utils.text import short_repr

__all__ = ["KINDS", "SkippedFilesWarning", "UserDataset", "UserSplits", "UnreadableImagesError", "check",
           "coco_dataset_names", "coco_split", "content_key", "dataset_names", "declared", "fingerprint", "info_fields",
           "load_split", "splits_of", "clear_cache"]

KINDS = ("folder", "csv", "coco")
POLICIES = ("skip", "fail")
FINGERPRINTS = ("stat", "content")
DEFAULT_SPLIT = {"test": 0.2, "seed": 0}
_FIELDS = {
    "folder": "an image folder, one subfolder per class (optionally inside train/ val/ test/)",
    "csv": "a CSV of path,label[,split]",
    "coco": "a folder with instances_{train,val}.json (or {train: {annotations, images}, val: ...})",
    "root": "csv: the folder its paths are relative to (default: the CSV's folder)",
    "split": "{test: fraction, val: fraction, seed: n}: the seeded stratified split of a dataset without splits",
    "on_unreadable": "skip | fail: what a file that does not decode does",
    "classes_of": "another declared dataset whose class list this one uses (an OOD target), mapped by name",
    "classes": "the class names in label order (default: sorted); items of other classes are an error",
    "storage_size": "square side images are decoded at (default 256)",
    "domain": "natural | medical | satellite | digits | rendition | ... (a description)",
    "hflip": "whether horizontal flips keep the label (default true)",
    "fingerprint": "stat (sizes and modification times, default) | content (sha256 of every file)",
    "description": "one line shown in `bob data`",
    "allow_outside": "true: CSV paths may be absolute, use .., $VARS or ~, and folder links may lead out of the "
                     "folder (default false: the dataset stays inside its folder)",
}


class UnreadableImagesError(DataError, ValueError):
    """Files of a user dataset that do not decode, under ``on_unreadable: fail``; the message names them."""


class SkippedFilesWarning(UserWarning):
    """Files of a user dataset skipped under ``on_unreadable: skip``: shown as one line naming them."""


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning) -> str:
    """One clean line (``warning: ...``) for :class:`SkippedFilesWarning`, no source file and line: the user needs
    the files it names, not bobkit's code; every other warning keeps the default format."""
    if isinstance(category, type) and issubclass(category, SkippedFilesWarning):
        return f"warning: {message}\n"
    return _default(message, category, filename, lineno, line)


if getattr(warnings.formatwarning, "__name__", "") != _format_warning.__name__:
    warnings.formatwarning = _format_warning


# ----------------------------------------------------------------------------------------------------------------
# Declarations
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserDataset:
    """A parsed dataset declaration (paths resolved, fields checked); see the module docstring for the fields."""

    name: str
    kind: str
    source: Path
    root: Path
    split_rule: tuple[tuple[str, float], ...] | None
    split_seed: int
    on_unreadable: str
    classes_of: str | None
    classes: tuple[str, ...] | None
    storage_size: int
    domain: str
    hflip: bool
    fingerprint: str
    description: str
    declared_in: str
    coco: tuple[tuple[str, Path, Path], ...] = ()
    allow_outside: bool = False

    def canonical(self) -> dict[str, Any]:
        """The declaration's meaning without where its files are (part of the content key)."""
        return {"kind": self.kind, "split": list(self.split_rule or ()), "seed": self.split_seed,
                "on_unreadable": self.on_unreadable, "classes_of": self.classes_of,
                "classes": list(self.classes or ()), "fingerprint": self.fingerprint}


def _kind(decl: Declaration) -> str:
    kinds = [k for k in KINDS if k in decl.fields]
    if len(kinds) != 1:
        raise decl.error(f"give exactly one of {', '.join(KINDS)} (got {kinds or 'none'})")
    return kinds[0]


def _check_fields(decl: Declaration) -> None:
    unknown = [k for k in decl.fields if k not in _FIELDS]
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(k, list(_FIELDS), 1))
                             else "") for k in unknown]
        raise decl.error(f"unknown field(s) {', '.join(hints)}; a dataset declares {', '.join(_FIELDS)} "
                         "(README: Battle backbones on your own data)")


def _split_rule(decl: Declaration) -> tuple[tuple[tuple[str, float], ...], int]:
    rule = decl.fields.get("split", DEFAULT_SPLIT)
    if not isinstance(rule, dict) or not rule:
        raise decl.error(f"split={short_repr(rule)} must be a mapping like {{test: 0.2, val: 0.1, seed: 0}}")
    unknown = [k for k in rule if k not in ("test", "val", "seed")]
    if unknown:
        raise decl.error(f"split has unknown key(s) {unknown}; it takes test, val (fractions) and seed")
    seed = rule.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise decl.error(f"split seed={short_repr(seed)} must be a non-negative integer")
    fractions = []
    for split in ("test", "val"):
        value = rule.get(split, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise decl.error(f"split {split}={short_repr(value)} must be a fraction between 0 and 1")
        if value > 0:
            fractions.append((split, float(value)))
    if sum(f for _, f in fractions) > 1 + 1e-9:
        raise decl.error(f"split fractions {dict(fractions)} add up to more than 1")
    return tuple(fractions), int(seed)


def _choice(decl: Declaration, key: str, allowed: tuple[str, ...], default: str) -> str:
    value = decl.fields.get(key, default)
    if value not in allowed:
        raise decl.error(f"{key}={short_repr(value)} is not one of {', '.join(allowed)}")
    return str(value)


def _coco_splits(decl: Declaration) -> tuple[tuple[str, Path, Path], ...]:
    """``(split, annotations file, image folder)`` of a COCO declaration (train and val)."""
    raw = decl.fields["coco"]
    out = []
    for split in ("train", "val"):
        if isinstance(raw, dict):
            part = raw.get(split)
            if not isinstance(part, dict) or not {"annotations", "images"} <= set(part):
                raise decl.error(f"coco.{split} must be {{annotations: FILE, images: FOLDER}}, got {short_repr(part)}")
            ann, images = decl.path("annotations", part["annotations"]), decl.path("images", part["images"])
        else:
            root = decl.path("coco")
            ann = root / f"instances_{split}.json"
            images = root / split if (root / split).is_dir() else root / "images"
        if not ann.is_file():
            raise decl.error(f"COCO annotations {ann} not found (detection needs train and val splits)")
        if not images.is_dir():
            raise decl.error(f"COCO image folder {images} not found")
        out.append((split, ann, images))
    return tuple(out)


def parse(decl: Declaration) -> UserDataset:
    """Check a dataset declaration and resolve its paths.

    Raises
    ------
    DeclarationError
        An unknown field (with its close match), a missing file or folder, a bad value; the message names the
        declaration, its file and the field.
    """
    _check_fields(decl)
    kind = _kind(decl)
    # (a COCO dataset given as {train: ..., val: ...} has no one folder: its paths are relative to the declaration's)
    source = decl.path(kind) if kind != "coco" or not isinstance(decl.fields["coco"], dict) else decl.base_dir
    if kind == "folder" and not source.is_dir():
        raise decl.error(f"folder {source} does not exist")
    if kind == "csv" and not source.is_file():
        raise decl.error(f"csv {source} does not exist")
    root = decl.path("root") if "root" in decl.fields else (source.parent if kind == "csv" else source)
    if "root" in decl.fields and kind != "csv":
        raise decl.error("root is for csv datasets (a folder's paths are relative to the folder)")
    explicit_split = "split" in decl.fields
    rule, seed = _split_rule(decl)
    classes = decl.fields.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
                                or len(set(classes)) != len(classes) or not classes):
        raise decl.error(f"classes={short_repr(classes)} must be a list of distinct class names")
    classes_of = decl.fields.get("classes_of")
    if classes_of is not None and (not isinstance(classes_of, str) or classes_of == decl.name):
        raise decl.error(f"classes_of={short_repr(classes_of)} must name another declared dataset")
    if classes is not None and classes_of is not None:
        raise decl.error("give classes or classes_of, not both")
    size = decl.fields.get("storage_size", 256)
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 2048:
        raise decl.error(f"storage_size={short_repr(size)} must be an integer between 16 and 2048")
    hflip = decl.fields.get("hflip", True)
    if not isinstance(hflip, bool):
        raise decl.error(f"hflip={short_repr(hflip)} must be true or false")
    allow_outside = decl.fields.get("allow_outside", False)
    if not isinstance(allow_outside, bool):
        raise decl.error(f"allow_outside={short_repr(allow_outside)} must be true or false")
    return UserDataset(
        name=decl.name, kind=kind, source=source, root=root, split_rule=rule if (explicit_split or kind != "coco")
        else None, split_seed=seed, on_unreadable=_choice(decl, "on_unreadable", POLICIES, "skip"),
        classes_of=classes_of, classes=tuple(classes) if classes else None, storage_size=int(size),
        domain=str(decl.fields.get("domain", "natural")), hflip=hflip,
        fingerprint=_choice(decl, "fingerprint", FINGERPRINTS, "stat"),
        description=str(decl.fields.get("description", "")), declared_in=decl.source,
        coco=_coco_splits(decl) if kind == "coco" else (), allow_outside=allow_outside,
    )


def declared() -> dict[str, UserDataset]:
    """Every dataset declared in the ``$BOB_REGISTRY`` files, parsed (name -> :class:`UserDataset`)."""
    return {name: _parsed(decl) for name, decl in declarations("datasets").items()}


@lru_cache(maxsize=256)
def _parsed(decl: Declaration) -> UserDataset:
    return parse(decl)


def dataset_names() -> list[str]:
    """Declared image-classification datasets (folders and CSV lists), in declaration order."""
    return [n for n, d in declared().items() if d.kind != "coco"]


def coco_dataset_names() -> list[str]:
    """Declared COCO-format detection datasets."""
    return [n for n, d in declared().items() if d.kind == "coco"]


def _get(name: str) -> UserDataset:
    found = declared().get(name)
    if found is None:
        raise DeclarationError(f"no declared dataset {name!r}")
    return found


# ----------------------------------------------------------------------------------------------------------------
# Listing, checking and splitting (once per process and declaration; the decode check also on disk)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserSplits:
    """The whole dataset after the unreadable-file policy: items, labels, split per item, classes."""

    paths: tuple[Path, ...]
    labels: np.ndarray
    splits: np.ndarray
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    content_key: str
    split_note: str


def _items(ds: UserDataset) -> list[Item]:
    try:
        if ds.kind == "folder":
            return list_folder(ds.source, allow_outside=ds.allow_outside)
        return list_csv(ds.source, ds.root, allow_outside=ds.allow_outside)
    except ListingError as exc:
        raise DeclarationError(f"dataset {ds.name!r} (declared in {ds.declared_in}): {exc}") from None


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _file_identity(path: Path, mode: str) -> list[Any]:
    """``[size, mtime_ns]`` (``stat``) or ``[sha256]`` (``content``) of a file; ``["missing"]`` when absent."""
    from bobkit.data.verify import file_digest

    try:
        st = path.stat()
    except OSError:
        return ["missing"]
    return [file_digest(path)] if mode == "content" else [st.st_size, st.st_mtime_ns]


def _content_key(ds: UserDataset, items: list[Item]) -> str:
    listing = [[_relative(i.path, ds.root), i.label, i.split, *_file_identity(i.path, ds.fingerprint)] for i in items]
    return sha256_bytes(json.dumps({"declaration": ds.canonical(), "items": listing}, sort_keys=True))[:16]


def _decode_check(path: Path) -> None:
    decode_image(path, 32)  # the decoder every later read uses, at a small size


def _unreadable(ds: UserDataset, paths: list[Path], key: str) -> dict[str, str]:
    """``{relative path: reason}``; memoised on disk by content key, so each cell's process does not decode again."""
    memo = data_cache_dir() / "user_checks" / f"{ds.name}-{key}.json"
    try:
        return dict(json.loads(memo.read_text(encoding="utf-8"))["unreadable"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    bad = unreadable_files(paths, _decode_check, label=f"{ds.name} images")
    found = {_relative(p, ds.root): reason for p, reason in bad.items()}
    write_json(memo, {"dataset": ds.name, "content_key": key, "unreadable": found})
    return found


def _class_list(ds: UserDataset, names: list[str]) -> tuple[str, ...]:
    """The label order: declared, another dataset's (``classes_of``), or the sorted class names (numbers in number
    order)."""
    if ds.classes_of is not None:
        if ds.classes_of not in dataset_names():
            raise DeclarationError(f"dataset {ds.name!r} (declared in {ds.declared_in}): classes_of="
                                   f"{short_repr(ds.classes_of)} is not a declared image dataset ({dataset_names()})")
        if declared()[ds.classes_of].classes_of is not None:  # chains (and cycles) would have no first class list
            raise DeclarationError(f"dataset {ds.name!r} (declared in {ds.declared_in}): classes_of="
                                   f"{short_repr(ds.classes_of)} takes its classes from another dataset itself; "
                                   "name that one")
        order = splits_of(ds.classes_of).classes
    else:  # sorted names; numeric ones ("2" before "10") in number order
        order = ds.classes or tuple(sorted(set(names), key=lambda c: (0, int(c), c) if c.isdigit() else (1, 0, c)))
    extra = sorted(set(names) - set(order))
    if extra:
        where = f"the classes of {short_repr(ds.classes_of)}" if ds.classes_of else "its declared classes"
        raise DeclarationError(f"dataset {ds.name!r} (declared in {ds.declared_in}) has class(es) {extra} that are "
                               f"not among {where} {list(order)}; class names are matched exactly")
    return tuple(order)


@lru_cache(maxsize=64)
def _splits_cached(ds: UserDataset) -> UserSplits:
    items = _items(ds)
    key = _content_key(ds, items)
    bad = _unreadable(ds, [i.path for i in items], key)
    if bad:
        shown = "; ".join(f"{p} ({r})" for p, r in list(bad.items())[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        if ds.on_unreadable == "fail":
            raise UnreadableImagesError(f"dataset {ds.name!r} (declared in {ds.declared_in}): {len(bad)} file(s) "
                                        f"cannot be read: {shown}{more}. Fix or remove them, or declare "
                                        f"on_unreadable: skip")
        warnings.warn(f"dataset {ds.name!r}: skipped {len(bad)} unreadable file(s): {shown}{more}",
                      SkippedFilesWarning, stacklevel=2)
        items = [i for i in items if _relative(i.path, ds.root) not in bad]
    classes = _class_list(ds, [i.label for i in items])
    index = {c: k for k, c in enumerate(classes)}
    labels = np.asarray([index[i.label] for i in items], dtype=np.int64)
    given = [i.split for i in items]
    if all(s is not None for s in given):
        splits, note = np.asarray(given, dtype=object), "splits as given"
    elif any(s is not None for s in given):
        raise DeclarationError(f"dataset {ds.name!r} (declared in {ds.declared_in}): some rows name a split and "
                               f"some do not; give every row a split or none")
    else:
        rule = dict(ds.split_rule or ())
        splits = stratified_assignment(labels, rule, ds.split_seed)
        note = (f"seeded stratified split per class: {', '.join(f'{k} {v:g}' for k, v in rule.items())}, "
                f"train the rest; seed {ds.split_seed}")
    labels.setflags(write=False)
    # The label order belongs to the content too (an OOD target follows its source's classes).
    key = sha256_bytes(json.dumps([key, list(classes)]))[:16]
    return UserSplits(tuple(i.path for i in items), labels, splits, classes, tuple(sorted(bad.items())), key, note)


def splits_of(name: str) -> UserSplits:
    """The listed, checked and split items of declared image dataset ``name`` (cached per process)."""
    ds = _get(name)
    if ds.kind == "coco":
        raise DeclarationError(f"dataset {name!r} (declared in {ds.declared_in}) is a COCO detection dataset; "
                               f"classification, retrieval and OOD need a folder or csv dataset")
    return _splits_cached(ds)


def load_split(name: str, split: str):
    """The :class:`~bobkit.data.sources.FileSource` of one split (the split must exist; the caller checks)."""
    from bobkit.data.sources import FileSource

    ds, full = _get(name), splits_of(name)
    keep = np.flatnonzero(full.splits == split)
    meta = {"content_key": full.content_key, "user_dataset": True, "exif_transpose": True,
            "skipped_unreadable": len(full.skipped), "declared_in": ds.declared_in}
    return FileSource([full.paths[i] for i in keep], full.labels[keep], list(full.classes), meta=meta)


def info_fields(name: str) -> dict[str, Any]:
    """What :class:`~bobkit.data.datasets.DatasetInfo` needs to describe declared dataset ``name``."""
    ds, full = _get(name), splits_of(name)
    order = [s for s in ("train", "val", "test") if s in set(full.splits)]
    order += sorted(set(full.splits) - set(order))
    counts = {s: int((full.splits == s).sum()) for s in order}
    skipped = f"; {len(full.skipped)} unreadable file(s) skipped" if full.skipped else ""
    text = ds.description or f"{ds.kind} {ds.source}"
    return dict(num_classes=len(full.classes), num_items=counts, domain=ds.domain, hflip=ds.hflip,
                storage_size=ds.storage_size,
                description=f"{text} (declared in {ds.declared_in}; {full.split_note}{skipped})")


def content_key(name: str) -> str | None:
    """The content key of a declared dataset (None for a name that is not declared)."""
    ds = declared().get(name)
    if ds is None:
        return None
    return _coco_key(ds) if ds.kind == "coco" else splits_of(name).content_key


def fingerprint(name: str) -> str | None:
    """What a run key adds for a declared dataset: its content key (None when ``name`` is not declared)."""
    return content_key(name)


# ----------------------------------------------------------------------------------------------------------------
# COCO-format detection datasets
# ----------------------------------------------------------------------------------------------------------------


def _coco_images(annotations: Path, image_dir: Path) -> list[tuple[int, Path]]:
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
        return [(int(im["id"]), image_dir / str(im["file_name"])) for im in data.get("images", [])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"COCO annotations {annotations} cannot be read: {exc}") from exc


@lru_cache(maxsize=64)
def _coco_key(ds: UserDataset) -> str:
    from bobkit.data.verify import file_digest

    parts = []
    for split, ann, images in ds.coco:
        files = [[_relative(p, images), *_file_identity(p, ds.fingerprint)] for _, p in _coco_images(ann, images)]
        parts.append([split, file_digest(ann), files])
    return sha256_bytes(json.dumps({"declaration": ds.canonical(), "splits": parts}, sort_keys=True))[:16]


@lru_cache(maxsize=64)
def _coco_split_cached(ds: UserDataset, split: str) -> tuple[Path, Path]:
    _, ann, images = next(part for part in ds.coco if part[0] == split)
    listed = _coco_images(ann, images)
    key = _coco_key(ds)
    bad = _unreadable(ds, [p for _, p in listed], f"{key}-{split}")
    if not bad:
        return ann, images
    shown = "; ".join(f"{p} ({r})" for p, r in list(bad.items())[:10])
    if ds.on_unreadable == "fail":
        raise UnreadableImagesError(f"dataset {ds.name!r} (declared in {ds.declared_in}) {split}: {len(bad)} image(s) "
                                    f"cannot be read: {shown}. Fix or remove them, or declare on_unreadable: skip")
    warnings.warn(f"dataset {ds.name!r} {split}: skipped {len(bad)} unreadable image(s): {shown}",
                  SkippedFilesWarning, stacklevel=2)
    data = json.loads(ann.read_text(encoding="utf-8"))
    drop = {i for i, p in listed if _relative(p, ds.root) in bad}
    data["images"] = [im for im in data["images"] if int(im["id"]) not in drop]
    data["annotations"] = [a for a in data.get("annotations", []) if int(a["image_id"]) not in drop]
    filtered = data_cache_dir() / "user_coco" / f"{ds.name}-{key}-instances_{split}.json"
    write_json(filtered, data)
    return filtered, images


def coco_split(name: str, split: str) -> tuple[Path, Path]:
    """``(annotations file, image folder)`` of split ``train`` / ``val`` of declared COCO dataset ``name``; images
    that do not decode are left out of a filtered copy of the annotations (``skip``) or named in an error."""
    ds = _get(name)
    if ds.kind != "coco":
        raise DeclarationError(f"dataset {name!r} (declared in {ds.declared_in}) is not a COCO dataset")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return _coco_split_cached(ds, split)


def clear_cache() -> None:
    """Forget listings, checks and keys computed in this process (e.g. after editing a dataset's folder)."""
    for fn in (_parsed, _splits_cached, _coco_key, _coco_split_cached):
        fn.cache_clear()


def check(name: str) -> None:
    """Everything a task will need of declared dataset ``name``, done now: listed, decoded (the unreadable-file
    policy applied), split, and (COCO) both splits resolved; raises naming what is wrong."""
    ds = _get(name)
    if ds.kind == "coco":
        for split in ("train", "val"):
            coco_split(name, split)
    else:
        splits_of(name)
