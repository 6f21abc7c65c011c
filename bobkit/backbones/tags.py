"""timm model names -> metadata: the architecture prefix gives the family, the tag after the dot the pretraining.

``convnext_base.fb_in22k_ft_in1k`` is a CNN pretrained (supervised) on ImageNet-22k, ``vit_base_patch16_clip_224.
laion2b_ft_in12k_in1k`` a ViT pretrained with CLIP on LAION-2B, ``resnet50.fb_swsl_ig1b_ft_in1k`` semi-weakly
supervised on Instagram-1B. :func:`parse_timm_name` reads both parts; every rule is data (the tables below).
"""

from __future__ import annotations

import math
import re

#: Ordered (regex on the architecture, family) rules; first match wins. Hybrids that mix convolution and attention
#: in every stage, MLP-only and recurrent models are ``other``.
FAMILY_RULES: tuple[tuple[str, str], ...] = (
    (r"^test_", "other"),
    # hierarchical (multi-stage, downsampling) transformers
    (r"^(swin|swinv2|swinv2_cr|pvt_v2|twins|mvitv2|nest|davit|gcvit|hiera|pit|tiny_vit)(_|$)", "hierarchical-ViT"),
    # hybrids and attention-augmented CNNs
    (r"^(coatnet|coatnext|coat|maxvit|maxxvit|maxxvitv2|levit|mobilevit|mobilevitv2|efficientformer|efficientformerv2|"
     r"fastvit|nextvit|edgenext|efficientvit|swiftformer|visformer|shvit|caformer|botnet|sebotnet|halonet|sehalonet|"
     r"halo2botnet|lamhalobotnet|haloregnetz|lambda_resnet|bat_resnext|focalnet|eca_botnext|eca_halonext)", "other"),
    # MLP / recurrent / pooling mixers
    (r"^(mixer|gmixer|gmlp|resmlp|sequencer2d|sequencer|poolformer|poolformerv2)(_|$)", "other"),
    # plain (isotropic) transformers, including hybrid-stem ViTs
    (r"^(vit|deit|deit3|cait|beit|beitv2|beit3|eva|eva02|flexivit|naflexvit|xcit|crossvit|tnt|convit|volo|samvit)(_|$)", "ViT"),
    # convolutional networks
    (r"^(resnet|resnetv2|resnetaa|resnetblur|resnetrs|resnext|wide_resnet|seresnet|seresnext|seresnextaa|ecaresnet|"
     r"ecaresnetlight|gcresnet|gcresnext|skresnet|skresnext|resnest|res2net|res2next|regnet|convnext|convnextv2|"
     r"efficientnet|efficientnetv2|tf_|mobilenet|mobilenetv2|mobilenetv3|mobilenetv4|mobileone|mnasnet|semnasnet|"
     r"spnasnet|fbnet|tinynet|lcnet|hardcorenas|ghostnet|ghostnetv2|ghostnetv3|repghostnet|repvgg|repvit|vgg|densenet|"
     r"densenetblur|dla|dpn|hrnet|inception|xception|legacy_|nasnetalarge|pnasnet|senet|selecsls|rexnet|rexnetr|"
     r"cspdarknet|cspresnet|cspresnext|cs3|darknet|darknetaa|ese_vovnet|vovnet|tresnet|gernet|nf_|nfnet|dm_nfnet|"
     r"eca_|gc_|convmixer|convformer|mambaout|starnet|fasternet|rdnet|hgnet|hgnetv2|mixnet|mixnet_|bat_|cs3)", "CNN"),
)

