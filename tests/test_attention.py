"""Attention capture: map shapes, fused WAS == the written-out formula, processors restored."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from slimeseg import maps
from slimeseg.attention import AttentionStore, CaptureProcessor, capture


def _run(sd, store, latents, context, t=50):
    with capture(sd.unet, sd.plan.roles(), store):
        return sd.unet(latents, torch.tensor([t]), encoder_hidden_states=context).sample


@pytest.fixture(scope="module")
def inputs(segmenter):
    torch.manual_seed(0)
    sd = segmenter.sd
    return sd, torch.randn(1, 4, 16, 16), torch.randn(1, 77, sd.context_dim)


def test_shapes_and_fused_was_matches_formula(inputs, capture_self_probs):
    sd, latents, context = inputs
    k = 4
    store = AttentionStore(k, (16, 16), values_fn=maps.train_values)
    with capture_self_probs(sd.unet, sd.plan.roles(), store) as self_probs:
        sd.unet(latents, torch.tensor([50]), encoder_hidden_states=context)
    assert len(store.cross) == len(sd.plan.cross)
    assert {tuple(m.shape) for m in store.cross} == {(1, k, 4, 4), (1, k, 8, 8)}  # 1/4 and 1/2
    assert store.was().shape == (1, k, 16, 16)
    assert len(self_probs) == len(sd.plan.self_) == store.was_count
    a_sa = torch.stack(self_probs).mean(0)  # (1, N, N): layer- and head-averaged
    torch.testing.assert_close(a_sa.sum(-1), torch.ones(1, 256))  # rows sum to 1
    r = maps.train_values(store, (16, 16))  # (1, K, N)
    direct = maps.was_direct(r, a_sa).view(1, k, 16, 16)
    torch.testing.assert_close(store.was(), direct, rtol=1e-4, atol=1e-5)


def test_class_scores_are_head_and_layer_means(inputs):
    sd, latents, context = inputs
    store = AttentionStore(3, (16, 16), want_was=False)
    _run(sd, store, latents, context)
    a_ca = maps.class_scores(store, (16, 16))
    manual = torch.stack([torch.nn.functional.interpolate(m, size=(16, 16), mode="bilinear")
                          for m in store.cross]).mean(0)
    torch.testing.assert_close(a_ca, manual)
    assert a_ca.shape == (1, 3, 16, 16)


def test_capture_leaves_unet_output_unchanged(inputs):
    sd, latents, context = inputs
    t = torch.tensor([50])
    plain = sd.unet(latents, t, encoder_hidden_states=context).sample
    store = AttentionStore(4, (16, 16), values_fn=maps.train_values)
    captured = _run(sd, store, latents, context)
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-5)


def test_processors_restored_even_on_error(inputs):
    sd, latents, context = inputs
    before = dict(sd.unet.attn_processors)
    store = AttentionStore(4, (16, 16), values_fn=maps.train_values)
    with capture(sd.unet, sd.plan.roles(), store):
        procs = sd.unet.attn_processors
        captured = {n for n, p in procs.items() if isinstance(p, CaptureProcessor)}
        assert captured == set(sd.plan.cross) | set(sd.plan.self_)
        assert all(isinstance(p, AttnProcessor2_0) for n, p in procs.items() if n not in captured)
    assert all(sd.unet.attn_processors[n] is p for n, p in before.items())
    with pytest.raises(RuntimeError), capture(sd.unet, sd.plan.roles(), store):
        raise RuntimeError("boom")
    assert all(sd.unet.attn_processors[n] is p for n, p in before.items())


def test_gradients_flow_through_was_to_context(inputs):
    sd, latents, context = inputs
    ctx = context.clone().requires_grad_(True)
    store = AttentionStore(4, (16, 16), values_fn=maps.train_values)
    _run(sd, store, latents, ctx)
    store.was().sum().backward()
    assert ctx.grad is not None and ctx.grad[0, :4].abs().sum() > 0
    assert all(p.grad is None for p in sd.unet.parameters())
