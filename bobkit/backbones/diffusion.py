"""Stable Diffusion v1 as an image backbone (the paper's ``SDEncoder``), built from diffusers' modules.

What the paper's classification and retrieval code computes (``models/stable_diff.py`` in hsouri/bob-classification
and bob-retrieval, class ``SDEncoder``), reproduced here:

1. the VAE encoder and ``quant_conv``; the latent is the posterior mean in eval mode (a sample while training),
   times 0.18215;
2. the UNet's down path (``input_blocks``) and middle block at timestep 0, cross-attending to the CLIP ViT-L/14 text
   encoding of the prompt ``"image classification"`` (77 tokens x 768);
3. a GroupNorm(32) that the paper adds, freshly initialised (weight 1, bias 0: it is not in the SD checkpoint), then
   the mean over the spatial positions: a 1280-d feature (:attr:`num_features`).

The text encoder is frozen in the paper (its output is detached), so the 77 x 768 context is a constant of the
weights: the key map computes it once from the checkpoint's CLIP text weights (:func:`clip_text_hidden_states`) and
stores it as the buffer ``context``; the 123M-parameter text encoder is not kept. The up path and the VAE decoder
are never used and are not built.

Where this differs from the paper's code, on purpose: the VAE's downsampling convolutions pad the bottom and right
edge only, as Stable Diffusion was trained (diffusers' ``Downsample2D``); the paper's re-implementation
(``Downsample_ae``) padded all four sides, shifting every VAE feature by one pixel against the trained weights.

diffusers is an optional dependency (``pip install 'bobkit[diffusion]'``), imported when a model is built. The
architecture is set in code (:data:`SD_V1`); nothing is read from the Hugging Face hub.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["SD_V1", "StableDiffusionEncoder", "clip_text_hidden_states", "ldm_to_encoder", "PROMPT_TOKENS"]

#: Stable Diffusion v1 (v1-1 ... v1-5 share it): VAE, UNet and CLIP ViT-L/14 text encoder sizes.
SD_V1: dict[str, Any] = dict(
    vae_channels=(128, 256, 512, 512), vae_layers=2, latent_channels=4,
    unet_channels=(320, 640, 1280, 1280), unet_layers=2, attention_heads=8, cross_attention_dim=768,
    cross_attention_levels=(True, True, True, False), context_tokens=77, norm_groups=32, scaling_factor=0.18215,
)
#: The paper's prompt ``"image classification"`` in CLIP's BPE vocabulary: start, "image", "classification", end,
#: padded to 77 with the end token as the SD v1 text encoder (Hugging Face ``CLIPTokenizer`` of
#: openai/clip-vit-large-patch14, ``padding="max_length"``) does.
START_TOKEN, END_TOKEN = 49406, 49407
PROMPT_TOKENS: tuple[int, ...] = (START_TOKEN, 2867, 26612, END_TOKEN) + (END_TOKEN,) * 73
#: Scale of the SD v1 VAE latent (``scale_factor`` in its LDM config).
SCALING_FACTOR = 0.18215


def _diffusers() -> Any:
    """diffusers' building blocks (imported on use: an optional dependency)."""
    try:
        from diffusers.models.autoencoders.vae import Encoder
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block
    except ImportError as exc:
        raise ImportError("the Stable Diffusion backbone needs diffusers: pip install 'bobkit[diffusion]' "
                          "(or pip install 'diffusers>=0.30')") from exc
    return Encoder, TimestepEmbedding, Timesteps, get_down_block, get_mid_block


