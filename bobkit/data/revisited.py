"""Revisited Oxford / Paris ground truth: a verified pickle, unpickled once under hard limits, kept as JSON.

``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` (Radenovic et al. 2018) are Python pickles. They are read at most once
per file: the bytes are read (up to a size cap), their sha256 is checked against the manifest, the caller or the
user's pin (:func:`bobkit.data.pin`; no hash is published upstream), and *those same bytes* go through an unpickler
that admits only plain containers and numpy arrays, with caps on array sizes, element counts and nesting depth, so
neither code nor a memory bomb can come out of a hostile file. The result is written as JSON; everything
afterwards reads the JSON.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bobkit.data import verify as V
from bobkit.data.errors import ChecksumError, MissingDataError
from bobkit.utils import paths
from bobkit.utils.files import move_aside, sha256_bytes, write_json

__all__ = ["PickleLimits", "UnsafePickleError", "PickleLimitError", "restricted_unpickle", "RevisitedGroundTruth",
           "convert_revisited_gnd", "load_revisited_gnd", "revisited_ground_truth"]


@dataclass(frozen=True)
class PickleLimits:
    """Caps on what a ground-truth pickle may make the reader allocate (the real files need about 1% of each).

    Attributes
    ----------
    max_file_bytes
        Size of the pickle file itself (the real ones are well under 1 MiB).
    max_array_bytes
        Memory of any one numpy array it declares, checked before the array is allocated.
    max_items
        Elements (list items, dict entries, array values) over the whole converted result, counted as they are
        converted, so shared references cannot multiply a small file into a huge result.
    max_depth
        Nesting of containers.
    """

    max_file_bytes: int = 16 << 20
    max_array_bytes: int = 64 << 20
    max_items: int = 2_000_000
    max_depth: int = 16


DEFAULT_LIMITS = PickleLimits()

# Everything a gnd_*.pkl may legitimately reference: containers and numpy arrays/scalars (numpy 1.x and 2.x paths).
_ALLOWED_GLOBALS = {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # numpy arrays pickled by Python 2 / protocol 2 store their bytes this way
    ("builtins", "bytes"),  # ... and an empty array's bytes as bytes() (capped: bytes(n) allocates n bytes)
}
#: Protocol 2 writes Python 3's module names in their Python 2 spelling.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list (a module, function or class it has no reason to use)."""


class PickleLimitError(UnsafePickleError):
    """A pickle declared more than :class:`PickleLimits` allows (file size, array size, elements or depth)."""


def _capped_reconstruct(original: Any, limits: PickleLimits) -> Any:
    """numpy's ``_reconstruct`` (allocates an array of a declared shape), refusing shapes over the byte cap."""

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(isinstance(d, int) and d >= 0 for d in dims):
            raise PickleLimitError(f"array shape {shape!r} is not a tuple of non-negative integers")
        nbytes = math.prod(dims) * np.dtype(dtype).itemsize
        if nbytes > limits.max_array_bytes:
            raise PickleLimitError(f"array of shape {shape!r} would take {nbytes} bytes; the cap is "
                                   f"{limits.max_array_bytes} (PickleLimits.max_array_bytes)")
        return original(subtype, shape, dtype)

    return reconstruct


