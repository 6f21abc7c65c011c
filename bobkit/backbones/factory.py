"""Building backbones from their registry entries: models, data configs, weight identities, tables."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from bobkit.backbones import checkpoints as C
from bobkit.backbones import weights as W
from bobkit.backbones.lookup import get_backbone, list_backbones
from bobkit.backbones.registry import Backbone
from bobkit.backbones.weights import UnsupportedBackboneError, WeightsUnavailableError
from bobkit.data.verify import file_digest
from bobkit.utils.files import source_fingerprint

__all__ = [
    "create_model",
    "data_config",
    "weights_id",
    "is_available_offline",
    "registry_table",
    "metadata_frame",
    "prepare_weights",
]

# Families whose timm constructors take ``img_size`` (position embeddings / windows depend on it).
_IMG_SIZE_FAMILIES = ("ViT", "hierarchical-ViT")
# Files timm may fetch for one hub id, most likely first.
_HUB_FILENAMES = ("model.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                  "pytorch_model.bin")


# --------------------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------------------


def _unsupported(entry: Backbone) -> UnsupportedBackboneError:
    where = f" Weights: {entry.weights_ref}." if entry.weights_ref else ""
    return UnsupportedBackboneError(
        f"backbone {entry.name!r} ({entry.display_name}) is registered for its metadata but not supported yet: "
        f"it needs {entry.requires}.{where}"
    )


def _timm_cfg(timm_name: str) -> Any:
    """timm's ``PretrainedCfg`` for ``arch.tag`` (or the architecture's default), None when timm has none."""
    import timm

    try:
        return timm.models.get_pretrained_cfg(timm_name)
    except RuntimeError:  # timm raises for an unknown tag of a known architecture
        return None


def _hub_cached(entry: Backbone) -> Path | None:
    """The timm hub weights of ``entry`` when already in a local cache (no network)."""
    cfg = _timm_cfg(entry.timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        found = W.hf_cached_file(cfg.hf_hub_id, [*names, *_HUB_FILENAMES])
        if found is not None:
            return found
    if cfg.url:  # timm falls back to torch.hub's cache for URL-only weights
        legacy = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if legacy.is_file():
            return legacy
    return None


def _meta_model_factory(entry: Backbone) -> Any:
    """Builds the target architecture on the meta device: key names and shapes without allocating weights."""
    import timm

    def factory() -> nn.Module:
        with torch.device("meta"):
            return timm.create_model(entry.timm_model, pretrained=False, **dict(entry.model_kwargs))

    return factory


def _classifier_prefixes(entry: Backbone) -> tuple[str, ...]:
    """Key prefixes of the classifier named by the timm pretrained config (``fc.``, ``head.fc.``, ``head.``)."""
    classifier = _pretrained_cfg(entry).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{c}." for c in names)


def _source_file(entry: Backbone, weights_file: str | Path | None) -> tuple[Path | None, bool]:
    """The original checkpoint to convert and whether the user named it explicitly (None: timm hub weights)."""
    if weights_file is not None:
        return C.explicit_file(entry, weights_file), True
    if entry.source == "file":  # a user's declared checkpoint: their choice, like weights_file=
        return C.explicit_file(entry, str(entry.weights_file)), True
    if entry.source == "packaged":
        return W.package_file(entry.package, entry.package_file), False
    source = C.find_local(entry)
    if source is not None or entry.source == "timm_hub":
        return source, False
    if W.offline_mode():
        raise WeightsUnavailableError(
            f"weights of {entry.name!r} ({entry.display_name}) come from {entry.url}, which is not available "
            f"offline. {C.how_to_supply(entry)}"
        )
    return C.download(entry), False


def _converted_file(entry: Backbone, weights_file: str | Path | None) -> tuple[Path | None, bool]:
    """The verified safetensors file (timm key names, in the cache) to load, and whether it is backbone-only.

    Every checkpoint other than timm's own hub download goes through here: packaged files are converted with
    their classifier (strict key match); user files and downloads become backbone-only files in which every
    non-classifier key must fit. So a wrong file fails loudly instead of being half-loaded by timm, whose head
    handling loads non-strictly. The source is verified (:func:`bobkit.backbones.checkpoints.open_checkpoint`)
    and read through the same open file. Returns ``(None, False)`` for timm hub entries without a local file.
    """
    source, explicit = _source_file(entry, weights_file)
    if source is None:
        return None, False
    packaged = entry.source == "packaged" and weights_file is None
    with C.open_checkpoint(entry, source, explicit=explicit) as handle:
        try:
            path = W.convert_checkpoint(
                entry.name, handle, entry.key_map if packaged else (entry.key_map or "timm_filter"),
                _meta_model_factory(entry), head_prefixes=None if packaged else _classifier_prefixes(entry),
            )
        except W.WeightsConversionError as exc:
            if entry.declared_in is None or isinstance(exc, W.WeightsVerificationError):
                raise
            raise W.WeightsConversionError(
                f"backbone {entry.name!r} (declared in {entry.declared_in}): {exc}. Is timm architecture "
                f"{entry.timm_model!r} the one the checkpoint was trained with (model_kwargs included)?") from exc
    return path, not packaged


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the weights could not be fetched" (requests' errors are OSErrors)."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import HfHubHTTPError

        errors.append(HfHubHTTPError)
    with contextlib.suppress(ImportError):  # recent huggingface_hub speaks httpx, whose errors are not OSErrors
        import httpx

        errors.append(httpx.HTTPError)
    return tuple(errors)


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for model init without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _timm_kwargs(entry: Backbone, num_classes: int, image_size: int | None, features_only: bool,
                 out_indices: Sequence[int] | None, dynamic_size: bool = False) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(entry.model_kwargs)
    if features_only:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    else:
        kwargs["num_classes"] = num_classes
    takes = entry.takes_img_size if entry.takes_img_size is not None else entry.family in _IMG_SIZE_FAMILIES
    if image_size is not None and takes:
        kwargs["img_size"] = int(image_size)  # timm resamples position embeddings on load
    if dynamic_size and takes:
        # Inputs of any height and width (detection keeps each image's aspect): position embeddings and attention
        # masks are made for the input at forward time; plain ViTs pad to a whole number of patches (ViT-L/14).
        kwargs["dynamic_img_size"] = True
        if entry.family == "ViT":
            kwargs["dynamic_img_pad"] = True
    return kwargs


def create_model(
    name: str,
    *,
    num_classes: int = 0,
    image_size: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    seed: int = 0,
    pretrained: bool = True,
    weights_file: str | Path | None = None,
    dynamic_size: bool = False,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Build a registered backbone with its pretrained weights, in eval mode.

    Parameters
    ----------
    name
        Registry name (see :func:`bobkit.backbones.backbone_names`).
    num_classes
        Classifier outputs; 0 returns the pooled feature (``model.num_features`` wide).
    image_size
        Input resolution for ViT-style backbones (position embeddings are resampled); CNNs take any size.
    features_only, out_indices
        Return timm's multi-scale feature extractor (for detection) instead of a pooled model.
    seed
        Seeds random initialisation (random-init entries, and any new head).
    pretrained
        False builds the architecture only (random init), e.g. to count parameters.
    weights_file
        A local checkpoint to use instead of the entry's source (original layout or timm names).
    dynamic_size
        ViT-style backbones accept inputs of any height and width (``image_size`` is then the size the weights
        are resampled to); without it they require exactly ``image_size`` x ``image_size``. CNNs always do.
    drop_path_rate
        Stochastic depth of the residual branches while training (timm's ``drop_path_rate``; the paper's
        fine-tuning: 0.1). Inactive in eval mode. open_clip towers do not take it (``ValueError``).

    Returns
    -------
    torch.nn.Module
        The timm model in ``eval()`` mode; call ``.train()`` to fine-tune.

    Raises
    ------
    UnknownBackboneError
        ``name`` is not registered.
    WeightsUnavailableError
        The weights cannot be found or fetched; the message names the hub id / URL / file and how to supply it.
        :class:`bobkit.backbones.weights.UnsupportedBackboneError` (a subclass) for entries without a loader yet.
    """
    import timm

    entry = get_backbone(name)
    if entry.source == "unsupported":
        raise _unsupported(entry)
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate={drop_path_rate!r} must be in [0, 1)")
    if entry.source == "open_clip":
        from bobkit.backbones import openclip

        if drop_path_rate:
            raise ValueError(f"drop_path_rate={drop_path_rate!r}: the open_clip tower of {name!r} has no drop-path; "
                             "use 0 for this backbone")

        return openclip.build_tower(entry, num_classes=num_classes, image_size=image_size, seed=seed,
                                    pretrained=pretrained, features_only=features_only)
    kwargs = _timm_kwargs(entry, num_classes, image_size, features_only, out_indices, dynamic_size)
    if drop_path_rate:  # only when set: every timm classifier takes it, not every model a registry entry names
        kwargs["drop_path_rate"] = float(drop_path_rate)
    load = pretrained and entry.source != "random"
    timm_name: str = entry.timm_model  # type: ignore[assignment]
    overlay: dict[str, Any] | None = None
    if load:
        file, backbone_only = _converted_file(entry, weights_file)
        # The timm name picks the pretrained_cfg (preprocessing, head layout) the weights are loaded with.
        timm_name = (entry.timm_name if entry.source == "timm_hub" else entry.cfg_tag) or timm_name
        if file is None:  # timm_hub without a local file
            if W.offline_mode() and _hub_cached(entry) is None:
                # Fail fast and clearly instead of letting the hub client retry.
                raise WeightsUnavailableError(
                    f"weights of {entry.name!r} ({entry.display_name}) come from the Hugging Face hub "
                    f"({entry.hub_id or entry.timm_name}, timm tag {entry.timm_name}) and are not in the local "
                    f"cache; offline mode is on. {C.how_to_supply(entry)}"
                )
        overlay = dict(entry.cfg_overlay)
        if file is not None:
            overlay["file"] = str(file)
        if backbone_only:
            overlay["num_classes"] = 0  # timm then loads strictly when num_classes=0, else adds a fresh head
    with _seeded(seed):
        try:
            model = timm.create_model(timm_name, pretrained=load, pretrained_cfg_overlay=overlay, **kwargs)
        except _network_errors() as exc:
            if not load:
                raise
            raise WeightsUnavailableError(
                f"could not load weights of {entry.name!r} ({entry.weights_ref}): {type(exc).__name__}: {exc}. "
                f"{C.how_to_supply(entry)}"
            ) from exc
        except RuntimeError as exc:
            if overlay is None or "file" not in overlay or "state_dict" not in str(exc):
                raise
            # A local file whose keys or shapes do not fit: name the file, not just timm's traceback.
            raise W.WeightsConversionError(
                f"checkpoint {overlay['file']} does not fit backbone {entry.name!r} ({timm_name}): {exc}"
            ) from exc
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Preprocessing and identity
# --------------------------------------------------------------------------------------------------------------


