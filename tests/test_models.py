"""Model loading through from_pretrained, and layer selection derived from the UNet's structure."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from slimeseg.errors import ModelError
from slimeseg.models import config_fingerprint, load_stable_diffusion, plan_layers


def _meta_unet(**config) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


SD21_BASE = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                 use_linear_projection=True, sample_size=64)
SD15 = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
            cross_attention_dim=768, sample_size=64)


@pytest.mark.parametrize("config", [SD21_BASE, SD15], ids=["sd2.1-base", "sd1.5"])
def test_plan_matches_reference_layers_on_sd_shapes(config):
    plan = plan_layers(_meta_unet(**config))
    tb = "transformer_blocks.0"
    assert plan.cross == [f"up_blocks.1.attentions.{j}.{tb}.attn2.processor" for j in range(3)] + [
        f"up_blocks.2.attentions.{j}.{tb}.attn2.processor" for j in range(2)]
    assert plan.self_ == [f"up_blocks.3.attentions.{j}.{tb}.attn1.processor" for j in range(3)]


def test_tiny_model_loads_through_from_pretrained(tiny_dir):
    sd = load_stable_diffusion(str(tiny_dir), device="cpu")
    assert sd.model_id == str(tiny_dir)
    assert not hasattr(sd, "vae") and not hasattr(sd.vae_encoder, "decoder")  # decoder never kept
    assert all(not p.requires_grad for p in sd.unet.parameters())
    assert sd.plan.cross and sd.plan.self_
    assert all(".attn2." in n for n in sd.plan.cross) and all(".attn1." in n for n in sd.plan.self_)
    latents = sd.encode_image(torch.rand(2, 3, 256, 256))
    assert latents.shape == (2, 4, 32, 32)
    assert 0.7 < latents.std().item() < 1.3  # scaling factor gives unit-variance latents
    context = sd.encode_prompt("part part part")
    assert context.shape == (1, 77, sd.context_dim)


def test_fingerprint_depends_on_structure_only(tiny_dir, other_tiny_dir):
    a = load_stable_diffusion(str(tiny_dir), device="cpu")
    b = load_stable_diffusion(str(other_tiny_dir), device="cpu")
    assert a.fingerprint != b.fingerprint
    assert config_fingerprint({"x": 1, "_name_or_path": "a"}) == config_fingerprint({"x": 1, "_name_or_path": "b"})


def test_missing_model_is_one_line_error(tmp_path):
    with pytest.raises(ModelError) as err:
        load_stable_diffusion(str(tmp_path / "nope"), device="cpu", local_files_only=True)
    assert "nope" in str(err.value) and "\n" not in str(err.value)


def test_bad_dtype_and_device():
    from slimeseg.models import pick_device, pick_dtype

    with pytest.raises(ModelError):
        pick_dtype("float8", torch.device("cpu"))
    assert pick_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            pick_device("cuda")


def test_offline_without_the_model_says_so_at_once(monkeypatch):
    """No hub and no cached copy: one line that says so and names the way out, without retries."""
    import time

    from slimeseg import models

    monkeypatch.setattr(models, "hub_unreachable", lambda timeout=3.0: "cannot resolve huggingface.co")
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        load_stable_diffusion("someone/not-cached-model", device="cpu", local_files_only=False)
    msg = str(err.value)
    assert time.monotonic() - start < 5
    assert "cannot be reached (cannot resolve huggingface.co)" in msg and "not in the local cache" in msg
    assert "--model" in msg and "tiny-model" in msg and "\n" not in msg
    with pytest.raises(ModelError, match="offline mode"):  # HF_HUB_OFFLINE=1, as the tests run
        load_stable_diffusion("someone/not-cached-model", device="cpu")
    with pytest.raises(ModelError, match="no such model folder"):
        load_stable_diffusion("./no/such/folder", device="cpu")


def test_hub_probe_is_certain_only_when_it_can_be(monkeypatch):
    import socket

    from huggingface_hub import constants

    from slimeseg.models import hub_unreachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_dns)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert "cannot resolve" in hub_unreachable()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # a proxy may reach it: not certain
    assert hub_unreachable() is None
