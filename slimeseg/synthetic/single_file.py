"""Write a diffusers SD 1.x-style pipeline as ONE checkpoint in the original (LDM/CompVis) layout.

Community fine-tunes come as such a file (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`); slimeseg loads them through diffusers' `from_single_file`.
This is the inverse of diffusers' own conversion (`diffusers.loaders.single_file_utils`:
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`),
for any number of blocks and layers per block, so the tiny test model can be written in that
layout (`slimeseg tiny-model DIR --single-file FILE`) and loaded back through the real path.
CLIP text encoders only (SD 1.x); SD 2.x's OpenCLIP layout is not written here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_path

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
           ("conv_shortcut", "skip_connection"))
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
             ("to_out.0", "proj_out"))


def _rename(rest: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for new, old in pairs:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_prefixes(config: dict[str, Any]) -> list[tuple[str, str, tuple]]:
    """(diffusers prefix, LDM prefix, inner renames) for every block of the UNet."""
    lpb, n = int(config["layers_per_block"]), len(config["down_block_types"])
    out: list[tuple[str, str, tuple]] = [("time_embedding.linear_1.", "time_embed.0.", ()),
                                         ("time_embedding.linear_2.", "time_embed.2.", ()),
                                         ("conv_in.", "input_blocks.0.0.", ()),
                                         ("conv_norm_out.", "out.0.", ()), ("conv_out.", "out.2.", ())]
    for i in range(n):
        for j in range(lpb):
            idx = 1 + i * (lpb + 1) + j
            out += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{idx}.0.", _RESNET),
                    (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{idx}.1.", ())]
        out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.", ()))
    out += [("mid_block.resnets.0.", "middle_block.0.", _RESNET),
            ("mid_block.attentions.0.", "middle_block.1.", ()),
            ("mid_block.resnets.1.", "middle_block.2.", _RESNET)]
    for i, kind in enumerate(config["up_block_types"]):
        for j in range(lpb + 1):
            idx = i * (lpb + 1) + j
            out += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{idx}.0.", _RESNET),
                    (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{idx}.1.", ())]
        slot = 2 if "CrossAttn" in kind else 1
        out.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{i * (lpb + 1) + lpb}.{slot}.conv.", ()))
    return out


def _vae_prefixes(config: dict[str, Any]) -> list[tuple[str, str, tuple]]:
    n = len(config["down_block_types"])
    out: list[tuple[str, str, tuple]] = []
    for part in ("encoder", "decoder"):
        out += [(f"{part}.conv_norm_out.", f"{part}.norm_out.", ()),
                (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", (("conv_shortcut", "nin_shortcut"),)),
                (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", (("conv_shortcut", "nin_shortcut"),)),
                (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTN)]
    for i in range(n):
        out += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", ()),
                (f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", ()),
                (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.", ()),
                (f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{n - 1 - i}.upsample.conv.", ())]
    return out


def _convert(state: dict[str, torch.Tensor], prefixes: list[tuple[str, str, tuple]], vae: bool = False
             ) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = key
        for dif, ldm, inner in prefixes:
            if key.startswith(dif):
                rest = key[len(dif):]
                if vae and dif.endswith("resnets."):  # "J.conv_shortcut.w" -> "J.nin_shortcut.w"
                    rest = rest.replace(".conv_shortcut.", ".nin_shortcut.")
                new = ldm + _rename(rest, inner)
                if inner is _VAE_ATTN and value.ndim == 2:
                    value = value[:, :, None, None]  # LDM's VAE attention is 1x1 convolutions
                break
        out[new] = value
    return out


def pipeline_to_ldm(pipe: Any) -> dict[str, torch.Tensor]:
    """The state dict of a diffusers SD pipeline (CLIP text encoder) in the LDM single-file layout."""
    tensors = {}
    unet = _convert(pipe.unet.state_dict(), _unet_prefixes(dict(pipe.unet.config)))
    tensors.update({"model.diffusion_model." + k: v for k, v in unet.items()})
    vae = _convert(pipe.vae.state_dict(), _vae_prefixes(dict(pipe.vae.config)), vae=True)
    tensors.update({"first_stage_model." + k: v for k, v in vae.items()})
    for key, value in pipe.text_encoder.state_dict().items():
        name = key if key.startswith("text_model.") else "text_model." + key
        tensors["cond_stage_model.transformer." + name] = value
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}


def save_single_file(pipe: Any, path: str | os.PathLike) -> Path:
    """Write the pipeline as one `.safetensors` checkpoint in the LDM layout, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(pipeline_to_ldm(pipe), str(tmp))
    return path
