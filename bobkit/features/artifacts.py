"""Content-addressed artifacts: fine-tuned weights, fitted probe heads and frozen features, keyed by what made them.

An artifact is a folder ``<root>/<kind>/<key>/`` holding its files and a ``meta.json`` that records each file's size
and sha256 (:func:`bobkit.utils.files.file_record`) beside what the kind says about itself. The key is a hash of
everything that made the artifact (:func:`training_identity`: backbone and its weights id, dataset, split and
subset, the content key of a declared dataset, the recipe's parameters, seed, image size, precision and the
fingerprint of the training code), so an artifact is never reused for anything else, and a change to any of those
is a new key.

The mechanics every kind shares live here once:

* :func:`write_entry`: files written into a temp folder, their records into ``meta.json``, fsynced and renamed
  into place (:func:`bobkit.utils.files.atomic_dir`): a killed writer never leaves a half artifact that reads as
  complete; a lost race with another writer of the same key keeps theirs (equally valid).
* :func:`entry_problems`: sizes and sha256 against the records (hashes memoised per inode and change time), plus
  the kind's own checks (array shapes of a feature entry).
* :func:`read_entry`: the meta of an intact entry; a damaged one is moved aside (``<key>.bad-<time>-<random>``, kept
  for inspection) and reads as absent, so its producer makes it again.

Kinds: ``features`` (the feature cache, :mod:`bobkit.features.extract`, in ``<cache dir>/features``: its keys and
entries are the ones it always had), ``probe`` and ``model`` (safetensors, loaded only after verification; see
:mod:`bobkit.tasks.trained`). Probe and model artifacts live in :func:`artifacts_dir`: ``$BOB_ARTIFACTS_DIR``, else
``<cache dir>/artifacts``. ``bob run --artifacts-dir DIR`` sets it for a batch; the Slurm backend defaults it to
``<runs dir>/.artifacts`` (the one folder every node of a batch already shares).

A task records every artifact it loads or publishes in :func:`ledger`; the harness hands the ledger to the runner
(``artifacts.json`` beside the task output), which keeps it in the cell's sidecar: which key, which sha256.

Nothing here imports torch at module level: the grid computes artifact keys without it.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from bobkit.utils.files import atomic_dir, file_record, move_aside, record_problems, sha256_bytes, write_json
from bobkit.utils.paths import cache_dir

#: The kinds of artifacts.
KINDS = ("model", "probe", "features")
#: Where probe and model artifacts live (default ``<cache dir>/artifacts``).
ARTIFACTS_ENV = "BOB_ARTIFACTS_DIR"
META = "meta.json"
#: Format of ``meta.json`` (the feature cache's format 2: an entry written before the store reads as intact).
ENTRY_FORMAT = 2
#: The one file of a tensor artifact (probe, model): safetensors, no pickle.
TENSORS_FILE = "tensors.safetensors"
#: The file the harness writes beside the task output: the artifacts a cell loaded or published.
LEDGER_FILE = "artifacts.json"
KEY_CHARS = 20


@dataclass(frozen=True)
class ArtifactRef:
    """The name of one artifact: its kind and key, a label for people, and the identity the key hashes.

    Two refs are equal when kind and key are (the identity is what the key was computed from).
    """

    kind: str
    key: str
    label: str = field(default="", compare=False)
    identity: str = field(default="{}", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"artifact kind {self.kind!r} is not one of {KINDS}")

    @property
    def name(self) -> str:
        """``<kind>/<key>``: its folder below the store's root."""
        return f"{self.kind}/{self.key}"

    def describe(self) -> dict[str, Any]:
        """The identity as a dict (what the key is the hash of)."""
        return json.loads(self.identity)


def artifact_ref(kind: str, identity: Mapping[str, Any], label: str = "") -> ArtifactRef:
    """The ref whose key is the hash (first 20 hex digits of sha256) of ``kind`` and ``identity`` (JSON values)."""
    text = json.dumps({"kind": kind, **identity}, sort_keys=True, default=str)
    return ArtifactRef(kind, sha256_bytes(text)[:KEY_CHARS], label, text)