def _pretrained_cfg(entry: Backbone) -> dict[str, Any]:
    """The timm pretrained config the entry's preprocessing starts from, with the entry's overlay applied."""
    base: dict[str, Any] = {}
    ref = entry.cfg_tag or entry.timm_name
    if ref is not None:
        cfg = _timm_cfg(ref) or _timm_cfg(ref.split(".", 1)[0])
        if cfg is not None:
            base = cfg.to_dict()
    base.update(entry.cfg_overlay)
    return base


def data_config(name: str, image_size: int | None = None) -> dict[str, Any]:
    """Preprocessing of a backbone from its own pretrained config (timm's ``resolve_data_config``).

    Parameters
    ----------
    name
        Registry name.
    image_size
        Overrides ``input_size`` to ``(3, image_size, image_size)``; crop_pct, mean, std stay the model's.

    Returns
    -------
    dict
        ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``.
    """
    from timm.data import resolve_data_config

    args: dict[str, Any] = {}
    if image_size is not None:
        args["input_size"] = (3, int(image_size), int(image_size))
    return resolve_data_config(args, pretrained_cfg=_pretrained_cfg(get_backbone(name)))


def weights_id(name: str, seed: int = 0, weights_file: str | Path | None = None) -> str:
    """A stable identity of the weights :func:`create_model` would load, for cache keys.

    ``random_init-seed{seed}`` for random init; ``packaged-sha256:<16 hex>`` of the shipped file; the sha256 prefix
    of a local file (``weights_file``, one in ``$BOB_WEIGHTS_DIR`` or the manifest's download); else the timm hub
    tag or the source URL. Converted files add the converter's code fingerprint (``+conv<12 hex>``), so a change
    to a key map changes the key of every cache built from its output. Never touches the network.
    """
    entry = get_backbone(name)
    if entry.source == "random":
        return f"random_init-seed{seed}"
    if entry.source == "packaged" and weights_file is None:
        return f"packaged-sha256:{(entry.package_sha256 or '')[:16]}+conv{W.converter_version()}"
    weights_file = weights_file if weights_file is not None else entry.weights_file
    local = C.explicit_file(entry, weights_file) if weights_file is not None else C.find_local(entry)
    if entry.source == "open_clip":
        from bobkit.backbones import openclip

        code = source_fingerprint(openclip)  # the key map of open_clip checkpoints lives there
        return (f"open_clip-file-sha256:{file_digest(local)[:16]}+{code}" if local is not None
                else f"open_clip:{entry.open_clip_model}/{entry.open_clip_pretrained}+{code}")
    if local is not None:
        return f"file-sha256:{file_digest(local)[:16]}+conv{W.converter_version()}"
    if entry.source == "timm_hub":
        return f"timm:{entry.timm_name}"
    return f"url:{entry.url}" if entry.url else f"unsupported:{entry.name}"