#: Images in each pretraining dataset named in timm tags (approximate public figures; ``None`` unknown).
DATASET_IMAGES: dict[str, float] = {
    "in1k": 1.281167e6,
    "in12k": 12.0e6,  # timm's ImageNet-12k: the 11,821 ImageNet-22k classes with >= 1 image, about 12M images
    "in21k": 14.2e6,
    "in22k": 14.2e6,
    "jft300m": 300e6,
    "ig1b": 940e6,
    "ig3.6b": 3.6e9,
    "yfcc100m": 100e6,
    "laion2b": 2.32e9,
    "laiona": 900e6,
    "laion400m": 400e6,
    "openai": 400e6,
    "webli": 10e9,
    "m38m": 38e6,
    "m30m": 30e6,
    "ssld6m": 6e6,
    "sa1b": 11e6,
    "lvd142m": 142e6,
    "dfn2b": 2e9,
    "datacompxl": 12.8e9,
}
_DATA_ALIASES = {"in22k": "in22k", "in21k": "in21k", "jft": "jft300m", "6m": "ssld6m"}
#: Pretraining data group of each dataset, for colouring and grouping (the paper's data axis).
DATA_GROUPS: dict[str, str] = {
    "in1k": "ImageNet-1k",
    "in12k": "ImageNet-21k/12k",
    "in21k": "ImageNet-21k/12k",
    "in22k": "ImageNet-21k/12k",
    "ssld6m": "ImageNet-1k",
    "jft300m": "web-scale labelled (JFT/IG/YFCC)",
    "ig1b": "web-scale labelled (JFT/IG/YFCC)",
    "ig3.6b": "web-scale labelled (JFT/IG/YFCC)",
    "yfcc100m": "web-scale labelled (JFT/IG/YFCC)",
    "m38m": "merged 30-38M",
    "m30m": "merged 30-38M",
    "laion2b": "image-text (LAION/OpenAI/WebLI)",
    "laiona": "image-text (LAION/OpenAI/WebLI)",
    "laion400m": "image-text (LAION/OpenAI/WebLI)",
    "openai": "image-text (LAION/OpenAI/WebLI)",
    "webli": "image-text (LAION/OpenAI/WebLI)",
    "dfn2b": "image-text (LAION/OpenAI/WebLI)",
    "datacompxl": "image-text (LAION/OpenAI/WebLI)",
    "sa1b": "other",
    "lvd142m": "other",
}

# tag token -> (method, method_kind); checked on the pretraining part of the tag (before the first ``ft``).
_METHOD_TOKENS: dict[str, tuple[str, str]] = {
    "mae": ("MAE", "SSL"),
    "fcmae": ("FCMAE", "SSL"),
    "mim": ("MIM", "SSL"),
    "dino": ("DINO", "SSL"),
    "dinov2": ("DINOv2", "SSL"),
    "ibot": ("iBOT", "SSL"),
    "moco": ("MoCo", "SSL"),
    "mocov3": ("MoCo v3", "SSL"),
    "simclr": ("SimCLR", "SSL"),
    "seer": ("SEER (SwAV)", "SSL"),
    "clip": ("CLIP", "vision-language"),
    "openai": ("CLIP", "vision-language"),
    "laion2b": ("CLIP", "vision-language"),
    "laiona": ("CLIP", "vision-language"),
    "laion400m": ("CLIP", "vision-language"),
    "webli": ("SigLIP", "vision-language"),
    "dfn2b": ("CLIP", "vision-language"),
    "datacompxl": ("CLIP", "vision-language"),
    "swsl": ("semi-weakly supervised", "supervised"),
    "wsl": ("weakly supervised", "supervised"),
    "swag": ("weakly supervised (SWAG)", "supervised"),
    "ssl": ("semi-supervised", "supervised"),
    "ns": ("noisy student", "supervised"),
    "ssld": ("SSLD distillation", "supervised"),
    "dist": ("distillation", "supervised"),
    "distilled": ("distillation", "supervised"),
    "adv": ("adversarial training", "supervised"),
    "ap": ("AdvProp", "supervised"),
}
#: (regex on the whole tag, data token) for tags whose pretraining data is implied rather than named: SWAG models
#: (``.swag_ft_in1k``, ``.swag_lc_in1k``: fine-tuned or linear classifier on IN-1k) pretrain on Instagram-3.6B;
#: PaddlePaddle's SSLD stage-2 models (``.ssld_stage2_ft_in1k``) continue from stage 1 on ImageNet-22k.
IMPLIED_DATA: tuple[tuple[str, str], ...] = (
    (r"(^|_)swag(_|$)", "ig3.6b"),
    (r"(^|_)ssld_stage2(_|$)", "in22k"),
)
# architecture prefix -> (method, method_kind) for families that are self-supervised whatever the tag says.
_ARCH_METHODS: tuple[tuple[str, tuple[str, str]], ...] = (
    (r"^beit3", ("BEiT-3 (multimodal MIM)", "SSL")),
    (r"^beitv2", ("BEiT v2 (MIM)", "SSL")),
    (r"^beit", ("BEiT (MIM)", "SSL")),
    (r"^eva02", ("EVA-02 (MIM)", "SSL")),
    (r"^eva_", ("EVA (MIM)", "SSL")),
)

#: Pretraining strings of timm's ``model_metadata-in1k.csv`` -> (data token, method, method_kind).
METADATA_PRETRAIN: dict[str, tuple[str, str, str]] = {
    "in1k": ("in1k", "supervised", "supervised"),
    "in1k-dist": ("in1k", "distillation", "supervised"),
    "in1k-ap": ("in1k", "AdvProp", "supervised"),
    "in1k-adv": ("in1k", "adversarial training", "supervised"),
    "in21k": ("in21k", "supervised", "supervised"),
    "in21k-selfsl": ("in21k", "BEiT (MIM)", "SSL"),
    "jft300m-ns": ("jft300m", "noisy student", "supervised"),
    "yfc-semisl": ("yfcc100m", "semi-supervised", "supervised"),
    "ig1b-swsl": ("ig1b", "semi-weakly supervised", "supervised"),
    "ig1b-wsl": ("ig1b", "weakly supervised", "supervised"),
}


