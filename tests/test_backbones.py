"""The backbone registry: catalog coverage, metadata, offline weights with real predictions, errors, seeding."""

from __future__ import annotations

import csv
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub miss must fail in seconds, never wait on the network

import bobkit.backbones as B  # noqa: E402
import bobkit.data as bd  # noqa: E402
from bobkit.backbones import weights as W  # noqa: E402
from bobkit.utils.files import sha256_file  # noqa: E402

torch.set_num_threads(2)

PACKAGED = ["tf_efficientnet_lite0.packaged_in1k", "tf_efficientnet_lite2.packaged_in1k",
            "mobilenetv2_100.packaged_tv_in1k"]
RANDOM_CONTROLS = ["resnet18.random_init", "convnext_atto.random_init", "vit_tiny_patch16_224.random_init"]
CAT_IDS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_IDS = {967, 968, 504}  # espresso, cup, coffee mug
CATALOG = Path(B.__file__).resolve().parents[1] / "reference" / "bob" / "backbones.csv"  # ships with bobkit


def _photos(name: str) -> torch.Tensor:
    """skimage's chelsea (a cat) and coffee (an espresso), preprocessed with the backbone's own data config."""
    import skimage.data
    from PIL import Image
    from timm.data import create_transform

    transform = create_transform(**B.data_config(name))
    return torch.stack([transform(Image.fromarray(img)) for img in (skimage.data.chelsea(), skimage.data.coffee())])


