"""Loading a frozen Stable Diffusion (any 1.x/2.x in diffusers layout) and choosing SLiMe's layers.

Only what SLiMe needs is kept: the UNet, the VAE *encoder* and the noise schedule. The text
encoder is loaded on demand to encode a prompt once, then released.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .config import resolve_model
from .errors import ModelError

log = logging.getLogger(__name__)

_VOLATILE_KEYS = {"transformers_version", "torch_dtype", "dtype", "architectures", "use_cache"}


LAYER_RULE = 1  # the version of `plan_layers`' rule; artifacts record it with the layer names


@dataclass
class LayerPlan:
    """Which attention processors give SLiMe's maps, by processor name.

    An artifact records its plan (`to_dict`), so a later change of `plan_layers`' rule can never
    silently change what saved embeddings mean: they are always read through their own layers.
    """

    cross: list[str]  # attn2 layers whose class-token scores form A_ca
    self_: list[str]  # attn1 layers whose attention forms the WAS maps (latent resolution)
    rule: int = LAYER_RULE  # the rule that chose them

    def roles(self) -> dict[str, str]:
        """Processor name -> "cross" | "self" for every captured layer."""
        return {**{n: "cross" for n in self.cross}, **{n: "self" for n in self.self_}}

    def to_dict(self) -> dict[str, Any]:
        """The plan as an artifact's metadata records it."""
        return {"rule": self.rule, "cross": list(self.cross), "self": list(self.self_)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerPlan:
        """A recorded plan (`to_dict`); raises ValueError if it is malformed."""
        cross, self_, rule = data.get("cross"), data.get("self"), data.get("rule")
        ok = (isinstance(rule, int) and all(isinstance(x, list) and x and all(isinstance(n, str) for n in x)
                                            for x in (cross, self_)))
        if not ok:
            raise ValueError("layers must be {'rule': int, 'cross': [names], 'self': [names]}")
        return cls(cross=list(cross), self_=list(self_), rule=rule)


def plan_layers(unet: nn.Module) -> LayerPlan:
    """Pick layers by resolution, as the reference does for SD 2.1 base (METHOD.md).

    Up block i of an n-block UNet works at latent / 2**(n-1-i). Cross-attention maps come from
    the up-block layers at 1/4 and 1/2 of the latent size (at 1/2 all but the block's last
    attention, like the reference's up_blocks[2].attentions[0..1]); self-attention from the
    up-block layers at full latent resolution.
    """
    n = len(unet.up_blocks)
    cross: list[str] = []
    self_: list[str] = []
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        if not attentions:
            continue
        factor = 2 ** (n - 1 - i)
        for j, transformer in enumerate(attentions):
            depth = len(transformer.transformer_blocks)
            for b in range(depth):
                prefix = f"up_blocks.{i}.attentions.{j}.transformer_blocks.{b}"
                if factor == 4 or (factor == 2 and (j < len(attentions) - 1 or len(attentions) == 1)):
                    cross.append(f"{prefix}.attn2.processor")
                if factor == 1:
                    self_.append(f"{prefix}.attn1.processor")
    if not cross:  # a shallow UNet: fall back to every up-block cross-attention below full size
        for i, block in enumerate(unet.up_blocks):
            if getattr(block, "attentions", None) and 2 ** (n - 1 - i) > 1:
                for j, transformer in enumerate(block.attentions):
                    for b in range(len(transformer.transformer_blocks)):
                        cross.append(f"up_blocks.{i}.attentions.{j}.transformer_blocks.{b}.attn2.processor")
    if not cross or not self_:
        raise ModelError(
            "this UNet has no cross-attention up blocks below, or no self-attention up block at, "
            "the latent resolution; SLiMe needs SD 1.x/2.x's structure"
        )
    return LayerPlan(cross=cross, self_=self_)


def config_fingerprint(*configs: dict) -> str:
    """A short hash of model configs (structure, not weights) to tie artifacts to a model."""
    clean = []
    for cfg in configs:
        clean.append({k: v for k, v in sorted(dict(cfg).items())
                      if not k.startswith("_") and k not in _VOLATILE_KEYS})
    blob = json.dumps(clean, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


OFFLINE_HINT = ("give --model a local diffusers folder instead: `slimeseg tiny-model tiny` writes an "
                "offline test model (`--model tiny`), and a checkout has the lab model in tests/assets/lab-sd")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the model hub surely cannot be reached (offline mode, no DNS, connection refused), or
    None when it may be reachable (also behind a proxy, which a direct probe cannot judge)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except socket.gaierror as exc:
        return f"cannot resolve {host} ({exc.strerror})"
    except ConnectionRefusedError:
        return f"{host} refused the connection"
    except OSError:  # a timeout or a routing error: the network may just be slow
        return None
    return None


def in_local_cache(model_id: str, revision: str | None) -> bool:
    """Whether a hub model's files are in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model_id, "unet/config.json", revision=revision), str)
    except Exception:  # not a valid repo id: it cannot be cached either
        return False


def _load_error(model: str, exc: Exception) -> ModelError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = "folder" if Path(model).exists() else "model id"
    return ModelError(f"cannot load Stable Diffusion {where} '{model}': {first}")


def pick_device(device: str | torch.device | None) -> torch.device:
    """`None` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"unknown device '{device}': {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' asked for, but CUDA is not available here")
    return dev


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None` -> float32 on CPU; on CUDA bfloat16 where the GPU supports it, else float16 (which
    training then loss-scales, `SlimeConfig.loss_scale`); names like "bf16" accepted."""
    if dtype is None:
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if native_bfloat16(device) else torch.float16
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}' (choose from {', '.join(sorted(DTYPES))})")
    return DTYPES[dtype]


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere, or where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX units. Elsewhere torch emulates bfloat16, many times slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@dataclass
class StableDiffusion:
    """The frozen parts of SD that SLiMe uses, on one device and dtype."""

    model_id: str
    revision: str | None
    unet: nn.Module
    vae_encoder: nn.Module
    quant_conv: nn.Module | None
    scaling_factor: float
    alphas_cumprod: torch.Tensor  # (T,) float32, on the device
    prediction_type: str
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    plan: LayerPlan
    local_files_only: bool = False
    text: tuple[Any, Any] | None = None  # (tokenizer, text encoder) of a single-file checkpoint
    model_config: str | None = None  # a single-file checkpoint: where its configs came from
    _prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    _encoders: dict[torch.dtype, tuple[nn.Module, nn.Module | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The VAE encoder runs its convolutions at full image size; channels-last (NHWC) lets
        # oneDNN/cuDNN pick their fast kernels: measured at 512 px on one CPU thread, SD's encoder
        # took 9.2 -> 8.3 s in float32 and 5.4 -> 2.1 s in bfloat16 (AMX). The UNet stays NCHW
        # (float32 UNet forward was slower channels-last: 6.3 -> 7.0 s).
        self.vae_encoder.to(memory_format=torch.channels_last)

    @property
    def context_dim(self) -> int:
        """Width D of the text-encoder output the UNet cross-attends to."""
        return int(self.unet.config.cross_attention_dim)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """RGB in [0, 1], (B, 3, H, W) -> latents (B, 4, H/8, W/8) in the model's dtype: encoder
        mean x scaling factor. `dtype`: run the encoder in this precision instead (a copy of it,
        made once: `encoder_in`), e.g. bfloat16 for a float32 model (`SlimeConfig.encoder_dtype`)."""
        encoder, quant_conv = self.encoder_in(dtype or self.dtype)
        x = images.to(self.device, dtype or self.dtype) * 2 - 1  # SD expects RGB in [-1, 1]
        h = encoder(x.contiguous(memory_format=torch.channels_last))
        if quant_conv is not None:
            h = quant_conv(h)
        mean = h[:, : h.shape[1] // 2]
        return (mean * self.scaling_factor).to(self.dtype).contiguous()  # back to NCHW for the UNet

    def encoder_in(self, dtype: torch.dtype) -> tuple[nn.Module, nn.Module | None]:
        """The VAE encoder (and its quant conv) in `dtype`: the model's own, or a copy in another
        precision, made on first use and kept (SD's encoder: 34 M parameters, 68 MB in bfloat16)."""
        if dtype == self.dtype:
            return self.vae_encoder, self.quant_conv
        if dtype not in self._encoders:
            import copy

            self._encoders[dtype] = tuple(None if m is None else copy.deepcopy(m).to(dtype)
                                          for m in (self.vae_encoder, self.quant_conv))
        return self._encoders[dtype]

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(x_t | x_0) of the checkpoint's schedule."""
        a = self.alphas_cumprod[t].to(latents.dtype).view(-1, 1, 1, 1)
        return a.sqrt() * latents + (1 - a).sqrt() * noise

    def denoise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        """Noise the latents at t and run the UNet once on them: its prediction (B, 4, h, w).

        Attention capture, if wanted, is whatever processors the caller installed around it.
        """
        noisy = self.add_noise(latents, noise.to(latents), t)
        return self.unet(noisy, t, encoder_hidden_states=context.to(self.dtype)).sample

    def ldm_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to predict: the noise, or v for v-prediction checkpoints."""
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].to(latents.dtype).view(-1, 1, 1, 1)
            return a.sqrt() * noise - (1 - a).sqrt() * latents
        return noise

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """CLIP text-encoder output (1, 77, D) for `prompt`; the encoder is loaded, used, released."""
        if prompt in self._prompt_cache:
            return self._prompt_cache[prompt]
        from transformers import CLIPTextModel, CLIPTokenizer

        kw = {"revision": self.revision, "local_files_only": self.local_files_only}
        try:
            if self.text is not None:  # a single file: its own text encoder, kept on the CPU
                tokenizer, encoder = self.text
            else:
                tokenizer = CLIPTokenizer.from_pretrained(self.model_id, subfolder="tokenizer", **kw)
                encoder = CLIPTextModel.from_pretrained(self.model_id, subfolder="text_encoder", **kw)
        except Exception as exc:  # hub/IO errors come in many types
            raise _load_error(self.model_id, exc) from None
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        encoder.eval()
        out = encoder(ids)[0].to(torch.float32)  # (1, 77, D)
        del encoder, tokenizer
        gc.collect()
        self._prompt_cache[prompt] = out
        return out


def load_stable_diffusion(
    model: str,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    local_files_only: bool | None = None,
    model_config: str | None = None,
) -> StableDiffusion:
    """Load SD's UNet, VAE encoder and schedule from a hub id, a local diffusers folder or one
    `.safetensors` checkpoint in the original layout (`model_config`: see `load_single_file`)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    model_id = resolve_model(model)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if os.path.isfile(model_id) and model_id.lower().endswith(".safetensors"):
        return load_single_file(model_id, model_config, dev, dt, local_files_only)
    if model_config is not None:
        raise ModelError(f"--model-config goes with a single-file --model (.safetensors), not "
                         f"'{model_id}'")
    if os.path.exists(model_id) and not os.path.isdir(model_id):
        raise ModelError(f"'{model_id}' is a file; give a diffusers model folder, a hub id or a "
                         "single-file checkpoint as .safetensors (pickled .ckpt files are never loaded)")
    if not os.path.exists(model_id) and (os.path.isabs(model_id) or model_id.startswith((".", "~"))
                                          or model_id.count("/") > 1):
        raise ModelError(f"'{model_id}': no such model folder")
    if local_files_only is None:
        local_files_only = os.path.isdir(model_id) or os.environ.get("HF_HUB_OFFLINE") == "1"
    if not local_files_only:  # a hub id: fail at once, not after the hub client's retries
        why = hub_unreachable()
        if why is not None:
            if not in_local_cache(model_id, revision):
                raise ModelError(f"cannot load '{model_id}': the model hub cannot be reached ({why}) "
                                 f"and the model is not in the local cache; {OFFLINE_HINT}")
            local_files_only = True  # cached: load it from there without asking the hub
    elif not os.path.isdir(model_id) and not in_local_cache(model_id, revision):
        raise ModelError(f"cannot load '{model_id}': it is not a local folder and offline mode "
                         f"(HF_HUB_OFFLINE) forbids downloading it; {OFFLINE_HINT}")
    kw = {"revision": revision, "local_files_only": local_files_only}
    try:
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", torch_dtype=dt, **kw)
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=dt, **kw)
        scheduler = DDPMScheduler.from_pretrained(model_id, subfolder="scheduler", **kw)
        text_config = CLIPTextConfig.from_pretrained(model_id, subfolder="text_encoder", **kw)
    except Exception as exc:
        raise _load_error(model_id, exc) from None
    return _assemble(model_id, revision, unet, vae, scheduler, text_config, dev, dt,
                     bool(local_files_only))


def _assemble(model_id: str, revision: str | None, unet: nn.Module, vae: nn.Module, scheduler: Any,
              text_config: Any, dev: torch.device, dt: torch.dtype, local_files_only: bool,
              text: tuple[Any, Any] | None = None, model_config: str | None = None) -> StableDiffusion:
    """The frozen parts SLiMe keeps (the VAE decoder dropped), on the device, with the layer plan."""
    if unet.config.in_channels != vae.config.latent_channels:
        raise ModelError(f"'{model_id}': UNet takes {unet.config.in_channels} channels but the VAE "
                         f"makes {vae.config.latent_channels}; not a text-to-image SD checkpoint")
    encoder, quant_conv = vae.encoder, getattr(vae, "quant_conv", None)
    scaling = float(vae.config.scaling_factor)
    del vae  # the decoder is never needed
    for module in (unet, encoder, quant_conv):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
            module.to(dev)
    alphas = scheduler.alphas_cumprod.to(dev, torch.float32)
    fingerprint = config_fingerprint(unet.config, text_config.to_dict())
    return StableDiffusion(
        model_id=model_id, revision=revision, unet=unet, vae_encoder=encoder, quant_conv=quant_conv,
        scaling_factor=scaling, alphas_cumprod=alphas,
        prediction_type=str(scheduler.config.get("prediction_type", "epsilon")),
        device=dev, dtype=dt, fingerprint=fingerprint, plan=plan_layers(unet),
        local_files_only=bool(local_files_only), text=text, model_config=model_config,
    )


SINGLE_FILE_HINT = ("give --model-config DIR, a local diffusers folder of the same architecture "
                    "(its unet/, vae/, scheduler/, text_encoder/, tokenizer/ configs)")


def _check_single_file(path: str) -> None:
    """Refuse, in one line, a .safetensors file that is no SD checkpoint in the original layout."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            keys = list(fh.keys())
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"'{path}': not a readable safetensors file ({' '.join(str(exc).split())})") from None
    if "slimeseg" in meta:
        raise ModelError(f"'{path}': these are learned embeddings, not a Stable Diffusion "
                         "checkpoint; give them as LEARNED (or --init), not --model")
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelError(f"'{path}': not a Stable Diffusion checkpoint in the original single-file "
                         "layout (no model.diffusion_model.* weights); give a diffusers folder, a "
                         "hub id or an SD 1.x/2.x .safetensors checkpoint")


def load_single_file(path: str, model_config: str | None, dev: torch.device, dt: torch.dtype,
                     local_files_only: bool | None = None) -> StableDiffusion:
    """SD from one `.safetensors` checkpoint in the original (LDM) layout, through diffusers'
    `from_single_file`. The component configs come from `model_config` (a local diffusers folder,
    or a preset / hub id, cached when offline) or, without it, the preset diffusers infers from
    the weights (which must be in the hub cache when offline); a one-line ModelError otherwise."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    path = os.path.abspath(path)
    _check_single_file(path)
    config = resolve_model(model_config) if model_config else None
    if config is not None and not os.path.isdir(config) and (
            os.path.isabs(config) or config.startswith((".", "~")) or config.count("/") != 1):
        raise ModelError(f"--model-config '{model_config}': no such diffusers folder")
    if local_files_only is None:
        local_files_only = (os.environ.get("HF_HUB_OFFLINE") == "1"
                            or (config is not None and os.path.isdir(config)))
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            path, config=config, local_files_only=local_files_only, torch_dtype=dt,
            safety_checker=None, requires_safety_checker=False)
    except Exception as exc:  # diffusers raises many types on config, hub and weight problems
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"with the configs of '{config}'" if config else "(configs: the preset diffusers infers)"
        raise ModelError(f"cannot load single-file checkpoint '{path}' {where}: {first}"
                         + ("" if config else f"; {SINGLE_FILE_HINT}")) from None
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    text = (pipe.tokenizer, pipe.text_encoder)
    text[1].requires_grad_(False)
    recorded = os.path.abspath(config) if config is not None and os.path.isdir(config) else config
    return _assemble(path, None, pipe.unet, pipe.vae, scheduler, pipe.text_encoder.config, dev, dt,
                     True, text=text, model_config=recorded)