def _capped_bytes(limits: PickleLimits) -> Any:
    """``bytes`` for protocol-2 byte strings, refusing ``bytes(n)`` over the array byte cap."""

    def make(*args: Any) -> bytes:
        if args and isinstance(args[0], int) and args[0] > limits.max_array_bytes:
            raise PickleLimitError(f"bytes({args[0]}) would take {args[0]} bytes; the cap is "
                                   f"{limits.max_array_bytes} (PickleLimits.max_array_bytes)")
        return bytes(*args)

    return make


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, limits: PickleLimits) -> None:
        super().__init__(file, encoding="latin1")
        self.limits = limits

    def find_class(self, module: str, name: str) -> Any:
        if (_PY2_MODULES.get(module, module), name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to load global {module}.{name} from a ground-truth pickle")
        if name == "bytes":
            return _capped_bytes(self.limits)
        found = super().find_class(module, name)
        return _capped_reconstruct(found, self.limits) if name == "_reconstruct" else found


def restricted_unpickle(data: bytes, limits: PickleLimits = DEFAULT_LIMITS) -> Any:
    """Unpickle ``data`` admitting only builtin containers and numpy arrays, within ``limits``.

    Raises
    ------
    UnsafePickleError
        A disallowed global (code, classes other than numpy arrays).
    PickleLimitError
        The data exceeds ``limits.max_file_bytes`` or declares an array over ``limits.max_array_bytes``.
    """
    if len(data) > limits.max_file_bytes:
        raise PickleLimitError(f"pickle of {len(data)} bytes exceeds the cap of {limits.max_file_bytes} bytes")
    return _RestrictedUnpickler(io.BytesIO(data), limits).load()


class _Budget:
    """Elements still allowed while converting (shared references count every time they are expanded)."""

    def __init__(self, limits: PickleLimits) -> None:
        self.left = limits.max_items
        self.max_depth = limits.max_depth

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise PickleLimitError("ground truth expands to more elements than PickleLimits.max_items allows")


def _plain(value: Any, budget: _Budget, depth: int = 0) -> Any:
    """numpy arrays/scalars and sets to JSON-able lists and numbers, within the budget and depth cap."""
    if depth > budget.max_depth:
        raise PickleLimitError(f"containers nested deeper than {budget.max_depth} (PickleLimits.max_depth)")
    if isinstance(value, np.ndarray):
        budget.spend(value.size)
        if value.dtype == object:
            return [_plain(v, budget, depth + 1) for v in value.ravel()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        budget.spend(len(value))
        return {str(k): _plain(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        budget.spend(len(value))
        return [_plain(v, budget, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


@dataclass
class RevisitedGroundTruth:
    """Image lists and per-query ground truth of a revisited Oxford/Paris dataset (0-based database indices)."""

    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict[str, Any]]
    source_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"imlist": self.imlist, "qimlist": self.qimlist, "gnd": self.gnd, "source_sha256": self.source_sha256}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> RevisitedGroundTruth:
        for key in ("imlist", "qimlist", "gnd"):
            if key not in payload:
                raise ValueError(f"revisited ground truth lacks {key!r}")
        if len(payload["gnd"]) != len(payload["qimlist"]):
            raise ValueError(f"{len(payload['qimlist'])} queries but {len(payload['gnd'])} ground-truth entries")
        n = len(payload["imlist"])
        for i, g in enumerate(payload["gnd"]):
            for key in ("easy", "hard", "junk"):
                idx = g.get(key, [])
                if any((not isinstance(v, int)) or v < 0 or v >= n for v in idx):
                    raise ValueError(f"query {i}: {key!r} holds an index outside 0..{n - 1}")
        return cls(payload["imlist"], payload["qimlist"], payload["gnd"], payload.get("source_sha256"))


def _read_capped(path: Path, limits: PickleLimits) -> bytes:
    """The file's bytes, refusing (before reading them) a file over ``limits.max_file_bytes``."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(limits.max_file_bytes + 1)
    if max(size, len(data)) > limits.max_file_bytes:
        raise PickleLimitError(f"{path} is {max(size, len(data))} bytes; ground-truth pickles are capped at "
                               f"{limits.max_file_bytes} (PickleLimits.max_file_bytes)")
    return data


def _cached_json(json_path: Path, source_sha256: str) -> RevisitedGroundTruth | None:
    """The converted ground truth when ``json_path`` holds a valid conversion of this very source, else None.

    A corrupt file (truncated, zero-filled, invalid) is moved aside so it is converted again.
    """
    if not json_path.is_file():
        return None
    try:
        gt = RevisitedGroundTruth.from_json(json.loads(json_path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError, TypeError, AttributeError):
        move_aside(json_path)
        return None
    return gt if gt.source_sha256 == source_sha256 else None


def _convert_bytes(data: bytes, digest: str, source: Path, json_path: Path, limits: PickleLimits) -> Path:
    raw = restricted_unpickle(data, limits)
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a dict with imlist/qimlist/gnd, got {type(raw).__name__}")
    plain = _plain({k: raw[k] for k in ("imlist", "qimlist", "gnd") if k in raw}, _Budget(limits))
    for g in plain.get("gnd", []):
        for key in ("easy", "hard", "junk"):
            g[key] = [int(v) for v in g.get(key, [])]
    gt = RevisitedGroundTruth.from_json({**plain, "source_sha256": digest})
    write_json(json_path, gt.to_json())
    return json_path


def convert_revisited_gnd(
    pickle_path: str | os.PathLike[str],
    json_path: str | os.PathLike[str],
    *,
    sha256: str | Sequence[str],
    limits: PickleLimits = DEFAULT_LIMITS,
) -> Path:
    """Convert a revisited ``gnd_*.pkl`` to JSON once: verify its sha256, unpickle restrictedly, write atomically.

    Parameters
    ----------
    pickle_path
        The downloaded ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl``.
    json_path
        Where the JSON goes. When it already holds a valid conversion of the same source sha256, nothing is
        unpickled again.
    sha256
        The accepted sha256 (or several); required. Without a published one, see :func:`revisited_ground_truth`
        (pins).
    limits
        Caps on file size, array size, element count and depth.

    Raises
    ------
    ChecksumError
        The bytes do not match ``sha256`` (nothing is unpickled).
    UnsafePickleError, PickleLimitError
        A disallowed global, or more than ``limits`` allows; nothing is written.
    """
    accepted = [sha256.lower()] if isinstance(sha256, str) else [s.lower() for s in sha256]
    if not accepted:
        raise ValueError(f"no sha256 to verify {pickle_path} against: pass sha256=... (or pin the file)")
    pickle_path, json_path = Path(pickle_path), Path(json_path)
    data = _read_capped(pickle_path, limits)
    digest = sha256_bytes(data)
    if digest not in accepted:
        raise ChecksumError(str(pickle_path), accepted, digest)
    if _cached_json(json_path, digest) is not None:
        return json_path  # converted before from this very file
    return _convert_bytes(data, digest, pickle_path, json_path, limits)


def load_revisited_gnd(json_path: str | os.PathLike[str]) -> RevisitedGroundTruth:
    """Read ground truth written by :func:`convert_revisited_gnd` (validated: indices in range)."""
    return RevisitedGroundTruth.from_json(json.loads(Path(json_path).read_text(encoding="utf-8")))


def revisited_ground_truth(
    name: str,
    pickle_path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    limits: PickleLimits = DEFAULT_LIMITS,
) -> RevisitedGroundTruth:
    """The verified ground truth of ``roxford5k`` / ``rparis6k`` from its pickle, converted once per source hash.

    Parameters
    ----------
    name
        Manifest entry (``"roxford5k"`` or ``"rparis6k"``); its file ``<name>/gnd_<name>.pkl``.
    pickle_path
        The local pickle.
    sha256
        Expected sha256; default: the manifest's, else the user's pin. With neither, the file is refused
        (:class:`~bobkit.data.errors.UnverifiedFileError` giving its hash and the pin command) unless
        ``$BOB_PIN_UNVERIFIED`` is set.
    limits
        See :class:`PickleLimits`.
    """
    from bobkit.data.manifest import load_manifest

    pickle_path = Path(pickle_path)
    if not pickle_path.is_file():
        raise MissingDataError(f"{pickle_path} not found: download it from "
                               f"http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/gnd_{name}.pkl")
    data = _read_capped(pickle_path, limits)
    digest = sha256_bytes(data)
    if sha256 is not None:
        if digest != sha256.lower():
            raise ChecksumError(str(pickle_path), [sha256.lower()], digest)
    else:
        entry = load_manifest().entry(name)
        V.check_digest(pickle_path, digest, entry, entry.file(f"gnd_{name}.pkl"), required=True)
    json_path = paths.data_cache_dir() / "revisited" / f"gnd_{name}.json"
    cached = _cached_json(json_path, digest)
    if cached is not None:
        return cached
    return load_revisited_gnd(_convert_bytes(data, digest, pickle_path, json_path, limits))