@pytest.fixture(scope="module", params=PACKAGED)
def packaged_classifier(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    """Each packaged backbone with its ImageNet head, converted once per module."""
    return request.param, B.create_model(request.param, num_classes=1000)


# ----------------------------------------------------------------------------------------------------------------
# Registry contents and metadata
# ----------------------------------------------------------------------------------------------------------------


def test_registry_covers_every_row_of_the_paper_catalog() -> None:
    with CATALOG.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 49
    covered = {b.paper_name for b in B.list_backbones()}
    missing = [row["name"] for row in rows if row["name"] not in covered]
    assert not missing, f"catalog rows without a registry entry: {missing}"
    # Kinds agree with the catalog where it states one of ours.
    by_paper = {b.paper_name: b for b in B.list_backbones() if b.paper_name and b.source != "unsupported"}
    for row in rows:
        entry = by_paper.get(row["name"])
        if entry is not None and row["pretrain_method_kind"] in B.METHOD_KINDS:
            assert entry.method_kind == row["pretrain_method_kind"], row["name"]


def _suite_backbones(suite: str) -> list[str]:
    from bobkit.batch.grid import load_grid
    from bobkit.utils.paths import repo_root

    return sorted({c.params["backbone"] for c in load_grid(repo_root() / "params" / f"{suite}.yaml")})


def test_bob_2026_backbones_are_hosted_by_timm_with_their_catalog_rows() -> None:
    """Every backbone of bob-2026 is registered with the columns the analysis places it by (architecture, method,
    pretraining data and size, parameters); the new ones are tags timm hosts (checked offline) whose parameter
    count is the one the catalog states (timm num_classes=0, on the meta device); the anchors are paper rows."""
    import timm
    import yaml

    from bobkit.utils.paths import repo_root

    hosted = set(timm.list_models(pretrained=True))
    names = _suite_backbones("bob-2026")
    new = [n for n in names if B.get_backbone(n).paper_name is None and B.get_backbone(n).method_kind != "random"]
    assert {n.split(".")[0].split("_")[0] for n in new} == {"vit", "eva02", "convnextv2", "hiera"}
    assert len(new) == 13
    for name in names:
        entry = B.get_backbone(name)
        assert entry.architecture and entry.method and entry.pretrain_data, name
        assert entry.pretrain_images is not None and entry.params_millions, name
    for name in new:
        entry = B.get_backbone(name)
        assert entry.source == "timm_hub" and name in hosted and entry.hub_id == f"timm/{name}", name
        with torch.device("meta"):
            model = timm.create_model(entry.timm_model, pretrained=False, num_classes=0)
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(entry.params_millions, abs=0.01)
    spec = yaml.safe_load((repo_root() / "params" / "bob-2026.yaml").read_text())
    assert all(B.get_backbone(n).paper_name for n in spec["x-anchors"])


def test_bob_full_runs_the_papers_depth_generative_and_copy_detection_backbones() -> None:
    names = _suite_backbones("bob-full")
    assert {"swinv2_tiny_window16_256.midas_v3_1", "swinv2_base_window12to24_192to384.midas_v3_1",
            "sd_v1_4_encoder.laion", "sscd_resnet50.imagenet_mixup", "sscd_resnext101_32x4d.disc_large"} <= set(names)
    assert not [n for n in names if B.get_backbone(n).source == "unsupported"]


@pytest.mark.parametrize("name", B.backbone_names())
def test_entry_metadata_is_valid(name: str) -> None:
    entry = B.get_backbone(name)
    assert entry.family in B.FAMILIES
    assert entry.method_kind in B.METHOD_KINDS
    assert entry.source in B.SOURCES
    assert entry.display_name and entry.architecture and entry.method and entry.feature
    if entry.method_kind == "random":
        assert entry.pretrain_images == 0
        assert entry.name.endswith(".random_init")
    else:
        assert entry.pretrain_images is None or entry.pretrain_images >= 1_000_000
    assert entry.params_millions is None or 1 < entry.params_millions < 1000
    if entry.source == "timm_hub":
        import timm

        assert entry.timm_name in timm.list_pretrained(entry.timm_name), entry.timm_name
    if entry.timm_model is not None:
        import timm

        assert timm.is_model(entry.timm_model), entry.timm_model
    if entry.source == "unsupported":
        assert entry.requires
    cfg = B.data_config(name)
    assert cfg["input_size"][0] == 3 and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert isinstance(B.weights_id(name), str) and B.weights_id(name)


@pytest.mark.parametrize("name", [b.name for b in B.list_backbones() if b.source == "url"])
def test_url_backbones_have_a_weights_entry_with_their_url(name: str) -> None:
    """Each downloadable checkpoint is a manifest entry (where it goes, what verifies it) with the same URL."""
    entry = B.get_backbone(name)
    item = bd.load_manifest().entry(entry.weights_entry)
    assert item.kind == "weights" and item.download == "direct"
    assert item.file().url == entry.url
    # No hash is published for these files; if one is recorded later it must be a full sha256.
    assert item.file().sha256 is None or len(item.file().sha256) == 64


def test_known_timm_names_and_pretraining_sizes() -> None:
    expected = {
        "convnext_base.fb_in22k": ("supervised", 14_197_122),
        "vit_small_patch16_224.augreg_in21k_ft_in1k": ("supervised", 14_197_122),
        "swinv2_base_window12to16_192to256.ms_in22k_ft_in1k": ("supervised", 14_197_122),
        "vit_base_patch16_224.dino": ("SSL", 1_281_167),
        "vit_base_patch16_clip_224.laion2b": ("vision-language", 2_320_000_000),
        "resnet50_clip.openai": ("vision-language", 400_000_000),
        "resnet50.a1_in1k": ("supervised", 1_281_167),
        "vit_base_patch16_224.mae": ("SSL", 1_281_167),
        "samvit_base_patch16.sa1b": ("supervised", 11_000_000),
    }
    for name, (kind, images) in expected.items():
        entry = B.get_backbone(name)
        assert (entry.method_kind, entry.pretrain_images) == (kind, images), name
    assert B.get_backbone("sd_v1_4_encoder.laion").method_kind == "generative"
    assert B.get_backbone("swinv2_tiny_window16_256.midas_v3_1").method_kind == "depth"


def test_offline_entries_and_tables() -> None:
    for name in PACKAGED + RANDOM_CONTROLS:
        assert B.is_available_offline(name), name
    assert not B.is_available_offline("sd_v1_4_encoder.laion")
    assert B.get_backbone("mobilenetv2_100.tv_in1k_packaged") is B.get_backbone("mobilenetv2_100.packaged_tv_in1k")

    meta = B.metadata_frame()
    assert list(meta.columns) == list(B.METADATA_COLUMNS)
    assert len(meta) == len(B.backbone_names()) and meta["name"].is_unique
    assert meta.set_index("name").loc["resnet18.random_init", "pretrain_images"] == 0

    table = B.registry_table()
    assert list(table.columns) == ["name", "family", "method", "data", "params (M)", "available offline"]
    offline = dict(zip(table["name"], table["available offline"], strict=True))
    assert all(offline[n] == "yes" for n in PACKAGED + RANDOM_CONTROLS)
    assert offline["convnext_base.fb_in22k"] in {"yes", "no"}


def test_entries_are_frozen_and_validated() -> None:
    entry = B.get_backbone("resnet18.random_init")
    with pytest.raises(AttributeError):
        entry.family = "ViT"  # type: ignore[misc]
    with pytest.raises(TypeError):
        entry.cfg_overlay["mean"] = (0, 0, 0)  # type: ignore[index]
    with pytest.raises(ValueError, match="pretrain_images 0"):
        B.Backbone(name="x.random_init", display_name="x", architecture="x", family="CNN", method="random init",
                   method_kind="random", pretrain_data="none", pretrain_images=5, params_millions=1.0,
                   timm_model="resnet18", source="random", feature="pooled pre-logits")
    with pytest.raises(ValueError, match="family"):
        B.Backbone(name="x.y", display_name="x", architecture="x", family="MLP", method="m",
                   method_kind="supervised", pretrain_data="d", pretrain_images=1, params_millions=1.0,
                   timm_model="resnet18", source="timm_hub", timm_tag="y", feature="f")


# ----------------------------------------------------------------------------------------------------------------
# Packaged weights: strict conversion, real predictions, torchvision equivalence
# ----------------------------------------------------------------------------------------------------------------


def test_packaged_weights_predict_real_photos(packaged_classifier: tuple[str, torch.nn.Module]) -> None:
    name, model = packaged_classifier
    with torch.no_grad():
        top1 = model(_photos(name)).argmax(-1).tolist()
    assert top1[0] in CAT_IDS, f"{name}: chelsea predicted class {top1[0]}"
    assert top1[1] in COFFEE_IDS, f"{name}: coffee predicted class {top1[1]}"


@pytest.mark.parametrize("name", PACKAGED)
def test_converted_state_dict_loads_strict(name: str) -> None:
    import timm
    from safetensors.torch import load_file

    B.create_model(name)  # converts into the cache if needed
    entry = B.get_backbone(name)
    converted = sorted(Path(W.weights_cache_dir()).glob(f"{name}-*.safetensors"))
    assert converted, "conversion wrote no cache file"
    model = timm.create_model(entry.timm_model, pretrained=False)
    result = model.load_state_dict(load_file(str(converted[-1])), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    mtime = converted[-1].stat().st_mtime_ns
    B.create_model(name)
    assert converted[-1].stat().st_mtime_ns == mtime, "the cached conversion was rewritten"
    assert B.weights_id(name) == f"packaged-sha256:{entry.package_sha256[:16]}+conv{W.converter_version()}"


def test_mobilenet_matches_torchvision_logits() -> None:
    import torchvision

    name = "mobilenetv2_100.packaged_tv_in1k"
    entry = B.get_backbone(name)
    original = W.load_checkpoint(W.package_file(entry.package, entry.package_file))
    reference = torchvision.models.mobilenet_v2()
    assert not reference.load_state_dict(original, strict=True).missing_keys
    x = _photos(name)
    with torch.no_grad():
        ours = B.create_model(name, num_classes=1000)(x)
        theirs = reference.eval()(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_packaged_feature_pyramid_and_pooled_feature() -> None:
    name = "tf_efficientnet_lite0.packaged_in1k"
    x = torch.randn(1, 3, 64, 64)
    pyramid = B.create_model(name, features_only=True, out_indices=(1, 2, 3, 4))
    with torch.no_grad():
        maps = pyramid(x)
        pooled = B.create_model(name)(x)
    assert [m.shape[1] for m in maps] == pyramid.feature_info.channels()
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    assert pooled.shape == (1, 1280)


def test_packaged_sha256_is_checked(tmp_path: Path) -> None:
    bogus = tmp_path / "efficientnet.pth"
    torch.save({"w": torch.zeros(1)}, bogus)
    with pytest.raises(W.WeightsConversionError, match="sha256"):
        W.convert_checkpoint("x.y", bogus, "lukemelas_efficientnet", lambda: torch.nn.Linear(1, 1),
                             expected_sha256="0" * 64)


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(B.UnknownBackboneError, match="convnext_base.fb_in22k") as info:
        B.get_backbone("convnext_base.fb_in22")
    assert "convnext_base.fb_in22" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(B.UnknownBackboneError, match="resnet50.a1_in1k"):
        B.create_model("resnet50")  # a bare architecture points at its registered tags


def test_hub_miss_fails_fast_and_says_how_to_supply(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BOB_WEIGHTS_DIR", str(tmp_path))
    name = "convnext_base.fb_in22k"
    if B.is_available_offline(name):
        pytest.skip(f"{name} is in the local hub cache")
    start = time.monotonic()
    with pytest.raises(B.WeightsUnavailableError) as info:
        B.create_model(name)
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "timm/convnext_base.fb_in22k" in message and "BOB_WEIGHTS_DIR" in message
    assert isinstance(info.value, RuntimeError)


def test_url_backbone_offline_names_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BOB_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(B.WeightsUnavailableError, match="dl.fbaipublicfiles.com/dino"):
        B.create_model("resnet50.dino")
    assert not B.is_available_offline("resnet50.dino")


def test_unsupported_backbone_says_what_it_needs() -> None:
    entry = B.Backbone(name="future_net.x", display_name="Future net", architecture="FN", family="other",
                       method="m", method_kind="supervised", pretrain_data="d", pretrain_images=None,
                       params_millions=None, timm_model=None, source="unsupported", feature="f",
                       requires="a loader for future checkpoints", url="https://example.org/future.pt")
    B.register(entry)
    try:
        with pytest.raises(B.UnsupportedBackboneError, match="not supported yet.*future checkpoints"):
            B.create_model("future_net.x")
    finally:
        B.unregister("future_net.x")


# ----------------------------------------------------------------------------------------------------------------
# User-supplied checkpoints through a key map (MoCo v3 layout, synthetic weights)
# ----------------------------------------------------------------------------------------------------------------


def test_moco_v3_checkpoint_from_weights_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import timm

    name = "vit_small_patch16_224.mocov3"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        source = timm.create_model("vit_small_patch16_224", num_heads=12, num_classes=0)
    # float16 halves the file; timm copies it into the float32 parameters.
    state = {f"module.base_encoder.{k}": v.half() for k, v in source.state_dict().items()}
    state["module.base_encoder.head.0.weight"] = torch.zeros(4, 384)  # the MoCo projection MLP, dropped
    state["module.predictor.0.weight"] = torch.zeros(4, 4)  # the predictor, outside the encoder
    checkpoint = tmp_path / "vit-s-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state}, checkpoint)
    monkeypatch.setenv("BOB_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path / "cache"))

    # No sha256 is published for MoCo v3's file: a copy is refused (nothing unpickled) until the user pins it.
    assert not B.is_available_offline(name)
    with pytest.raises(B.WeightsVerificationError, match="bob data --pin weights_vit_small_patch16_224_mocov3"):
        B.create_model(name, image_size=64)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    bd.pin("weights_vit_small_patch16_224_mocov3", checkpoint)
    assert B.is_available_offline(name)
    assert B.weights_id(name).startswith(f"file-sha256:{sha256_file(checkpoint)[:16]}")
    model = B.create_model(name, image_size=64)
    assert model.pos_embed.shape[1] == 1 + (64 // 16) ** 2  # resampled from 14x14 on load
    torch.testing.assert_close(model.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight.half().float())
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 384)
        # The converted file is backbone-only: a classifier is added fresh (seeded), the trunk is the checkpoint's.
        classifier = B.create_model(name, num_classes=5, image_size=64, seed=1)
        assert classifier(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    torch.testing.assert_close(classifier.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight)


def test_local_file_overrides_hub_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    name = "convnext_base.fb_in22k"
    monkeypatch.setenv("BOB_WEIGHTS_DIR", str(tmp_path))
    assert B.weights_id(name) == "timm:convnext_base.fb_in22k" or B.is_available_offline(name)
    save_file({"w": torch.zeros(2)}, str(tmp_path / f"{name}.safetensors"))
    assert B.is_available_offline(name)
    digest = sha256_file(tmp_path / f"{name}.safetensors")
    assert B.weights_id(name) == f"file-sha256:{digest[:16]}+conv{W.converter_version()}"
    with pytest.raises(W.WeightsConversionError, match=f"{name}.safetensors"):
        B.create_model(name)  # the file is found and used, and its wrong keys are reported by name


def test_key_map_mismatch_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(3, 3)}}, bad)
    with pytest.raises(W.WeightsConversionError, match="missing"):
        B.create_model("resnet50.dino", weights_file=bad)


# ----------------------------------------------------------------------------------------------------------------
# Random init
# ----------------------------------------------------------------------------------------------------------------


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_random_init_is_seeded() -> None:
    name = "convnext_atto.random_init"
    a, b, c = (B.create_model(name, seed=s) for s in (0, 0, 1))
    assert torch.equal(_flat(a), _flat(b))
    assert not torch.equal(_flat(a), _flat(c))
    assert B.weights_id(name, seed=3) == "random_init-seed3"
    assert B.get_backbone(name).method_kind == "random"
    # Seeding does not disturb the caller's random stream.
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    B.create_model("resnet18.random_init", seed=5)
    assert torch.equal(torch.rand(1), expected)


def test_vit_random_init_at_64px() -> None:
    name = "vit_tiny_patch16_224.random_init"
    model = B.create_model(name, image_size=64)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, model.num_features) == (2, 192)
    assert not model.training
    cfg = B.data_config(name, image_size=64)
    assert cfg["input_size"] == (3, 64, 64)
    assert np.allclose(cfg["mean"], B.data_config(name)["mean"])


# ----------------------------------------------------------------------------------------------------------------
# The paper's depth, generative and copy-detection backbones: random twins, key maps on synthetic checkpoints
# ----------------------------------------------------------------------------------------------------------------

#: Feature size each new entry declares (its pooled feature / descriptor).
PAPER_EXTRA = {"swinv2_tiny_window16_256.midas_v3_1": 768, "swinv2_base_window12to24_192to384.midas_v3_1": 1024,
               "sscd_resnet50.imagenet_mixup": 512, "sscd_resnext101_32x4d.disc_large": 1024,
               "sd_v1_4_encoder.laion": 1280}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("sd_") else n
                                  for n in PAPER_EXTRA])
