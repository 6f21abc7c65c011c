"""Every architecture of a grid at the cells' real input sizes, on the meta device: the real modules' code and
shape logic (position-embedding resampling, window partitions, strides, feature levels, layer-decay groups,
optimizer step), with tensors that have shapes but no data, so ViT-L at 1024 x 1376 costs nothing.

Per architecture group (:class:`~bobkit.rehearsal.groups.ArchGroup`):

* every backbone of the group: its weights have a known source (a timm tag with a hub id or URL, a manifest
  weights entry, an installed package) and its data config resolves;
* ``frozen``: pooled features of a 2-image batch at ``image_size``, and the input gradient through a linear head
  (what the robustness attacks take);
* ``finetune``: the classifier with the group's widest head, AdamW with the grid's layer decay, one
  forward/backward/step;
* ``detect`` / ``detect-frozen``: the task's own Mask R-CNN (:func:`bobkit.tasks.detector.build_detector`), its
  transform resizing and padding a typical image of the dataset, the trunk + FPN forward (and backward through
  what trains).
"""

from __future__ import annotations

import importlib.util

import torch

from bobkit import backbones
from bobkit.rehearsal.groups import ArchGroup

#: (width, height) of typical images of the detection datasets: their aspect decides the padded input geometry.
TYPICAL_IMAGE_SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "coco2017": ((640, 480), (480, 640)),  # landscape and portrait photos
    "sim10k": ((1914, 1052),),
    "cityscapes": ((2048, 1024),),
}
META = torch.device("meta")


def weights_problem(name: str) -> str | None:
    """Why the weights of backbone ``name`` could not be obtained by a real run (None: a source is known)."""
    import timm

    entry = backbones.get_backbone(name)
    if entry.source == "unsupported":
        return f"{name} is registered but has no loader: it needs {entry.requires}"
    if entry.source == "timm_hub":
        try:
            cfg = timm.models.get_pretrained_cfg(entry.timm_name, allow_unregistered=False)
        except RuntimeError:
            cfg = None
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            return f"timm {timm.__version__} has no pretrained weights {entry.timm_name!r} (backbone {name})"
    if entry.source == "url":
        from bobkit.data.manifest import load_manifest

        manifest = load_manifest()
        if entry.weights_entry not in manifest or manifest.entry(entry.weights_entry).files[0].url != entry.url:
            return f"{name}: no data_manifest.yaml weights entry {entry.weights_entry!r} with URL {entry.url}"
    if entry.source == "packaged" and importlib.util.find_spec(str(entry.package)) is None:
        return f"{name}: package {entry.package!r} with its weights is not installed"
    return None


def check_arch_group(group: ArchGroup, twin: dict[str, str]) -> None:
    """Run the group's checks; raise the first error (its message names the backbone where that helps).

    ``twin`` maps each backbone to its random-weight twin (same architecture and data config, no weights).
    """
    for name in group.backbones:
        problem = weights_problem(name)
        if problem:
            raise RuntimeError(problem)
        backbones.data_config(name, image_size=group.image_size)
    model_name = twin[group.backbones[0]]
    if group.detection:
        check_detection(model_name, group.image_size, group.dataset or "", train="detect" in group.uses)
    else:
        check_classifier(model_name, group.image_size, group.num_classes, group.layer_decay,
                         finetune="finetune" in group.uses)


def check_classifier(backbone: str, image_size: int, num_classes: int, layer_decay: float | None,
                     *, finetune: bool) -> None:
    """Fine-tuning step (optional) and frozen features + input gradient of ``backbone`` at ``image_size``."""
    import timm.optim

    with META:
        model = backbones.create_model(backbone, num_classes=num_classes if finetune else 0, image_size=image_size)
    x = torch.empty(2, 3, image_size, image_size, device=META)
    if finetune:
        optimizer = timm.optim.create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05,
                                                   layer_decay=layer_decay)
        logits = model.train()(x)
        _expect(tuple(logits.shape) == (2, num_classes), f"logits of shape {tuple(logits.shape)}, "
                                                          f"expected (2, {num_classes})")
        logits.float().logsumexp(1).mean().backward()
        optimizer.step()
        model.reset_classifier(0)
    features = model.eval()(x.requires_grad_(True))
    _expect(features.ndim == 2 and features.shape[0] == 2, f"pooled features of shape {tuple(features.shape)}")
    head = torch.nn.Linear(features.shape[1], num_classes, device=META)
    head(features).sum().backward()
    _expect(x.grad is not None and x.grad.shape == x.shape, "no input gradient for the attacks")


def detector_size(dataset: str, image_size: int) -> tuple[int, int]:
    """Short side and long-side cap of the detector's transform, as :func:`bobkit.tasks.detection.run` sets them."""
    from bobkit.data import scenes

    return (image_size, image_size) if dataset in scenes.SCENE_DATASETS else (image_size, round(image_size * 1333 / 800))


def check_detection(backbone: str, image_size: int, dataset: str, *, train: bool) -> None:
    """The detector's transform + trunk + FPN on typical images of ``dataset`` at the real input size."""
    from bobkit.tasks.detector import build_detector

    size, max_size = detector_size(dataset, image_size)
    protocol = "finetune" if train else "frozen"
    with META:
        model = build_detector(backbone, protocol, 2, image_size=size, max_size=max_size, masks=True)
    model.train()
    for width, height in TYPICAL_IMAGE_SHAPES.get(dataset, ((size, size),)):
        images, _ = model.transform([torch.empty(3, height, width, device=META)])
        pyramid = model.backbone(images.tensors)
        _expect(len(pyramid) >= 4, f"{len(pyramid)} pyramid levels")
        if train:
            sum(level.sum() for level in pyramid.values()).backward()


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise AssertionError(problem)

