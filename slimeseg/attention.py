"""Attention capture as diffusers attention processors (installed with `unet.set_attn_processor`).

Cross-attention layers record the scores QK^T/sqrt(d) of the K class tokens only (a (N, K)
product beside the fused attention). Self-attention layers never materialise their (N, N)
matrix: the WAS map S = R @ A_sa^T equals attention with the class maps R as extra value
channels, so one fused scaled-dot-product call gives both the layer output and its WAS map.

`AttentionStore.grad_mode` says how gradients reach the class tokens (`SlimeConfig.gradients`):
"full" through the whole UNet; "detached": the hidden states entering each captured layer are
detached, autograd records the rest (the reference the local mode is checked against); "local":
the UNet runs without a graph (the caller's `torch.no_grad()`) and only the captured layers'
class keys (cross) and WAS products (self) are recorded, which gives "detached"'s gradient of the
CE and MSE losses at a fraction of the backward's cost.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn


class AttentionStore:
    """Buffers for one UNet forward: per-layer class maps and the running WAS sum."""

    def __init__(self, num_classes: int, latent_hw: tuple[int, int], want_was: bool = True,
                 want_probs: bool = False, values_fn: Callable[[AttentionStore, tuple[int, int]], torch.Tensor] | None = None):
        self.num_classes = num_classes
        self.latent_hw = latent_hw
        self.want_was = want_was
        self.want_probs = want_probs  # also keep softmax-over-77 probabilities (reference variant)
        self.keep_self = False  # also keep the self-attention layers' queries and keys (`self_qk`)
        self.values_fn = values_fn  # (store, (h, w)) -> R (B, K, h*w): what the WAS map spreads
        self.grad_mode: Literal["full", "detached", "local"] = "full"  # see the module docstring
        self.reset()

    def reset(self) -> None:
        """Forget everything captured (call before each forward)."""
        self.cross: list[torch.Tensor] = []  # each (B, K, h, w): pre-softmax scores, head mean
        self.cross_probs: list[torch.Tensor] = []  # each (B, K, h, w): softmax over all tokens
        self.was_sum: torch.Tensor | None = None  # (B, K, N)
        self.was_count = 0
        self._values: dict[int, torch.Tensor] = {}
        # with keep_self: each self-attention layer's (q, k, scale), q and k (B, H, N, d), so that
        # maps known only after the pass (matching's votes) can be spread the way WAS spreads R
        self.self_qk: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def hw_for(self, n: int) -> tuple[int, int]:
        """Spatial size of a layer with `n` positions, from the latent's aspect ratio."""
        lh, lw = self.latent_hw
        f = math.sqrt(lh * lw / n)
        h, w = round(lh / f), round(lw / f)
        if h * w != n:
            raise RuntimeError(f"cannot map {n} positions onto the {lh}x{lw} latent grid")
        return h, w

    def values(self, n: int) -> torch.Tensor:
        """R (B, K, n) for a self-attention layer of n positions, computed once per forward."""
        if n not in self._values:
            if self.values_fn is None:
                raise RuntimeError("AttentionStore.values_fn is not set")
            self._values[n] = self.values_fn(self, self.hw_for(n))
        return self._values[n]

    def was(self) -> torch.Tensor:
        """WAS maps averaged over layers and heads: (B, K, h, w) at the latent resolution."""
        if self.was_sum is None:
            raise RuntimeError("no WAS map was captured (no self-attention layer ran)")
        b, k, n = self.was_sum.shape
        return (self.was_sum / self.was_count).view(b, k, *self.hw_for(n))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