def test_paper_backbones_build_as_random_twins_with_their_feature_size(name: str) -> None:
    """The rehearsal's twin (same architecture and preprocessing, no weights) builds, and its forward at the
    entry's own input size gives the declared feature size (on the meta device: shapes, no arithmetic)."""
    from bobkit.rehearsal.twins import random_twins

    with random_twins([name]) as twin:
        assert B.data_config(twin[name]) == B.data_config(name)
        cfg = B.data_config(name)
        with torch.device("meta"):
            model = B.create_model(twin[name])
            out = model(torch.empty(2, *cfg["input_size"]))
            logits = B.create_model(twin[name], num_classes=5)(torch.empty(2, *cfg["input_size"]))
    assert tuple(out.shape) == (2, PAPER_EXTRA[name]) == (2, model.num_features)
    assert tuple(logits.shape) == (2, 5)
    assert B.get_backbone(name).weights_entry == "weights_" + name.replace(".", "_")


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"state_dict": state}, path)
    return path


@pytest.mark.slow
def test_midas_dpt_checkpoint_loads_its_encoder_strictly(tmp_path: Path) -> None:
    """A DPT checkpoint in MiDaS v3.1's layout: the timm 0.6 SwinV2 encoder under ``pretrained.model.`` (downsampling
    at the end of a stage, ``head.`` classifier, relative-position buffers), the decoder under ``scratch.``."""
    import timm

    name = "swinv2_tiny_window16_256.midas_v3_1"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        source = timm.create_model("swinv2_tiny_window16_256", num_classes=1000)
    state = {}
    for key, value in source.state_dict().items():
        old = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        state["pretrained.model." + old.replace("head.fc.", "head.")] = value.half()
    state["pretrained.model.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(256, 256, dtype=torch.long)
    state["pretrained.act_postprocess1.0.weight"] = torch.zeros(96, 96, 1, 1)
    state["scratch.refinenet1.out_conv.weight"] = torch.zeros(256, 256, 1, 1)
    model = B.create_model(name, weights_file=_save(state, tmp_path / "dpt_swin2_tiny_256.pt"))
    # the first stage's downsampling of the MiDaS layout is timm's second stage's
    torch.testing.assert_close(model.layers[1].downsample.reduction.weight,
                               source.layers[1].downsample.reduction.weight.half().float())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 768) and torch.isfinite(out).all()