def architecture_family(architecture: str) -> str:
    """Family (``CNN`` | ``ViT`` | ``hierarchical-ViT`` | ``other``) of a timm architecture name (before the dot)."""
    arch = architecture.split(".")[0].lower()
    for pattern, family in FAMILY_RULES:
        if re.match(pattern, arch):
            return family
    return "other"


def _data_token(token: str) -> str | None:
    token = _DATA_ALIASES.get(token, token)
    if token in DATASET_IMAGES:
        return token
    if token in {"ig", "ig1b"}:
        return "ig1b"
    return None


def parse_timm_tag(tag: str | None, architecture: str = "") -> dict[str, object]:
    """Pretraining data, its size and the method encoded in a timm pretrained tag.

    The tag is split at the first ``ft``: tokens before it describe pretraining, tokens after it the fine-tuning
    chain (``laion2b_ft_in12k_in1k``: CLIP on LAION-2B, fine-tuned on ImageNet-12k then ImageNet-1k). The pretraining
    data is the largest dataset anywhere in the chain (the data that shaped the representation most); when the
    pretraining part names no dataset, the first fine-tuning dataset stands in (``fcmae_ft_in22k_in1k`` -> in22k), and a
    chain naming none is ImageNet-1k. Methods come from known tokens (``mae``, ``clip``, ``swsl``, ...), then from the
    architecture (BEiT, EVA are masked-image-modelling SSL), else ``supervised``.

    Returns
    -------
    dict with ``tag``, ``pretrain_data`` (token such as ``in22k``, ``laion2b``; ``unknown`` when a method names no
    data), ``pretrain_data_group``, ``pretrain_images`` (float, NaN unknown), ``method``, ``method_kind``,
    ``finetune_chain`` (``in12k>in1k``).
    """
    tag = (tag or "").lower()
    tokens = [t for t in tag.split("_") if t]
    if "ft" in tokens:
        cut = tokens.index("ft")
        pre, post = tokens[:cut], tokens[cut + 1:]
    else:
        pre, post = tokens, []
    # split glued tokens such as ``in1k`` in ``mae_in1k`` (already separate) or ``ig1b`` inside ``fb_swsl_ig1b``
    pre_data = [d for d in (_data_token(t) for t in pre) if d]
    post_data = [d for d in (_data_token(t) for t in post) if d]
    method, kind = None, None
    for t in pre:
        if t in _METHOD_TOKENS:
            candidate = _METHOD_TOKENS[t]
            # a data-only token (openai, laion2b) names CLIP only when no more specific method token is present
            if method is None or (kind == "vision-language" and candidate[1] != "vision-language"):
                method, kind = candidate
    if method is None:
        for pattern, (m, k) in _ARCH_METHODS:
            if re.match(pattern, architecture.lower()):
                method, kind = m, k
                break
    if method is None and ("ns" in tokens or "jft" in tokens):
        method, kind = _METHOD_TOKENS["ns"]
    if method is None:
        method, kind = "supervised", "supervised"
    if method == "SEER (SwAV)" and not pre_data:
        pre_data = ["ig1b"]
    pre_data += [data for pattern, data in IMPLIED_DATA if re.search(pattern, tag)]
    chain = pre_data + post_data
    if pre_data:
        candidates = chain
    elif kind == "vision-language" and "clip" in pre:
        candidates = []  # e.g. eva_giant .clip_ft_in1k: CLIP pretraining on unnamed data
    elif post_data:
        candidates = [post_data[0]]
        if len(post_data) > 1:
            candidates = chain
    else:
        candidates = ["in1k"]
    if candidates:
        data = max(candidates, key=lambda d: DATASET_IMAGES.get(d, 0.0))
        images = float(DATASET_IMAGES.get(data, math.nan))
        group = DATA_GROUPS.get(data, "other")
    else:
        data, images, group = "unknown", math.nan, "unknown"
    return {
        "tag": tag,
        "pretrain_data": data,
        "pretrain_data_group": group,
        "pretrain_images": images,
        "method": method,
        "method_kind": kind,
        "finetune_chain": ">".join(post_data),
    }


def parse_timm_name(model: str) -> dict[str, object]:
    """Metadata of a timm model name ``arch.tag``: architecture, family and :func:`parse_timm_tag`'s fields."""
    arch, _, tag = model.partition(".")
    info = {"architecture": arch, "family": architecture_family(arch)}
    info.update(parse_timm_tag(tag or None, arch))
    return info


