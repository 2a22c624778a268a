"""Fit speed settings (issue 28): cached views and local gradients train, predict, repeat with a
seed, and local gradients are autograd's gradient of the detached graph (resuming exactly with
each setting: test_fit.test_resume_matches_uninterrupted_run)."""

from __future__ import annotations

import pytest
import torch

from slimeseg import SlimeConfig, maps
from slimeseg.attention import AttentionStore, capture
from slimeseg.examples import prepare_examples
from slimeseg.losses import ce_loss, class_weights, mse_loss
from slimeseg.training import TrainingJob, full_step, step_lr, step_size, view_pool, with_classes

FAST = dict(image_size=128, steps=6, progress=False)


def _losses(sd, store: AttentionStore, trainable: torch.Tensor, base: torch.Tensor, latents: torch.Tensor,
            mask: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CE + MSE of one capture forward in `mode` and their gradient w.r.t. `trainable` (K-1, D)."""
    trainable = trainable.detach().clone().requires_grad_(True)
    context = with_classes(trainable, base)  # (1, 77, D)
    store.reset()
    store.grad_mode = mode
    with capture(sd.unet, sd.plan.roles(), store), (torch.no_grad() if mode == "local" else torch.enable_grad()):
        sd.unet(latents, torch.tensor([50]), encoder_hidden_states=context)
    hw = store.latent_hw
    scores = maps.class_scores(store, hw)[-1]  # (K, h, w)
    loss = ce_loss(scores, mask, class_weights(mask, store.num_classes)) + mse_loss(store.was()[-1], mask)
    (grad,) = torch.autograd.grad(loss, trainable)
    return loss.detach(), grad  # (), (K-1, D)


def test_local_gradients_equal_autograd_of_the_detached_graph(segmenter):
    """What is exactly comparable: with the hidden states entering each captured layer detached,
    the CE and MSE losses depend on the embeddings only through those layers' class keys (cross)
    and the class maps R spread by the WAS products (self), so autograd's gradient of that graph
    is what the local path computes while the UNet runs without one. The forward values are the
    same in every mode; the full gradient (through the whole UNet) is a different quantity."""
    sd = segmenter.sd
    torch.manual_seed(0)
    k, hw = 4, (16, 16)
    base = sd.encode_prompt(" ".join(["part"] * k))  # (1, 77, D)
    trainable = base[0, 1:k] + 0.1 * torch.randn(k - 1, sd.context_dim)  # (K-1, D)
    latents = torch.randn(1, 4, *hw)
    mask = torch.zeros(hw, dtype=torch.long)
    mask[2:9, 3:12], mask[9:14, 5:10], mask[4:7, 12:15] = 1, 2, 3  # (h, w)
    store = AttentionStore(k, hw, values_fn=maps.train_values)
    loss_full, g_full = _losses(sd, store, trainable, base, latents, mask, "full")
    loss_det, g_det = _losses(sd, store, trainable, base, latents, mask, "detached")
    loss_local, g_local = _losses(sd, store, trainable, base, latents, mask, "local")
    torch.testing.assert_close(loss_local, loss_full, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss_det, loss_full, rtol=1e-6, atol=1e-7)
    assert g_local.abs().amax() > 0
    torch.testing.assert_close(g_local, g_det, rtol=1e-5, atol=1e-8)
    # the full gradient also flows through the values and every later layer: not the same one
    assert (g_full - g_det).abs().amax() > 1e-3 * g_det.abs().amax()
    assert all(p.grad is None for p in sd.unet.parameters())


def test_local_step_keeps_no_graph_outside_the_captured_layers(segmenter):
    """A local forward records only the captured layers' class-token parts: the UNet's output
    carries no gradient, the captured maps do."""
    sd = segmenter.sd
    k, hw = 3, (16, 16)
    base = sd.encode_prompt(" ".join(["part"] * k))
    trainable = base[0, 1:k].clone().requires_grad_(True)
    store = AttentionStore(k, hw, values_fn=maps.train_values)
    store.grad_mode = "local"
    context = with_classes(trainable, base)  # (1, 77, D), outside no_grad: it carries the gradient
    with capture(sd.unet, sd.plan.roles(), store), torch.no_grad():
        out = sd.unet(torch.randn(1, 4, *hw), torch.tensor([50]), encoder_hidden_states=context).sample
    assert not out.requires_grad
    assert all(m.requires_grad for m in store.cross) and store.was_sum.requires_grad


def test_full_step_schedule():
    assert all(full_step(SlimeConfig(), s) for s in range(5))
    assert not any(full_step(SlimeConfig(gradients="local"), s) for s in range(5))
    local = SlimeConfig(gradients="local", full_every=3)
    assert [full_step(local, s) for s in range(6)] == [False, False, True, False, False, True]


def test_coarse_to_fine_and_cosine_schedules():
    cfg = SlimeConfig(image_size=256, coarse_size=128, coarse_share=0.75)
    assert [step_size(cfg, s, 8) for s in range(8)] == [128] * 6 + [256] * 2
    assert {step_size(SlimeConfig(image_size=256), s, 8) for s in range(8)} == {256}
    assert step_lr(SlimeConfig(), 5, 10) == 0.1
    cos = SlimeConfig(lr_schedule="cosine")
    assert step_lr(cos, 0, 10) == pytest.approx(0.1) and step_lr(cos, 5, 10) == pytest.approx(0.05)
    assert step_lr(cos, 9, 10) > 0


@pytest.mark.parametrize("bad", [dict(view_pool=-1), dict(full_every=-2), dict(gradients="sparse"),
                                 dict(gradients="local", use_ce=False, use_mse=False),
                                 dict(image_size=256, coarse_size=256), dict(image_size=256, coarse_size=100),
                                 dict(coarse_share=1.5), dict(lr_schedule="step")])
def test_bad_speed_settings(bad):
    with pytest.raises(ValueError):
        SlimeConfig(**bad)


def test_view_pool_shapes_and_seed(segmenter, scene):
    image, mask, classes = scene
    (ex,) = prepare_examples([image], [mask], classes)
    cfg = SlimeConfig(image_size=128, view_pool=5, seed=2)
    a = view_pool(TrainingJob.create(segmenter.sd, [ex], classes, cfg))
    b = view_pool(TrainingJob.create(segmenter.sd, [ex], classes, cfg))
    c = view_pool(TrainingJob.create(segmenter.sd, [ex], classes, cfg.replace(seed=3)))
    (lat, msk), = a
    assert lat.shape == (5, 4, 16, 16) and msk.shape == (5, 16, 16) and msk.dtype == torch.long
    assert torch.equal(lat, b[0][0]) and torch.equal(msk, b[0][1])
    assert not torch.equal(lat, c[0][0])
    assert len({tuple(m.flatten().tolist()) for m in msk}) > 1  # the views differ
    coarse = TrainingJob.create(segmenter.sd, [ex], classes, cfg.replace(coarse_size=64))
    (lat64, msk64), = view_pool(coarse, 64)  # coarse-to-fine: a pool per input side
    assert lat64.shape == (5, 4, 8, 8) and msk64.shape == (5, 8, 8)
    assert torch.equal(view_pool(coarse)[0][0], lat)  # the full-size pool is the same one


@pytest.mark.parametrize("speed", [dict(view_pool=4), dict(gradients="local"),
                                   dict(view_pool=4, gradients="local", full_every=2),
                                   dict(coarse_size=64, view_pool=4, gradients="local", lr_schedule="cosine"),
                                   dict(coarse_size=64, augment=False)])
def test_speed_settings_train_repeat_and_predict(segmenter, scene, speed):
    image, mask, classes = scene
    k = len(classes)
    base = segmenter.sd.encode_prompt(" ".join(["part"] * k))[0]
    a = segmenter.fit([image], [mask], classes, seed=3, **FAST, **speed)
    b = segmenter.fit([image], [mask], classes, seed=3, **FAST, **speed)
    c = segmenter.fit([image], [mask], classes, seed=4, **FAST, **speed)
    assert torch.equal(a.context, b.context) and a.history["loss"] == b.history["loss"]
    assert not torch.equal(a.context, c.context)
    assert (a.context[1:k] - base[1:k]).abs().amax(-1).min() > 0  # each class moved
    torch.testing.assert_close(a.context[k:], base[k:])
    assert all(p.grad is None for p in segmenter.sd.unet.parameters())
    assert a.config["view_pool"] == speed.get("view_pool", 0)
    assert segmenter.predict(image, a, image_size=128).shape == image.shape[:2]