def training_identity(
    kind: str,
    *,
    backbone: str,
    seed: int,
    dataset: str,
    split: str,
    image_size: int | None,
    subset: Mapping[str, Any],
    recipe: Mapping[str, Any],
    precision: str,
    code: str,
) -> ArtifactRef:
    """The ref of what a training makes: ``kind`` ``probe`` or ``model``.

    Parameters
    ----------
    backbone, seed
        The backbone and its weights identity (:func:`bobkit.backbones.weights_id`: the file's hash, the hub tag,
        ``random_init-seed<seed>``); the seed also seeds the training.
    dataset, split, subset
        What it was trained on: the split and every rule that picks items from it (``max_train``, low-shot rule,
        a held-out share); a declared dataset adds its content key (an edited folder is new data).
    image_size, recipe, precision
        How: the input side, the recipe's parameters (probe or fine-tune), the declared autocast precision.
    code
        Fingerprint of the code that trains (:func:`bobkit.utils.files.source_fingerprint` of its modules).
    """
    from bobkit.backbones import weights_id
    from bobkit.data import user

    identity: dict[str, Any] = {
        "backbone": backbone, "weights": weights_id(backbone, seed=seed), "seed": seed, "dataset": dataset,
        "split": split, "subset": dict(subset), "image_size": image_size, "recipe": dict(recipe),
        "precision": precision, "code": code,
    }
    content = user.content_key(dataset)
    if content is not None:
        identity["dataset_content"] = content
    held = subset.get("holdout")
    where = f"{split} less {held['fraction']:g} held out" if isinstance(held, Mapping) else split
    return artifact_ref(kind, identity, f"{kind} of {backbone} on {dataset}[{where}] seed{seed}")


# ----------------------------------------------------------------------------------------------------------------
# Where artifacts live
# ----------------------------------------------------------------------------------------------------------------


def artifacts_dir() -> Path:
    """Root of the probe and model artifacts: ``$BOB_ARTIFACTS_DIR``, else ``<cache dir>/artifacts``."""
    root = os.environ.get(ARTIFACTS_ENV)
    return Path(root).expanduser() if root else cache_dir() / "artifacts"