def is_available_offline(name: str) -> bool:
    """Whether :func:`create_model` can load this backbone without network access (checks local files only)."""
    entry = get_backbone(name)
    if entry.source == "random":
        return True
    if entry.source == "unsupported":
        return False
    if entry.source == "packaged":
        try:
            W.package_file(entry.package, entry.package_file)
        except WeightsUnavailableError:
            return False
        return True
    if entry.weights_file is not None:
        return Path(entry.weights_file).is_file()
    if entry.source == "open_clip":
        return False  # hub weights that open_clip downloads
    local = C.find_local(entry)
    if local is not None:
        return C.is_verified(entry, local)
    return entry.source == "timm_hub" and _hub_cached(entry) is not None


def prepare_weights(name: str) -> None:
    """Find, verify and convert the backbone's local checkpoint now (cached), without building the model.

    ``file`` entries (a user's checkpoint) are key-checked against their timm architecture, ``open_clip`` ones
    with a file against the image tower; a checkpoint that does not fit raises
    :class:`~bobkit.backbones.weights.WeightsConversionError` naming its missing and unexpected keys. Other
    sources have nothing to prepare offline.
    """
    entry = get_backbone(name)
    if entry.source == "open_clip" and entry.weights_file:
        from bobkit.backbones import openclip

        openclip.check_checkpoint(entry)
    elif entry.source == "file":
        _converted_file(entry, None)


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------