class StableDiffusionEncoder(nn.Module):
    """VAE encoder -> UNet down path + middle block (timestep 0, fixed text context) -> GroupNorm -> mean pool.

    Parameters are the architecture sizes of :data:`SD_V1` (tests build smaller ones); ``num_classes`` 0 returns
    the pooled feature, otherwise logits of a linear head on it.
    """

    def __init__(self, vae_channels: tuple[int, ...] = SD_V1["vae_channels"], vae_layers: int = 2,
                 latent_channels: int = 4, unet_channels: tuple[int, ...] = SD_V1["unet_channels"],
                 unet_layers: int = 2, attention_heads: int = 8, cross_attention_dim: int = 768,
                 cross_attention_levels: tuple[bool, ...] = SD_V1["cross_attention_levels"],
                 context_tokens: int = 77, norm_groups: int = 32, scaling_factor: float = SCALING_FACTOR,
                 num_classes: int = 0, in_chans: int = 3, drop_rate: float = 0.0, **_: Any) -> None:
        super().__init__()
        Encoder, TimestepEmbedding, Timesteps, get_down_block, get_mid_block = _diffusers()
        self.scaling_factor = float(scaling_factor)
        self.vae_encoder = Encoder(in_channels=in_chans, out_channels=latent_channels,
                                   down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
                                   block_out_channels=tuple(vae_channels), layers_per_block=vae_layers,
                                   norm_num_groups=norm_groups, act_fn="silu", double_z=True)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        time_dim = 4 * unet_channels[0]
        self.time_proj = Timesteps(unet_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(unet_channels[0], time_dim)
        self.conv_in = nn.Conv2d(latent_channels, unet_channels[0], 3, padding=1)
        common = dict(temb_channels=time_dim, resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=norm_groups,
                      cross_attention_dim=cross_attention_dim, num_attention_heads=attention_heads,
                      attention_head_dim=attention_heads)
        blocks, previous = [], unet_channels[0]
        for level, channels in enumerate(unet_channels):
            kind = "CrossAttnDownBlock2D" if cross_attention_levels[level] else "DownBlock2D"
            blocks.append(get_down_block(kind, num_layers=unet_layers, in_channels=previous, out_channels=channels,
                                         add_downsample=level < len(unet_channels) - 1, downsample_padding=1,
                                         **common))
            previous = channels
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = get_mid_block("UNetMidBlock2DCrossAttn", in_channels=previous, output_scale_factor=1.0,
                                       transformer_layers_per_block=1, **common)
        self.register_buffer("context", torch.zeros(1, context_tokens, cross_attention_dim))
        self.norm = nn.GroupNorm(32 if previous % 32 == 0 else norm_groups, previous)
        self.num_features = self.head_hidden_size = previous
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.head = nn.Linear(previous, num_classes) if num_classes > 0 else nn.Identity()

    # -- timm model interface ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer-decay groups: VAE and UNet input layers, each UNet level, the middle block and the final norm."""
        return dict(stem=r"^vae_encoder|^quant_conv|^time_|^conv_in",
                    blocks=[(r"^down_blocks\.(\d+)", None), (r"^mid_block|^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the UNet blocks' activations in the backward pass (diffusers' own checkpointing switch)."""
        def checkpointed(module: nn.Module, *args: Any) -> Any:
            return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module._gradient_checkpointing_func = checkpointed
                module.gradient_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled VAE latent of images in [-1, 1]: posterior mean (eval) or a posterior sample (training)."""
        mean, logvar = self.quant_conv(self.vae_encoder(x)).chunk(2, dim=1)
        if self.training:
            mean = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn_like(mean)
        return mean * self.scaling_factor

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """GroupNorm of the UNet middle block's output ``(B, 1280, H/64, W/64)``."""
        z = self.latent(x)
        steps = torch.zeros(len(z), dtype=torch.long, device=z.device)
        emb = self.time_embedding(self.time_proj(steps).to(z.dtype))
        context = self.context.to(z.dtype).expand(len(z), -1, -1)
        h = self.conv_in(z)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        h = self.mid_block(h, emb, encoder_hidden_states=context)
        return self.norm(h.float()).to(h.dtype)  # the paper's GroupNorm32 normalises in float32

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        if pre_logits:
            return pooled
        if self.drop_rate:
            pooled = F.dropout(pooled, p=self.drop_rate, training=self.training)
        return self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    # No url: the single-file LDM checkpoint needs ldm_to_encoder; bobkit's catalog fetches and converts it.
    # 256 px, mean = std = 0.5 (the VAE takes images in [-1, 1]), as the paper's SD configs (sd_256_ft.yaml).
    "sd_v1_4_encoder.laion": dict(num_classes=0, input_size=(3, 256, 256), pool_size=(4, 4), crop_pct=1.0,
                                  interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                  first_conv="vae_encoder.conv_in", classifier="head",
                                  license="creativeml-openrail-m"),
})


@register_model
def sd_v1_4_encoder(pretrained: bool = False, **kwargs: Any) -> StableDiffusionEncoder:
    """The Stable Diffusion v1 encoder of the paper (VAE encoder + UNet down path and middle block)."""
    if kwargs.get("features_only"):
        raise ValueError("sd_v1_4_encoder: multi-scale features (the paper's SDEncoder_v1_feat for detection) are "
                         "not implemented; only the pooled feature is")
    kwargs.pop("img_size", None)  # convolutional: any input size
    return build_model_with_cfg(StableDiffusionEncoder, "sd_v1_4_encoder", pretrained, **{**SD_V1, **kwargs})


# --------------------------------------------------------------------------------------------------------------
# The fixed text context: CLIP ViT-L/14 text transformer (Hugging Face key names), run once at conversion
# --------------------------------------------------------------------------------------------------------------


def clip_text_hidden_states(weights: dict[str, torch.Tensor], tokens: torch.Tensor,
                            head_dim: int = 64) -> torch.Tensor:
    """Last hidden states ``(B, T, width)`` of a CLIP text transformer (OpenAI CLIP's, in Hugging Face
    ``CLIPTextModel`` key names without the ``text_model.`` prefix) for token ids ``(B, T)``.

    Pre-LayerNorm blocks with a causal mask and QuickGELU, then the final LayerNorm: what SD v1's
    ``FrozenCLIPEmbedder`` returns as ``last_hidden_state``.
    """
    w = {k: v.float() for k, v in weights.items()}
    x = w["embeddings.token_embedding.weight"][tokens] + w["embeddings.position_embedding.weight"][: tokens.shape[1]]
    n_layers = len({int(m.group(1)) for k in w if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    width, length = x.shape[-1], x.shape[1]
    heads = max(1, width // head_dim)
    mask = torch.full((length, length), float("-inf"), device=x.device).triu(1)
    for i in range(n_layers):
        p = f"encoder.layers.{i}."
        h = F.layer_norm(x, (width,), w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], eps=1e-5)
        q, k, v = (F.linear(h, w[f"{p}self_attn.{n}_proj.weight"], w[f"{p}self_attn.{n}_proj.bias"])
                   .unflatten(-1, (heads, width // heads)).transpose(1, 2) for n in ("q", "k", "v"))
        attention = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + F.linear(attention.transpose(1, 2).flatten(2), w[p + "self_attn.out_proj.weight"],
                         w[p + "self_attn.out_proj.bias"])
        h = F.layer_norm(x, (width,), w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], eps=1e-5)
        h = F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
    return F.layer_norm(x, (width,), w["final_layer_norm.weight"], w["final_layer_norm.bias"], eps=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Key map: the single-file LDM checkpoint (sd-v1-4.ckpt) -> StableDiffusionEncoder
# --------------------------------------------------------------------------------------------------------------

_LDM_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
               "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _resnet(rest: str) -> str:
    """An LDM UNet ResBlock parameter (``in_layers.0.weight``) in diffusers' ``ResnetBlock2D`` names."""
    for old, new in _LDM_RESNET.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _unet_key(rest: str, levels: int, layers: int) -> str:
    """An LDM ``model.diffusion_model.*`` key (prefix removed) in this module's names; unknown keys unchanged."""
    if rest.startswith("time_embed."):
        return {"0": "time_embedding.linear_1", "2": "time_embedding.linear_2"}.get(rest[11], "?") + rest[12:]
    if rest.startswith("input_blocks.0.0."):
        return "conv_in." + rest[len("input_blocks.0.0."):]
    match = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.+)", rest)
    if match:
        index, part, tail = int(match.group(1)), match.group(2), match.group(3)
        level, slot = divmod(index - 1, layers + 1)
        if slot == layers:  # the level's downsampling conv
            return f"down_blocks.{level}.downsamplers.0.conv.{tail.removeprefix('op.')}"
        if part == "0":
            return f"down_blocks.{level}.resnets.{slot}.{_resnet(tail)}"
        return f"down_blocks.{level}.attentions.{slot}.{tail}"
    match = re.match(r"middle_block\.(\d)\.(.+)", rest)
    if match:
        part, tail = match.groups()
        return {"0": f"mid_block.resnets.0.{_resnet(tail)}", "1": f"mid_block.attentions.0.{tail}",
                "2": f"mid_block.resnets.1.{_resnet(tail)}"}[part]
    return "model.diffusion_model." + rest


def _vae_key(rest: str) -> str:
    """An LDM ``first_stage_model.encoder.*`` key (prefix removed) in diffusers' ``Encoder`` names."""
    rest = rest.replace("nin_shortcut", "conv_shortcut")
    match = re.match(r"down\.(\d+)\.block\.(\d+)\.(.+)", rest)
    if match:
        return f"down_blocks.{match.group(1)}.resnets.{match.group(2)}.{match.group(3)}"
    match = re.match(r"down\.(\d+)\.downsample\.(.+)", rest)
    if match:
        return f"down_blocks.{match.group(1)}.downsamplers.0.{match.group(2)}"
    match = re.match(r"mid\.block_(\d)\.(.+)", rest)
    if match:
        return f"mid_block.resnets.{int(match.group(1)) - 1}.{match.group(2)}"
    match = re.match(r"mid\.attn_1\.(\w+)\.(.+)", rest)
    if match and match.group(1) in _VAE_ATTENTION:
        return f"mid_block.attentions.0.{_VAE_ATTENTION[match.group(1)]}.{match.group(2)}"
    return {"norm_out": "conv_norm_out"}.get(rest.split(".")[0], rest.split(".")[0]) + rest[len(rest.split(".")[0]):]


def ldm_to_encoder(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The single-file Stable Diffusion v1 checkpoint (LDM key names) -> :class:`StableDiffusionEncoder`.

    Keeps the VAE encoder and ``quant_conv``, the UNet's time embedding, input blocks and middle block; computes the
    text context from the CLIP text weights (``cond_stage_model.transformer.*``) on :data:`PROMPT_TOKENS`; adds the
    paper's fresh GroupNorm (weight 1, bias 0). The decoder, the UNet's output blocks, EMA copies and the text
    encoder itself are dropped; any other key is kept as it is, so the strict key check names it.
    """
    levels = len(getattr(model, "down_blocks", ())) or 4
    layers = len(model.down_blocks[0].resnets) if hasattr(model, "down_blocks") else 2
    out: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith("first_stage_model.encoder."):
            out["vae_encoder." + _vae_key(key[len("first_stage_model.encoder."):])] = value
        elif key.startswith("first_stage_model.quant_conv."):
            out["quant_conv." + key[len("first_stage_model.quant_conv."):]] = value
        elif key.startswith("model.diffusion_model."):
            rest = key[len("model.diffusion_model."):]
            if not rest.startswith(("output_blocks.", "out.")):
                out[_unet_key(rest, levels, layers)] = value
        elif key.startswith("cond_stage_model.transformer."):
            text[key[len("cond_stage_model.transformer."):].removeprefix("text_model.")] = value
        elif not key.startswith(("first_stage_model.", "model_ema.", "cond_stage_model.")) and key not in (
                "alphas_cumprod", "alphas_cumprod_prev", "betas", "log_one_minus_alphas_cumprod", "logvar",
                "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                "posterior_variance", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"):
            out[key] = value  # unknown: reported by the strict check
    for key in [k for k in out if k.startswith("vae_encoder.mid_block.attentions.0.to_")]:
        if out[key].ndim == 4:  # the LDM VAE attention's 1x1 convolutions are diffusers' linear layers
            out[key] = out[key][:, :, 0, 0]
    if text:
        tokens = torch.tensor([PROMPT_TOKENS[: model.context.shape[1]]], device=next(iter(text.values())).device)
        with torch.no_grad():
            out["context"] = clip_text_hidden_states(text, tokens).to(torch.float32)
    channels = model.norm.weight.shape[0]
    out["norm.weight"] = torch.ones(channels)
    out["norm.bias"] = torch.zeros(channels)
    return out