def entry_path(ref: ArtifactRef, root: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/<kind>/<key>`` (root: :func:`artifacts_dir`)."""
    return Path(root if root is not None else artifacts_dir()) / ref.kind / ref.key


# ----------------------------------------------------------------------------------------------------------------
# Entries: write, verify, read (one place for every kind)
# ----------------------------------------------------------------------------------------------------------------

Check = Callable[[Path, dict[str, Any]], list[str]]


def _digest(path: Path) -> str:
    from bobkit.data.verify import file_digest  # memoised per inode and change time

    return file_digest(path)


def write_entry(entry: str | os.PathLike[str], write: Callable[[Path], Mapping[str, Any] | None],
                meta: Mapping[str, Any]) -> Path:
    """Write an artifact folder atomically and durably: ``write(tmp)`` puts its files into the temp folder (and may
    return more meta), then every file's size and sha256 go into ``meta.json`` beside ``meta``.

    Returns the entry's path. When another process finished the same entry first, theirs is kept.
    """
    entry = Path(entry)
    with atomic_dir(entry) as tmp:
        extra = write(tmp) or {}
        names = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != META)
        record = {**meta, **extra, "format": ENTRY_FORMAT,
                  "files": {name: file_record(tmp / name, sha256=_digest) for name in names}}
        (tmp / META).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return entry


def entry_problems(entry: str | os.PathLike[str], check: Check | None = None) -> list[str] | None:
    """What is wrong with an entry: ``None`` when there is none, ``[]`` when it is intact.

    Checks the format and the size and sha256 of every recorded file, then the kind's own ``check(entry, meta)``.
    """
    entry = Path(entry)
    meta_path = entry / META
    if not meta_path.exists() and not entry.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{META} unreadable: {exc}"]
    if not isinstance(meta, dict) or meta.get("format") != ENTRY_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        return [f"{META} of format {found!r}, not {ENTRY_FORMAT}"]
    problems = record_problems(entry, meta.get("files"), sha256=_digest)
    if problems or check is None:
        return problems
    return check(entry, meta)


def read_entry(entry: str | os.PathLike[str], what: str, check: Check | None = None) -> dict[str, Any] | None:
    """The meta of an intact entry, or ``None``: absent, or damaged and moved aside (with a warning naming
    ``what`` and the problems), so its producer makes it again."""
    entry = Path(entry)
    problems = entry_problems(entry, check)
    if problems is None:
        return None
    if problems:
        aside = move_aside(entry)
        warnings.warn(f"{what} {entry} is damaged ({'; '.join(problems)}); moved to {aside.name} and made again",
                      stacklevel=3)
        return None
    return json.loads((entry / META).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------------------------
# Tensor artifacts (probe heads, fine-tuned weights)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredArtifact:
    """An intact artifact on disk: its ref, folder, meta and the sha256 of its tensors file."""

    ref: ArtifactRef
    path: Path
    meta: dict[str, Any]

    @property
    def sha256(self) -> str:
        """sha256 of the artifact's tensors file (what a consumer's sidecar records)."""
        return str(self.meta["files"][TENSORS_FILE]["sha256"])

    def load_tensors(self, device: Any = "cpu") -> dict[str, Any]:
        """The tensors (``safetensors``: no pickle), read after the entry was verified."""
        from safetensors.torch import load_file

        return load_file(str(self.path / TENSORS_FILE), device=str(device))


def _has_tensors(entry: Path, meta: dict[str, Any]) -> list[str]:
    return [] if TENSORS_FILE in meta.get("files", {}) else [f"no {TENSORS_FILE} recorded"]


def find(ref: ArtifactRef, root: str | os.PathLike[str] | None = None) -> StoredArtifact | None:
    """The intact artifact of ``ref`` (verified: sizes and sha256), or ``None`` (absent, or damaged: moved aside)."""
    path = entry_path(ref, root)
    meta = read_entry(path, f"{ref.kind} artifact", _has_tensors)
    return StoredArtifact(ref, path, meta) if meta is not None else None


def publish(ref: ArtifactRef, tensors: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
            root: str | os.PathLike[str] | None = None) -> StoredArtifact:
    """Write ``tensors`` (contiguous CPU copies, safetensors) as the artifact of ``ref``, atomically, with ``meta``
    and the identity the key hashes; returns it as stored (another writer's copy when it was first)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))

    path = write_entry(entry_path(ref, root), write,
                       {**(meta or {}), "kind": ref.kind, "key": ref.key, "label": ref.label,
                        "identity": ref.describe()})
    stored = find(ref, root)
    if stored is None:
        raise OSError(f"{ref.kind} artifact {path} did not verify right after it was written")
    return stored


# ----------------------------------------------------------------------------------------------------------------
# The ledger: what a cell loaded or published (kept in its sidecar)
# ----------------------------------------------------------------------------------------------------------------

_LEDGER: list[dict[str, Any]] = []


def note(stored: StoredArtifact, how: str) -> dict[str, Any]:
    """Record that this cell ``loaded`` or ``published`` an artifact; returns the entry."""
    entry = {"kind": stored.ref.kind, "key": stored.ref.key, "sha256": stored.sha256, "label": stored.ref.label,
             "how": how, "path": str(stored.path)}
    _LEDGER.append(entry)
    return entry


def ledger() -> list[dict[str, Any]]:
    """The artifacts loaded or published since :func:`reset_ledger` (in order)."""
    return list(_LEDGER)


def reset_ledger() -> None:
    """Forget the recorded artifacts (the harness calls it when a cell starts)."""
    _LEDGER.clear()


def write_ledger(output_dir: str | os.PathLike[str]) -> None:
    """``artifacts.json`` in the task's output folder, for the runner (nothing when nothing was recorded)."""
    if _LEDGER:
        write_json(Path(output_dir) / LEDGER_FILE, {"artifacts": ledger()})


def read_ledger(output_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The artifacts a cell recorded (empty when it wrote no ledger or an unreadable one)."""
    try:
        payload = json.loads((Path(output_dir) / LEDGER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    items = payload.get("artifacts") if isinstance(payload, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