# What every processor here shares with diffusers' own AttnProcessor2_0: the input norms and
# projections (`project`) and the output projection (`finish`). They differ only in the middle:
# the engine's capture runs fused SDPA and reads the few numbers it needs beside it; the lab's
# probe (and the tests' explicit reference for the WAS maps) must materialise softmax(QK^T)
# (`explicit_attention`) because their point is to look at the full probability matrix; the
# reference-style baseline (lab/baseline.py) forms it too, the classic processor's way (baddbmm).
def project(attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, H, N, d), k and v (B, H, M, d) of an SD 1.x/2.x attention layer, after its norms."""
    if attn.spatial_norm is not None or hidden_states.ndim != 3:
        raise NotImplementedError("attention capture supports SD 1.x/2.x transformer blocks only")
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    q = _split_heads(attn.to_q(hidden_states), attn.heads)  # (B, H, N, d)
    k = _split_heads(attn.to_k(context), attn.heads)  # (B, H, M, d)
    v = _split_heads(attn.to_v(context), attn.heads)  # (B, H, M, d)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def class_keys(attn: nn.Module, encoder_hidden_states: torch.Tensor, num_classes: int) -> torch.Tensor:
    """k (B, H, K, d) of the first K context tokens alone, as `project` forms them (the norms and
    the key projection act token by token, so these are `project`'s k[:, :, :K])."""
    context = encoder_hidden_states[:, :num_classes]
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    k = _split_heads(attn.to_k(context), attn.heads)  # (B, H, K, d)
    return attn.norm_k(k) if attn.norm_k is not None else k


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with its probabilities materialised: output (B, H, N, d), probs (B, H, N, M)."""
    probs = ((q @ k.transpose(-1, -2)) * scale).softmax(-1)
    return probs @ v, probs


def finish(attn: nn.Module, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Merge heads of (B, H, N, d), apply the output projection, residual and rescaling."""
    b, heads, n, d = out.shape
    out = out.transpose(1, 2).reshape(b, n, heads * d)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class CaptureProcessor:
    """A drop-in for AttnProcessor2_0 that also feeds an AttentionStore.

    role "cross": records class-token scores; role "self": adds the WAS product.
    """

    def __init__(self, store: AttentionStore, role: str):
        if role not in ("cross", "self"):
            raise ValueError(f"role must be 'cross' or 'self', got {role!r}")
        self.store = store
        self.role = role

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        if attention_mask is not None:
            raise NotImplementedError("attention capture supports SD 1.x/2.x transformer blocks only")
        store = self.store
        if store.grad_mode == "detached":
            hidden_states = hidden_states.detach()
        local = store.grad_mode == "local"
        residual = hidden_states
        with torch.no_grad() if local else contextlib.nullcontext():
            q, k, v = project(attn, hidden_states, encoder_hidden_states)
        if self.role == "self" and store.keep_self:
            store.self_qk.append((q.detach(), k.detach(), attn.scale))
        # local: record what reaches the losses (the class keys, R and the WAS product) although
        # the UNet around this layer runs without a graph; nothing else here carries a gradient
        with torch.enable_grad() if local else contextlib.nullcontext():
            out = self._attend(attn, q, k, v, encoder_hidden_states, local)
        return finish(attn, out.to(q.dtype), residual)

    def _attend(self, attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None, local: bool) -> torch.Tensor:
        """The attention output (B, H, N, d); feeds the store on the way."""
        store, kk = self.store, self.store.num_classes
        b, heads, n, d = q.shape
        if self.role == "cross":
            # 1. class-token scores QK^T/sqrt(d), mean over heads: (B, K, h, w), in float32 even
            # in a half-precision UNet (they are the CE loss's logits, and its gradient's path);
            # local: the class keys formed again from the context, recorded
            keys = class_keys(attn, encoder_hidden_states, kk) if local else k[:, :, :kk]
            qf = q.float()
            scores = (qf @ keys.float().transpose(-1, -2)) * attn.scale  # (B, H, N, K)
            h, w = store.hw_for(n)
            store.cross.append(scores.mean(1).transpose(1, 2).reshape(b, kk, h, w))
            if store.want_probs:
                probs = ((qf @ k.float().transpose(-1, -2)) * attn.scale).softmax(-1)[..., :kk]
                store.cross_probs.append(probs.mean(1).transpose(1, 2).reshape(b, kk, h, w))
            return F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        if not store.want_was:
            return F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        # 2. WAS: attention with R^T as extra value channels gives S^T = A_sa @ R^T
        r = store.values(n).to(v.dtype)  # (B, K, N)
        extra = r.transpose(1, 2)[:, None].expand(b, heads, n, kk)  # (B, H, N, K)
        # Fused kernels (CPU and CUDA flash attention) need ONE head dim, a multiple of 8, for
        # q, k and v; otherwise SDPA silently falls back to its math path, which materialises
        # the (N, N) matrix (measured: 2.3x slower fwd+bwd per 64x64 layer on CPU). So q and k
        # are zero-padded too: QK^T is unchanged and the scale is passed explicitly.
        pad = (-(d + kk)) % 8
        zeros = q.new_zeros(b, heads, n, kk + pad)
        both = F.scaled_dot_product_attention(
            torch.cat([q, zeros], -1), torch.cat([k, zeros], -1),
            torch.cat([v, extra, zeros[..., kk:]], -1), scale=attn.scale)
        was = both[..., d:d + kk].float().mean(1).transpose(1, 2)  # (B, K, N)
        store.was_sum = was if store.was_sum is None else store.was_sum + was
        store.was_count += 1
        # local: only R carried a gradient into that call; the layer output leaves it detached,
        # so the UNet after this layer stays without a graph
        return both[..., :d].detach() if local else both[..., :d]



_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Processor name (as in `unet.attn_processors`) -> its attention module, cached per UNet.

    `unet.attn_processors` and `set_attn_processor` walk the whole module tree each time; with
    the layers cached, installing and restoring processors on SD 2.1's UNet takes 0.1 ms of CPU
    instead of 5.3 ms (measured, 1 thread). `capture` runs once per UNet call.
    """
    layers = _LAYERS.get(unet)
    if layers is None:
        layers = {f"{name}.processor": m for name, m in unet.named_modules()
                  if hasattr(m, "set_processor") and hasattr(m, "processor")}
        _LAYERS[unet] = layers
    return layers


@contextlib.contextmanager
def capture(unet: nn.Module, roles: dict[str, str], store: AttentionStore) -> Iterator[AttentionStore]:
    """Install capture processors on `roles` layers, fused SDPA elsewhere; restore on exit."""
    layers = attention_layers(unet)
    unknown = set(roles) - set(layers)
    if unknown:
        raise KeyError(f"no such attention layers: {sorted(unknown)[:3]}")
    original = {name: m.processor for name, m in layers.items()}
    fused = AttnProcessor2_0()
    for name, m in layers.items():
        m.set_processor(CaptureProcessor(store, roles[name]) if name in roles else fused)
    try:
        yield store
    finally:
        for name, m in layers.items():
            m.set_processor(original[name])