#: Columns of :func:`metadata_frame`, in order.
METADATA_COLUMNS = ("name", "display_name", "architecture", "family", "method", "method_kind", "pretrain_data",
                    "pretrain_images", "params_millions", "timm_model", "source", "weights", "feature",
                    "paper_name")


def metadata_frame() -> pd.DataFrame:
    """One row per registered backbone with its metadata (joined onto results by ``name`` = ``backbone``)."""
    rows = [
        {
            "name": b.name, "display_name": b.display_name, "architecture": b.architecture, "family": b.family,
            "method": b.method, "method_kind": b.method_kind, "pretrain_data": b.pretrain_data,
            "pretrain_images": b.pretrain_images, "params_millions": b.params_millions, "timm_model": b.timm_model,
            "source": b.source, "weights": b.weights_ref, "feature": b.feature, "paper_name": b.paper_name,
        }
        for b in list_backbones()
    ]
    frame = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    frame["pretrain_images"] = frame["pretrain_images"].astype("Int64")
    frame["params_millions"] = frame["params_millions"].astype("Float64")
    return frame


def registry_table() -> pd.DataFrame:
    """The short listing ``bob backbones`` prints.

    Columns: ``name``, ``family``, ``method``, ``data``, ``params (M)``, ``available offline`` ("yes" / "no").
    """
    rows = [
        {
            "name": b.name, "family": b.family, "method": b.method, "data": b.pretrain_data,
            "params (M)": b.params_millions,
            "available offline": "yes" if is_available_offline(b.name) else "no",
        }
        for b in list_backbones()
    ]
    frame = pd.DataFrame(rows, columns=["name", "family", "method", "data", "params (M)", "available offline"])
    frame["params (M)"] = frame["params (M)"].astype("Float64")
    return frame
