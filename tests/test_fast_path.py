"""The fast engine computes what the plain formulas compute (fp32, CPU).

- WAS maps via fused SDPA with the class maps as extra value channels == R @ A_sa^T written out
  with explicit probabilities: step loss AND its gradient to the class embeddings;
- fit with the capture processors installed once == installing them around every UNet call;
- the lab's reference-style baseline (explicit attention, batch of two, broadcast WAS)
  sees the same maps as the engine.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from slimeseg import Segmenter, maps
from slimeseg.attention import AttentionStore, capture
from slimeseg.losses import ce_loss, class_weights, ldm_loss, mse_loss


def _inputs(sd, k=4, side=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, side, side, generator=gen)
    base = torch.randn(1, 77, sd.context_dim, generator=gen)
    mask = torch.randint(0, k, (side, side), generator=gen)
    return latents, base, mask


def _step_losses(sd, latents, context, mask, k, capture_self_probs):
    """One step's forward; returns (fast loss, plain loss) from the same UNet pass."""
    hw = tuple(latents.shape[-2:])
    store = AttentionStore(k, hw, values_fn=maps.train_values)
    t = torch.tensor([50])
    with capture_self_probs(sd.unet, sd.plan.roles(), store) as self_probs:
        pred = sd.unet(latents, t, encoder_hidden_states=context).sample
    scores = maps.class_scores(store, hw)[-1]
    ce = ce_loss(scores, mask, class_weights(mask, k))
    ldm = 0.005 * ldm_loss(pred, torch.zeros_like(pred))
    fast = ce + mse_loss(store.was()[-1], mask) + ldm
    a_sa = torch.stack(self_probs).mean(0)  # explicit (1, N, N), carries gradients
    plain_was = maps.was_direct(maps.train_values(store, hw), a_sa).view(1, k, *hw)[-1]
    plain = ce + mse_loss(plain_was, mask) + ldm
    return fast, plain


def test_fused_was_step_loss_and_gradient_equal_plain(segmenter, capture_self_probs):
    sd, k = segmenter.sd, 4
    latents, base, mask = _inputs(sd, k)
    trainable = base[0, 1:k].clone().requires_grad_(True)
    context = torch.cat([base[:, :1], trainable[None], base[:, k:]], dim=1)
    fast, plain = _step_losses(sd, latents, context, mask, k, capture_self_probs)
    (g_fast,) = torch.autograd.grad(fast, trainable, retain_graph=True)
    (g_plain,) = torch.autograd.grad(plain, trainable)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-6)
    assert g_fast.abs().sum() > 0


def test_fit_with_processors_installed_once_equals_per_call(segmenter, scene, monkeypatch):
    from slimeseg import training
    from slimeseg.attention import CaptureProcessor, attention_layers

    image, mask, classes = scene
    kw = {"image_size": 128, "steps": 3, "progress": False, "seed": 1}
    before = dict(segmenter.sd.unet.attn_processors)
    layers, roles = attention_layers(segmenter.sd.unet), segmenter.sd.plan.roles()
    seen = []

    def spy(step, total, losses):  # during fit, the capture processors stay installed
        seen.append(all(isinstance(layers[n].processor, CaptureProcessor) for n in roles))

    once = segmenter.fit([image], [mask], classes, callback=spy, **kw)
    assert seen == [True] * 3
    assert all(segmenter.sd.unet.attn_processors[n] is p for n, p in before.items())
    # per call: fit installs nothing; every step installs its processors and restores them
    real_step = training.train_step

    def per_call_step(job, state):
        with capture(job.sd.unet, job.sd.plan.roles(), job.store):
            return real_step(job, state)

    monkeypatch.setattr(training, "capture", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(training, "train_step", per_call_step)
    per_call = segmenter.fit([image], [mask], classes, **kw)
    torch.testing.assert_close(once.context, per_call.context, rtol=0, atol=0)
    assert once.history["loss"] == per_call.history["loss"]


def test_baseline_sees_the_same_maps(segmenter):
    from lab.baseline import Baseline

    sd, k = segmenter.sd, 4
    latents, base, _ = _inputs(sd, k)
    hw = tuple(latents.shape[-2:])
    uncond = torch.randn(1, 77, sd.context_dim)
    t = torch.tensor([50])
    store = AttentionStore(k, hw, values_fn=maps.train_values)
    with torch.no_grad():
        with capture(sd.unet, sd.plan.roles(), store):
            sd.unet(latents, t, encoder_hidden_states=base)
        bl = Baseline(sd, k, uncond)
        bl._unet(latents, t, base)
        a_ca, was = bl._maps(hw)
    torch.testing.assert_close(a_ca, maps.class_scores(store, hw)[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(was, store.was()[0], rtol=1e-4, atol=1e-5)
    assert all(isinstance(p, AttnProcessor2_0) or not hasattr(p, "store")
               for p in sd.unet.attn_processors.values())


def test_captured_pass_never_falls_back_to_the_math_attention(segmenter):
    """SDPA's math fallback materialises (N, N); it happens silently when head dims differ."""
    sd, k = segmenter.sd, 4
    latents, base, mask = _inputs(sd, k)
    hw = tuple(latents.shape[-2:])
    store = AttentionStore(k, hw, values_fn=maps.train_values)
    ctx = base.clone().requires_grad_(True)
    with torch.profiler.profile() as prof:
        with capture(sd.unet, sd.plan.roles(), store):
            pred = sd.unet(latents, torch.tensor([50]), encoder_hidden_states=ctx).sample
        (pred.square().mean() + mse_loss(store.was()[0], mask)).backward()
    names = {e.key for e in prof.key_averages()}
    assert "aten::scaled_dot_product_attention" in names
    assert "aten::_scaled_dot_product_attention_math" not in names


def test_channels_last_encode_equals_nchw(segmenter, scene):
    """The VAE encoder runs channels-last (fast kernels); latents equal the NCHW computation."""
    sd = segmenter.sd
    x = torch.from_numpy(scene[0]).permute(2, 0, 1)[None].float() / 255
    fast = sd.encode_image(x)
    assert fast.is_contiguous()  # handed to the UNet in NCHW
    enc = sd.vae_encoder
    with torch.no_grad():
        enc.to(memory_format=torch.contiguous_format)
        try:
            h = enc(x * 2 - 1)
            if sd.quant_conv is not None:
                h = sd.quant_conv(h)
        finally:
            enc.to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, h[:, : h.shape[1] // 2] * sd.scaling_factor, rtol=1e-4, atol=1e-5)


def test_bfloat16_predictions_agree_with_float32(tiny_dir, segmenter, scene):
    """bfloat16 on CPU (opt-in, the fast CPU mode) segments like float32 and can still fit."""
    image, mask, classes = scene
    learned = segmenter.fit([image], [mask], classes, steps=30, image_size=128, augment=False,
                            seed=0, progress=False)
    bf16 = Segmenter.from_pretrained(str(tiny_dir), device="cpu", dtype="bfloat16")
    assert bf16.sd.dtype is torch.bfloat16
    ref = segmenter.predict(image, learned)
    got = bf16.predict(image, learned)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert (got == ref).mean() > 0.95
    learned16 = bf16.fit([image], [mask], classes, steps=3, image_size=128, augment=False, seed=0,
                         progress=False)
    assert torch.isfinite(learned16.context).all()
    assert learned16.context.dtype is torch.float32  # the artifact stays float32
