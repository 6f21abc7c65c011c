"""Data: the manifest (sources, checksums, licences), dataset builders and preprocessing.

Public API
----------
- manifest: :func:`load_manifest`, :class:`Manifest`, :func:`resolve`, :func:`resolve_dir`, :func:`download`,
  :func:`status`, :func:`data_dirs`
- datasets: :func:`get_dataset`, :class:`ImageDataset`, :func:`low_shot`, :func:`stratified_indices`,
  :func:`dataset_names`, :func:`dataset_info`, :data:`DATASETS`
- verification: :func:`pin` (trust a file that has no published hash), :func:`pins`; see :mod:`bobkit.data.verify`
- user datasets: image folders, CSV lists and COCO folders declared in YAML (a grid's ``datasets:`` section or a
  ``$BOB_REGISTRY`` file) join :func:`dataset_names` / :func:`get_dataset`; see :mod:`bobkit.data.user`,
  :mod:`bobkit.data.declarations` (:class:`DeclarationError`) and :mod:`bobkit.data.images` (decoding any image,
  :class:`UnreadableImageError`)
- errors: :class:`UnknownDatasetError`, :class:`UnknownSplitError`, :class:`MissingDataError`,
  :class:`ChecksumError`, :class:`UnverifiedFileError`, :class:`DownloadError`, :class:`DownloadSizeError`,
  :class:`DiskFullError`, :class:`ManifestError`
- preprocessing lives in :mod:`bobkit.data.transforms` (imports torch / torchvision on use).
"""

from bobkit.data.datasets import (
    DATASETS,
    DEFAULT_STORAGE_SIZE,
    DatasetInfo,
    ImageDataset,
    clear_cache,
    dataset_info,
    dataset_names,
    datasets_frame,
    get_dataset,
    low_shot,
    stratified_indices,
)
from bobkit.data.declarations import DeclarationError
from bobkit.data.errors import (
    ChecksumError,
    DataError,
    DiskFullError,
    DownloadError,
    DownloadSizeError,
    ManifestError,
    MissingDataError,
    UnknownDatasetError,
    UnknownSplitError,
    UnverifiedFileError,
)
from bobkit.data.images import UnreadableImageError
from bobkit.data.inventory import status
from bobkit.data.manifest import (
    Entry,
    FileSpec,
    Manifest,
    copy_into_data_dir,
    data_dirs,
    default_manifest_path,
    download,
    file_sha256,
    load_manifest,
    pin,
    resolve,
    resolve_dir,
)
from bobkit.data.verify import pins

__all__ = [
    "DATASETS", "DEFAULT_STORAGE_SIZE", "DatasetInfo", "ImageDataset", "clear_cache", "dataset_info",
    "dataset_names", "datasets_frame", "get_dataset", "low_shot", "stratified_indices",
    "ChecksumError", "DataError", "DeclarationError", "UnreadableImageError", "DiskFullError", "DownloadError", "DownloadSizeError", "ManifestError",
    "MissingDataError", "UnknownDatasetError", "UnknownSplitError", "UnverifiedFileError",
    "Entry", "FileSpec", "Manifest", "copy_into_data_dir", "data_dirs", "default_manifest_path", "download",
    "file_sha256", "load_manifest", "resolve", "resolve_dir", "status",
    "pin", "pins",
]