def _classy_layout(trunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet-50 keys -> SSCD's Classy Vision ResNe(X)t keys (``backbone.``), as in its .classy.pt."""
    conv = {"conv1": "0", "bn1": "1", "conv2": "3", "bn2": "4", "conv3": "6"}
    out = {}
    for key, value in trunk.items():
        if key.startswith("fc."):
            continue
        if match := re.match(r"(conv1|bn1)\.(.+)", key):
            out[f"backbone.initial_block._module.{conv[match[1]]}.{match[2]}"] = value
            continue
        stage, index, part, rest = re.match(r"layer(\d)\.(\d+)\.(\w+)\.(.+)", key).groups()
        base = f"backbone.blocks.{int(stage) - 1}.{index}._module."
        if part == "downsample":
            out[base + f"downsample.{rest}"] = value
        elif part == "bn3":
            out[base + f"bn.{rest}"] = value
        else:
            out[base + f"convolutional_block.{conv[part]}.{rest}"] = value
    return out


@pytest.mark.slow
def test_sscd_classy_weights_give_the_sscd_descriptor(tmp_path: Path) -> None:
    """A .classy.pt in Classy Vision's layout loads strictly, and the descriptor is SSCD's: GeM(p=3) of the ResNet
    trunk, projected and L2-normalised (checked against torchvision's ResNet-50 with the same weights)."""
    import torchvision

    torch.manual_seed(5)
    reference = torchvision.models.resnet50().eval()
    for module in reference.modules():  # non-trivial BatchNorm statistics, so a swapped key shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    projection = torch.nn.Linear(2048, 512)
    state = _classy_layout(reference.state_dict())
    state.update({"embeddings.1.weight": projection.weight.detach(), "embeddings.1.bias": projection.bias.detach()})
    model = B.create_model("sscd_resnet50.imagenet_mixup", weights_file=_save(state, tmp_path / "sscd.classy.pt"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(reference.children())[:-2])(x)
        expected = torch.nn.functional.normalize(projection(trunk.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    assert torch.linalg.norm(expected, dim=1).allclose(torch.ones(2))
    bad = {**state, "backbone.blocks.0.0._module.extra.weight": torch.zeros(1)}
    with pytest.raises(W.WeightsConversionError, match="unexpected"):
        B.create_model("sscd_resnet50.imagenet_mixup", weights_file=_save(bad, tmp_path / "bad.classy.pt"))


# Stable Diffusion: a small model of the same structure, its checkpoint in the LDM layout of sd-v1-4.ckpt.
SD_TINY = dict(vae_channels=(32, 64), vae_layers=1, latent_channels=4, unet_channels=(32, 64), unet_layers=1,
               attention_heads=2, cross_attention_dim=64, cross_attention_levels=(True, False), context_tokens=77,
               norm_groups=8)
_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_LDM_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_name(key: str, layers: int) -> str:
    """Our Stable Diffusion encoder's key -> its name in the LDM single-file checkpoint (ldm/openaimodel.py names:
    ``input_blocks.N`` counts ``layers`` blocks and a downsampler per level)."""
    if key.startswith("vae_encoder."):
        rest = key[len("vae_encoder."):]
        if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return f"first_stage_model.encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", rest):
            return f"first_stage_model.encoder.down.{m[1]}.downsample.{m[2]}"
        if m := re.match(r"mid_block\.resnets\.(\d)\.(.+)", rest):
            return f"first_stage_model.encoder.mid.block_{int(m[1]) + 1}.{m[2]}"
        if m := re.match(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
            return f"first_stage_model.encoder.mid.attn_1.{_LDM_VAE_ATTENTION[m[1]]}.{m[2]}"
        return "first_stage_model.encoder." + rest.replace("conv_norm_out", "norm_out")
    if key.startswith("quant_conv."):
        return "first_stage_model." + key
    unet = "model.diffusion_model."
    if m := re.match(r"time_embedding\.linear_(\d)\.(.+)", key):
        return unet + f"time_embed.{0 if m[1] == '1' else 2}.{m[2]}"
    if key.startswith("conv_in."):
        return unet + "input_blocks.0.0." + key[len("conv_in."):]
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)", key):
        return unet + f"input_blocks.{1 + int(m[1]) * (layers + 1) + int(m[2])}.0.{_LDM_RESNET[m[3]]}.{m[4]}"
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return unet + f"input_blocks.{1 + int(m[1]) * (layers + 1) + int(m[2])}.1.{m[3]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return unet + f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d)\.(\w+)\.(.+)", key):
        return unet + f"middle_block.{0 if m[1] == '0' else 2}.{_LDM_RESNET[m[2]]}.{m[3]}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
        return unet + f"middle_block.1.{m[1]}"
    raise KeyError(key)


def _open_clip_text(width: int = 64, layers: int = 2):
    """A small OpenAI-style CLIP text transformer (open_clip's own implementation, QuickGELU) and its weights in the
    Hugging Face ``CLIPTextModel`` names SD's checkpoint stores under ``cond_stage_model.transformer.text_model.``."""
    from open_clip.transformer import QuickGELU, TextTransformer

    text = TextTransformer(width=width, heads=1, layers=layers, act_layer=QuickGELU, output_tokens=True).eval()
    for param in text.parameters():
        torch.nn.init.normal_(param, std=0.2)
    hf = {"embeddings.token_embedding.weight": text.token_embedding.weight,
          "embeddings.position_embedding.weight": text.positional_embedding,
          "final_layer_norm.weight": text.ln_final.weight, "final_layer_norm.bias": text.ln_final.bias}
    for i, block in enumerate(text.transformer.resblocks):
        p = f"encoder.layers.{i}."
        for name, w, b in zip("qkv", block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)):
            hf[f"{p}self_attn.{name}_proj.weight"], hf[f"{p}self_attn.{name}_proj.bias"] = w, b
        hf.update({f"{p}self_attn.out_proj.weight": block.attn.out_proj.weight,
                   f"{p}self_attn.out_proj.bias": block.attn.out_proj.bias,
                   f"{p}layer_norm1.weight": block.ln_1.weight, f"{p}layer_norm1.bias": block.ln_1.bias,
                   f"{p}layer_norm2.weight": block.ln_2.weight, f"{p}layer_norm2.bias": block.ln_2.bias,
                   f"{p}mlp.fc1.weight": block.mlp.c_fc.weight, f"{p}mlp.fc1.bias": block.mlp.c_fc.bias,
                   f"{p}mlp.fc2.weight": block.mlp.c_proj.weight, f"{p}mlp.fc2.bias": block.mlp.c_proj.bias})
    return text, {k: v.detach().clone() for k, v in hf.items()}


def test_clip_text_context_matches_open_clip() -> None:
    """The prompt's context is CLIP's last hidden state: our functional transformer agrees with open_clip's."""
    from bobkit.backbones.diffusion import PROMPT_TOKENS, clip_text_hidden_states

    torch.manual_seed(0)
    text, hf = _open_clip_text()
    tokens = torch.tensor([PROMPT_TOKENS])
    with torch.no_grad():
        _, expected = text(tokens)
        torch.testing.assert_close(clip_text_hidden_states(hf, tokens), expected, rtol=1e-4, atol=1e-4)
    from open_clip.tokenizer import SimpleTokenizer

    assert PROMPT_TOKENS[:4] == (49406, *SimpleTokenizer().encode("image classification"), 49407)
    assert len(PROMPT_TOKENS) == 77 and set(PROMPT_TOKENS[3:]) == {49407}  # padded with the end token


@pytest.mark.slow
def test_stable_diffusion_ldm_checkpoint_loads_strictly(tmp_path: Path) -> None:
    """A checkpoint in sd-v1-4.ckpt's LDM layout (VAE, UNet, CLIP text encoder, and the parts the encoder drops:
    decoder, output blocks, EMA, schedule buffers) converts strictly; the names are also those diffusers' own LDM
    converter reads, and the converted model computes what the source model computes with the prompt's context."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from bobkit.backbones.diffusion import PROMPT_TOKENS, StableDiffusionEncoder, clip_text_hidden_states

    torch.manual_seed(1)
    source = StableDiffusionEncoder(**SD_TINY).eval()
    for param in source.parameters():  # diffusers zero-initialises some output convolutions
        torch.nn.init.normal_(param, std=0.05)
    torch.nn.init.ones_(source.norm.weight)  # the paper's GroupNorm is fresh in every converted model
    torch.nn.init.zeros_(source.norm.bias)
    text, hf = _open_clip_text()
    ldm = {}
    for key, value in source.state_dict().items():
        if key in ("context", "norm.weight", "norm.bias"):
            continue  # not in an SD checkpoint: computed / fresh
        name = _ldm_name(key, SD_TINY["unet_layers"])
        ldm[name] = value[:, :, None, None] if ".mid.attn_1." in name and value.ndim == 2 else value
    # diffusers reads these names as the LDM layout too, to the same tensors
    unet = convert_ldm_unet_checkpoint(ldm, dict(layers_per_block=1, block_out_channels=(32, 64)))
    vae = convert_ldm_vae_checkpoint(ldm, dict(layers_per_block=1, block_out_channels=(32, 64),
                                               down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=()))
    ours = source.state_dict()
    assert set(unet) == {k for k in ours if not k.startswith(("vae_encoder.", "quant_conv.", "context", "norm."))}
    assert all(torch.equal(unet[k], ours[k]) for k in unet)
    assert {k for k in vae if k.startswith("encoder.")} == {"encoder." + k[12:] for k in ours
                                                             if k.startswith("vae_encoder.")}
    assert all(torch.equal(vae["encoder." + k[12:]], ours[k]) for k in ours if k.startswith("vae_encoder."))
    ldm.update({f"cond_stage_model.transformer.text_model.{k}": v for k, v in hf.items()})
    ldm.update({"cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
                "first_stage_model.decoder.conv_in.weight": torch.zeros(1),
                "first_stage_model.post_quant_conv.weight": torch.zeros(1),
                "model.diffusion_model.output_blocks.0.0.in_layers.0.weight": torch.zeros(1),
                "model.diffusion_model.out.2.weight": torch.zeros(1), "betas": torch.zeros(1000),
                "model_ema.decay": torch.tensor(0.9999)})
    path = _save(ldm, tmp_path / "sd-v1-4.ckpt")

    def factory() -> torch.nn.Module:
        with torch.device("meta"):
            return StableDiffusionEncoder(**SD_TINY)

    converted = W.convert_checkpoint("sd_tiny.test", path, "ldm_stable_diffusion", factory, head_prefixes=("head.",))
    from safetensors.torch import load_file

    model = StableDiffusionEncoder(**SD_TINY).eval()
    assert not model.load_state_dict(load_file(str(converted)), strict=True).missing_keys
    with torch.no_grad():
        _, context = text(torch.tensor([PROMPT_TOKENS]))
        torch.testing.assert_close(model.context, context, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.context, clip_text_hidden_states(hf, torch.tensor([PROMPT_TOKENS])))
        source.context.copy_(context)
        x = torch.rand(2, 3, 64, 64) * 2 - 1
        torch.testing.assert_close(model(x), source(x), rtol=1e-4, atol=1e-4)
    assert torch.equal(model.norm.weight, torch.ones(64)) and torch.equal(model.norm.bias, torch.zeros(64))
