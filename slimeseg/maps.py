"""From captured attention to per-class maps: A_ca, the WAS values R, and the final scores.

Shapes follow METHOD.md with (h, w) the latent resolution (64x64 for 512 px images on SD).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import AttentionStore


def _mean_resized(maps: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize each (B, K, h', w') map to hw and average over layers: (B, K, h, w)."""
    if not maps:
        raise RuntimeError("no cross-attention map was captured")
    total = None
    for m in maps:
        r = m if tuple(m.shape[-2:]) == hw else F.interpolate(m, size=hw, mode="bilinear",
                                                                 align_corners=False)
        total = r if total is None else total + r
    return total / len(maps)


def class_scores(store: AttentionStore, hw: tuple[int, int]) -> torch.Tensor:
    """A_ca: pre-softmax class-token scores, head- and layer-averaged, at hw: (B, K, h, w)."""
    return _mean_resized(store.cross, hw)


def class_probs(store: AttentionStore, hw: tuple[int, int]) -> torch.Tensor:
    """Reference variant: softmax over all 77 tokens, then head- and layer-averaged: (B, K, h, w)."""
    return _mean_resized(store.cross_probs, hw)


def train_values(store: AttentionStore, hw: tuple[int, int]) -> torch.Tensor:
    """R for training and default inference: softmax of A_ca over the K classes: (B, K, h*w)."""
    return class_scores(store, hw).softmax(1).flatten(2)


def reference_passed(store: AttentionStore, threshold: float) -> torch.Tensor:
    """The classes the reference keeps in a crop: 77-token probability peak >= threshold: (B, K)."""
    return class_probs(store, store.latent_hw).flatten(2).amax(-1) >= threshold


def reference_values(store: AttentionStore, hw: tuple[int, int],
                     threshold: float | None = None) -> torch.Tensor:
    """R as the reference code's test time: 77-token probabilities; with a `threshold`, classes
    whose peak is below it are dropped (zeroed) and the FIRST kept class (background unless it was
    dropped) is zeroed below its mean, as its indexing does; without one, background is: (B, K, N)."""
    probs = class_probs(store, hw).flatten(2).clone()  # (B, K, N)
    if threshold is None:
        first = torch.zeros(probs.shape[0], dtype=torch.long, device=probs.device)
    else:
        passed = reference_passed(store, threshold)  # (B, K)
        probs = probs * passed[..., None]
        first = passed.float().argmax(1)  # the first kept class (0 when none is kept: all zero anyway)
    rows = torch.arange(probs.shape[0], device=probs.device)
    m = probs[rows, first]  # (B, N)
    probs[rows, first] = torch.where(m > m.mean(-1, keepdim=True), m, torch.zeros_like(m))
    return probs


def was_direct(values: torch.Tensor, self_attention: torch.Tensor) -> torch.Tensor:
    """S = R @ A_sa^T written out (the reference formula), for checks: (B, K, N)."""
    return values @ self_attention.transpose(-1, -2)


def reference_rescale(was: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Min-max rescale each class's WAS map into that class's cross-attention range: (B, K, h, w)."""
    s = was.flatten(2)
    p = probs.flatten(2)
    s_min, s_max = s.amin(-1, keepdim=True), s.amax(-1, keepdim=True)
    p_min, p_max = p.amin(-1, keepdim=True), p.amax(-1, keepdim=True)
    coef = (s_max - s_min) / (p_max - p_min)
    coef = torch.where(torch.isfinite(coef) & (coef != 0), coef, torch.full_like(coef, 1e-7))
    return (s / coef + (p_min - s_min / coef)).view_as(was)


def self_spread(values: torch.Tensor, store: AttentionStore) -> torch.Tensor:
    """Maps known only after the pass (matching's votes, (B, K, h, w) on the latent grid) spread
    the way WAS spreads the class maps: through each kept self-attention layer (`keep_self`),
    resized to the layer's grid and back, averaged over layers and heads: (B, K, h, w). The
    store's last B rows are used (in a fused pass, the matching half)."""
    if not store.self_qk:
        raise RuntimeError("no self-attention layer was kept (AttentionStore.keep_self)")
    b, k, h, w = values.shape
    total = torch.zeros_like(values, dtype=torch.float32)
    for q, key, scale in store.self_qk:
        q, key = q[-b:], key[-b:]  # (B, H, n, d)
        heads, n, d = q.shape[1:]
        hw = store.hw_for(n)
        v = F.interpolate(values.float(), size=hw, mode="bilinear", align_corners=False)  # (B, K, *hw)
        v = v.flatten(2).transpose(1, 2)[:, None].expand(b, heads, n, k).to(q.dtype)  # (B, H, n, K)
        # one head dim, a multiple of 8, for q, k and v: the fused kernel (no (n, n) matrix)
        dim = -(-max(d, k) // 8) * 8
        out = F.scaled_dot_product_attention(F.pad(q, (0, dim - d)), F.pad(key, (0, dim - d)),
                                             F.pad(v, (0, dim - k)), scale=scale)[..., :k]  # (B, H, n, K)
        out = out.float().mean(1).transpose(1, 2).reshape(b, k, *hw)  # (B, K, *hw)
        total += F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    return total / len(store.self_qk)
