"""A baseline that computes SLiMe the way the reference code does, for side-by-side timings.

Not part of the library, and deliberately not lean:
- every UNet pass runs on a batch of two (unconditional + conditional); the LDM loss applies
  classifier-free guidance with scale 100;
- captured layers compute attention explicitly (softmax(QK^T/sqrt(d)) materialised per head and
  kept by autograd for backward), like the classic diffusers `AttnProcessor`; other layers use
  fused SDPA;
- the WAS map is built by broadcasting through a K x 4096 x 64 x 64 tensor:
  `(sa[None] * R.flatten(1, 2)[..., None, None]).sum(1)` with sa (N, h, w) indexed (key, query);
- each optimisation step runs an extra no-grad pass only to log the train IoU;
- processors are installed and removed around every UNet call.
The losses are the library's (same formulas), so only the way of computing differs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from slimeseg.attention import finish, project
from slimeseg.losses import ce_loss, class_weights, ldm_loss, mse_loss
from slimeseg.models import StableDiffusion


class BaselineStore:
    """What the explicit processors record during one UNet pass."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.cross: list[torch.Tensor] = []  # (B, K, h, w) pre-softmax scores, head mean
        self.self_probs: list[torch.Tensor] = []  # (B, N, N) probabilities, head mean

    def reset(self) -> None:
        self.cross.clear()
        self.self_probs.clear()


class BaselineProcessor:
    """Explicit attention (scores -> softmax -> bmm) that records maps, as the reference does."""

    def __init__(self, store: BaselineStore, role: str):
        self.store = store
        self.role = role

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        q, k, v = project(attn, hidden_states, encoder_hidden_states)  # (B, H, N, d), (B, H, M, d)
        b, heads, n, d = q.shape
        q, k, v = (x.reshape(b * heads, x.shape[2], d) for x in (q, k, v))  # the classic (B*H, N, d)
        scores = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype,
                                           device=q.device), q, k.transpose(-1, -2),
                               beta=0, alpha=attn.scale)  # (B*H, N, M), as the classic processor
        probs = scores.softmax(-1)
        side = int(round(n ** 0.5))
        if self.role == "cross":
            kk = self.store.num_classes
            cls = scores[..., :kk].view(b, heads, n, kk).mean(1)  # (B, N, K)
            self.store.cross.append(cls.transpose(1, 2).reshape(b, kk, side, side))
        else:
            self.store.self_probs.append(probs.view(b, heads, n, n).mean(1))
        return finish(attn, torch.bmm(probs, v).view(b, heads, n, d), residual)


class Baseline:
    """Reference-style training step and inference on a loaded StableDiffusion."""

    def __init__(self, sd: StableDiffusion, num_classes: int, uncond: torch.Tensor,
                 guidance: float = 100.0, t_range: tuple[int, int] = (5, 100)):
        self.sd = sd
        self.k = num_classes
        self.uncond = uncond.to(sd.device, sd.dtype)  # (1, 77, D)
        self.guidance = guidance
        self.t_range = t_range
        self.store = BaselineStore(num_classes)

    def _unet(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """One batch-of-two pass (uncond + cond) with explicit processors installed around it."""
        unet = self.sd.unet
        original = dict(unet.attn_processors)
        roles = self.sd.plan.roles()
        fused = AttnProcessor2_0()
        unet.set_attn_processor({n: BaselineProcessor(self.store, roles[n]) if n in roles else fused
                                 for n in original})
        self.store.reset()
        try:
            return unet(torch.cat([noisy, noisy]), t.repeat(2),
                        encoder_hidden_states=torch.cat([self.uncond, context.to(self.sd.dtype)])).sample
        finally:
            unet.set_attn_processor(dict(original))

    def _maps(self, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A_ca (K, h, w) and the broadcast WAS maps S (K, h, w) of the conditional half."""
        resized = [m[1:] if tuple(m.shape[-2:]) == hw else
                   F.interpolate(m[1:], size=hw, mode="bilinear", align_corners=False)
                   for m in self.store.cross]
        a_ca = torch.stack(resized).mean(0)[0]  # (K, h, w)
        r = a_ca.softmax(0)  # (K, h, w)
        a_sa = torch.stack([p[1] for p in self.store.self_probs]).mean(0)  # (N query, N key)
        sa = a_sa.transpose(0, 1).reshape(-1, *hw)  # (N key, h, w query)
        was = (sa[None] * r.flatten(1, 2)[..., None, None]).sum(1)  # via (K, N, h, w)
        return a_ca, was

    def step(self, latents: torch.Tensor, mask_lo: torch.Tensor, trainable: torch.Tensor,
             base: torch.Tensor, optimizer: torch.optim.Optimizer, gen: torch.Generator,
             alpha: float = 1.0, beta: float = 0.005) -> dict[str, float]:
        """One reference-style optimisation step plus its train-IoU logging pass."""
        sd, k = self.sd, self.k
        hw = tuple(latents.shape[-2:])
        t = torch.randint(self.t_range[0], self.t_range[1] + 1, (1,), generator=gen).to(sd.device)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        noisy = sd.add_noise(latents, noise, t)
        context = torch.cat([base[:, :1], trainable[None], base[:, k:]], dim=1)
        pred2 = self._unet(noisy, t, context)
        pred = pred2[:1] + self.guidance * (pred2[1:] - pred2[:1])
        a_ca, was = self._maps(hw)
        loss = (ce_loss(a_ca.float(), mask_lo, class_weights(mask_lo, k))
                + alpha * mse_loss(was.float(), mask_lo)
                + beta * ldm_loss(pred, sd.ldm_target(latents, noise, t)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.store.reset()
        # the reference's extra pass, only to log the train IoU
        with torch.no_grad():
            context = torch.cat([base[:, :1], trainable[None], base[:, k:]], dim=1)
            self._unet(noisy, t, context)
            _, was = self._maps(hw)
            labels = was.argmax(0)
            inter = [((labels == c) & (mask_lo == c)).sum() for c in range(k)]
            union = [((labels == c) | (mask_lo == c)).sum() for c in range(k)]
            iou = float(np.mean([float(i) / max(float(u), 1.0) for i, u in zip(inter, union, strict=True)]))
        self.store.reset()
        return {"loss": float(loss.detach()), "train_iou": iou}

    @torch.no_grad()
    def predict(self, image: torch.Tensor, context: torch.Tensor, t_test: int = 100,
                seed: int = 0) -> np.ndarray:
        """Label map (H, W) for one (3, H, W) image in [0, 1] at the model size."""
        sd = self.sd
        latents = sd.encode_image(image[None])
        hw = tuple(latents.shape[-2:])
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(latents)
        t = torch.tensor([t_test], device=sd.device)
        self._unet(sd.add_noise(latents, noise, t), t, context.to(sd.device))
        _, was = self._maps(hw)
        self.store.reset()
        up = F.interpolate(was[None].float(), size=image.shape[-2:], mode="bilinear", align_corners=False)
        return up[0].argmax(0).cpu().numpy().astype(np.uint8)
