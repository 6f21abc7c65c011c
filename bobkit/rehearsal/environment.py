"""A private world for the rehearsal: stand-in data, its own caches, a manifest overlay and a private pin store.

The stand-ins go through the loaders' real verification, which is not weakened for anyone:

* a file whose manifest entry publishes a sha256 (the CIFAR-100 tarball, the SimCLR lists) is checked against a
  *rehearsal-only overlay* of ``data_manifest.yaml`` that records the stand-in's hash instead (``$BOB_DATA_MANIFEST``
  points at the overlay while the rehearsal runs);
* a file without a published hash (the revisited ``gnd_*.pkl``) is refused until pinned, as for a user: the
  rehearsal pins its stand-in with :func:`bobkit.data.verify.pin` into the pin store of its own temporary
  ``$BOB_CACHE_DIR``, never the user's.

Features, converted annotations and hash memos land in that temporary cache too; everything is removed afterwards
and the environment variables are restored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from bobkit.rehearsal.standins import Writer, write_standins
from bobkit.utils.files import sha256_file

#: Environment variables the rehearsal sets while it runs (and restores after).
ENV_NAMES = ("BOB_DATA_DIR", "BOB_CACHE_DIR", "BOB_DATA_MANIFEST", "HF_HUB_OFFLINE", "BOB_PIN_UNVERIFIED")


@dataclass
class RehearsalEnvironment:
    """Where the rehearsal's stand-ins, caches and manifest overlay are.

    Attributes
    ----------
    root
        The temporary folder holding everything below.
    data_dir, cache_dir, manifest
        What ``$BOB_DATA_DIR``, ``$BOB_CACHE_DIR`` and ``$BOB_DATA_MANIFEST`` point to.
    written
        Datasets whose stand-ins were written.
    pinned
        ``entry/filename`` of the stand-in files pinned in the private pin store.
    """

    root: Path
    data_dir: Path
    cache_dir: Path
    manifest: Path
    written: list[str] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)


def _file_specs(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The mutable file records of a raw manifest entry (single-file entries keep theirs at the top level)."""
    if "files" in raw:
        return list(raw["files"])
    return [raw] if "filename" in raw else []


def overlay_manifest(source: Path, target: Path, data_dir: Path, standins: Iterable[str]) -> list[tuple[str, str]]:
    """Write a copy of the manifest at ``source`` to ``target`` in which every stand-in file that has a published
    checksum carries the stand-in's sha256 instead; return ``(entry, filename)`` of the stand-in files that have
    none (they are pinned, as a user would).
    """
    doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    wanted = set(standins)
    to_pin: list[tuple[str, str]] = []
    for raw in doc["entries"]:
        if raw.get("name") not in wanted:
            continue
        for spec in _file_specs(raw):
            path = data_dir / str(spec["filename"])
            if not path.is_file():
                continue
            if spec.get("sha256") or spec.get("md5"):
                spec.update(sha256=sha256_file(path), size_bytes=path.stat().st_size,
                            sha256_source="rehearsal stand-in (overlay)")
                spec.pop("md5", None)
                spec.pop("alternates", None)
            else:
                to_pin.append((raw["name"], str(spec["filename"])))
    target.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return to_pin


@contextmanager
def scoped_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for ``None``, unset) environment variables for the duration of the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _clear_loader_caches() -> None:
    """Forget file lists and arrays loaded from other data folders (the loaders cache them per process)."""
    from bobkit.data import clear_cache

    clear_cache()


@contextmanager
def rehearsal_environment(datasets: Iterable[str], *, keep: Path | None = None, seed: int = 0,
                          overrides: Mapping[str, Writer] | None = None) -> Iterator[RehearsalEnvironment]:
    """Stand-ins of ``datasets`` under a temporary ``$BOB_DATA_DIR``, with private caches and verification.

    Parameters
    ----------
    datasets
        Names the cells read; those without a stand-in (the offline datasets) are read for real.
    keep
        Write everything in this (new or empty) folder and leave it there for inspection, instead of a temporary
        folder that is removed afterwards.
    seed
        Seed of the generated pictures.
    overrides
        Replacement stand-in writers by dataset name (a planted wrong layout).
    """
    from bobkit.data.manifest import default_manifest_path, pin

    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise ValueError(f"--keep folder {str(keep)!r} is not empty; give a new or empty folder")
    root = keep or Path(tempfile.mkdtemp(prefix="bob-rehearse-"))
    env = RehearsalEnvironment(root, root / "data", root / "cache", root / "data_manifest.yaml")
    env.data_dir.mkdir(parents=True, exist_ok=True)
    env.cache_dir.mkdir(parents=True, exist_ok=True)
    source_manifest = default_manifest_path()
    try:
        env.written = write_standins(datasets, env.data_dir, seed=seed, overrides=overrides)
        to_pin = overlay_manifest(source_manifest, env.manifest, env.data_dir, env.written)
        values = {"BOB_DATA_DIR": str(env.data_dir), "BOB_CACHE_DIR": str(env.cache_dir),
                  "BOB_DATA_MANIFEST": str(env.manifest), "HF_HUB_OFFLINE": "1", "BOB_PIN_UNVERIFIED": None}
        with scoped_environ(values):
            _clear_loader_caches()
            for entry, filename in to_pin:
                pin(entry, env.data_dir / filename, filename=filename)
                env.pinned.append(f"{entry}/{filename}")
            try:
                yield env
            finally:
                _clear_loader_caches()
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
