"""Inference speed (issue 28, item 5; docs/speed.md "Inference"): the fused pass encodes each
image once, and the precision settings (`encoder_dtype`, `autocast`, `match_dtype`) predict, deterministically,
on the tiny SD; `benchmarks/infer_speed.py --quick` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slimeseg import SlimeConfig, inference, models

ROOT = Path(__file__).resolve().parents[1]
F32 = {"encoder_dtype": "model", "autocast": "off"}  # the model's own precision throughout


@pytest.fixture(scope="module")
def fitted(segmenter, scene):
    image, mask, classes = scene
    return segmenter.fit([image], [mask], classes, steps=2, image_size=128, augment=False, seed=0,
                         progress=False)


def test_fused_pass_encodes_each_image_once_and_equals_its_halves(segmenter, fitted, scene, monkeypatch):
    """Fused, the UNet runs on 2B rows but the VAE encodes the B images once; the scores equal
    SLiMe's and matching's own passes fused (what the 2B batch of copies computed before), small
    parts then raised."""
    sd, image = segmenter.sd, scene[0]
    cfg = SlimeConfig.from_dict(fitted.config)
    x = torch.stack([inference.model_input(image, cfg), inference.model_input(image[:, ::-1].copy(), cfg)])
    slime = inference.score_batch(sd, x, fitted, cfg.replace(method="slime"))
    votes = inference.score_batch(sd, x, fitted, cfg.replace(method="match", match_small=0.0))  # raw votes
    encoded: list[int] = []
    real = sd.encode_image

    def counting(images, dtype=None):
        encoded.append(images.shape[0])
        return real(images, dtype)

    monkeypatch.setattr(sd, "encode_image", counting)
    fused = inference.score_batch(sd, x, fitted, cfg.replace(method="fuse"))
    assert encoded == [2]
    expected = inference.small_part_boost(inference.fuse(slime, votes, cfg), fitted, cfg)  # (B, K, h, w)
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("settings", [{"encoder_dtype": "bfloat16"}, {"autocast": "bfloat16"},
                                      {"match_dtype": "bfloat16"},
                                      {"encoder_dtype": "bfloat16", "autocast": "bfloat16",
                                       "match_dtype": "bfloat16"}])
def test_precision_settings_predict_deterministically(segmenter, fitted, scene, settings):
    sd, image = segmenter.sd, scene[0]
    ref = segmenter.predict(image, fitted, **F32)
    got = segmenter.predict(image, fitted, **settings)
    again = segmenter.predict(image, fitted, **settings)
    assert got.shape == ref.shape == image.shape[:2] and got.dtype == np.uint8
    np.testing.assert_array_equal(got, again)
    assert (got == ref).mean() > 0.9  # bfloat16 moves a few pixels, not the segmentation
    assert sd.dtype == torch.float32 and next(sd.vae_encoder.parameters()).dtype == torch.float32
    batch = segmenter.predict_batch([image, image[:, ::-1].copy()], fitted, batch_size=2, **settings)
    np.testing.assert_array_equal(batch[0], got)


def test_bfloat16_encoder_is_a_copy_made_once(segmenter, scene):
    sd = segmenter.sd
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a = sd.encode_image(x, torch.bfloat16)
    encoder, _ = sd.encoder_in(torch.bfloat16)
    assert sd.encoder_in(torch.bfloat16)[0] is encoder and encoder is not sd.vae_encoder
    assert next(encoder.parameters()).dtype == torch.bfloat16
    assert a.dtype == sd.dtype and a.is_contiguous()
    ref = sd.encode_image(x)
    assert float((a - ref).norm() / ref.norm()) < 0.05
    assert sd.encoder_in(sd.dtype)[0] is sd.vae_encoder


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_device(segmenter, fitted, scene, monkeypatch, native):
    """"auto" (the default) is the bfloat16 encoder + autocast for a float32 model on a device with
    bfloat16 units, the model's own precision elsewhere; explicit settings win either way."""
    sd, image = segmenter.sd, scene[0]
    monkeypatch.setattr(inference, "native_bfloat16", lambda device: native)
    cfg = SlimeConfig()
    assert (cfg.encoder_dtype, cfg.autocast) == ("auto", "auto")
    assert inference.precision(sd, cfg) == ((torch.bfloat16, True) if native else (None, False))
    assert inference.precision(sd, cfg.replace(**F32)) == (None, False)
    assert inference.precision(sd, cfg.replace(encoder_dtype="bfloat16", autocast="bfloat16")) == (torch.bfloat16, True)
    same = {"encoder_dtype": "bfloat16", "autocast": "bfloat16"} if native else F32
    np.testing.assert_array_equal(segmenter.predict(image, fitted), segmenter.predict(image, fitted, **same))


def test_auto_precision_keeps_a_bfloat16_model_as_it_is(segmenter, monkeypatch):
    monkeypatch.setattr(inference, "native_bfloat16", lambda device: True)
    monkeypatch.setattr(segmenter.sd, "dtype", torch.bfloat16)  # only the dtype is read
    assert inference.precision(segmenter.sd, SlimeConfig()) == (None, False)


@pytest.mark.parametrize("flags, native", [({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True),
                                           ({"avx2", "avx512f"}, False), (set(), False)])
def test_native_bfloat16_reads_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(models, "_cpu_flags", lambda: frozenset(flags))
    assert models.native_bfloat16(torch.device("cpu")) is native
    assert models.native_bfloat16(torch.device("meta")) is False


@pytest.mark.parametrize("bad", [{"encoder_dtype": "float16"}, {"autocast": "on"},
                                 {"match_dtype": "float16"}])
def test_precision_settings_are_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SlimeConfig(**bad)


def test_infer_speed_quick(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "infer_speed.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {(r["dtype"], r["row"]) for r in data["results"]}
    assert ("float32", "default") in rows and ("float32", "bf16-encoder") in rows
    for r in data["results"]:
        assert r["ratio"] > 0 and len(r["cpu_runs"]) == data["repeats"]
