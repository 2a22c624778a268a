"""The committed lab SD (tests/assets/lab-sd): loads like any SD checkpoint, has SD's structure,
and its self-attention is peaked and groups parts (what makes WAS maps informative).

Measured on 8 held-out images per kind (its README; lab SD v3): entropy 0.66 / 0.63 of uniform
(car / face), own-part attention 3.1 / 3.0 x uniform (far keys only: 2.0 / 1.9); v1 had 0.57 / 0.55,
3.3 / 3.0 and 1.9 / 1.8; a randomly initialised UNet: 0.995 and 1.01."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from lab.probe import self_attention_stats, top_self_attention_layers
from lab.train_model import tokenize
from slimeseg.synthetic import KIND_CLASSES, World, caption_vocabulary

ASSET = Path(__file__).parent / "assets" / "lab-sd"

@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(ASSET)


@pytest.fixture(scope="module")
def probe_samples() -> list:
    return [World(kind, 256, seed=123).sample(i) for kind in ("car", "face") for i in range(2)]


def test_components_load_on_their_own() -> None:
    unet = UNet2DConditionModel.from_pretrained(ASSET, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(ASSET, subfolder="vae")
    text = CLIPTextModel.from_pretrained(ASSET, subfolder="text_encoder")
    tok = CLIPTokenizer.from_pretrained(ASSET, subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(ASSET, subfolder="scheduler")
    assert unet.config.cross_attention_dim == text.config.hidden_size
    assert vae.config.latent_channels == unet.config.in_channels == 4
    assert len(tok) == text.config.vocab_size
    assert sched.config.num_train_timesteps == 1000


def test_weights_stay_small() -> None:
    total = sum(p.stat().st_size for p in ASSET.rglob("*") if p.is_file())
    assert total < 20e6


def test_has_stable_diffusions_structure(pipe: StableDiffusionPipeline) -> None:
    u = pipe.unet.config
    assert list(u.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert list(u.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert u.use_linear_projection
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8  # SD's VAE downscale
    assert u.sample_size * 8 == 256
    s = pipe.scheduler.config
    assert (s.beta_schedule, s.beta_start, s.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert not s.clip_sample and s.steps_offset == 1
    layers = top_self_attention_layers(pipe.unet)
    assert layers and all(n.startswith("up_blocks.3.") and ".attn1." in n for n in layers)


def test_tokenizer_keeps_every_caption_word_whole(pipe: StableDiffusionPipeline) -> None:
    for word in caption_vocabulary():
        assert len(pipe.tokenizer(word).input_ids) == 3, word


@torch.no_grad()
def test_latents_have_about_unit_variance(pipe: StableDiffusionPipeline, probe_samples: list) -> None:
    x = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in probe_samples]).float() / 127.5 - 1
    z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    assert 0.6 < float(z.std()) < 1.6


def test_train_model_cli_writes_a_loadable_model(tmp_path: Path) -> None:
    """`python -m lab.train_model` end to end at toy size: diffusers folder, report, samples."""
    import json

    from lab.train_model import main

    out = tmp_path / "lab"
    assert main([str(out), "--size", "64", "--images", "8", "--vae-steps", "3",
                 "--unet-steps", "3", "--seed", "1"]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.unet.config.sample_size == 8
    report = json.loads((out / "training.json").read_text())
    assert (report["vae_steps"], report["unet_steps"], report["qk_scale"]) == (3, 3, 10.0)
    assert {"trained/car", "init/car", "random/face"} <= set(report["attention"])
    assert (out / "samples.png").stat().st_size > 0
    assert f"python -m lab.train_model {out} --size 64 --images 8" in (out / "README.md").read_text()


@pytest.mark.parametrize("kind", ["car", "face"])
def test_self_attention_is_peaked_and_groups_parts(pipe: StableDiffusionPipeline, kind: str) -> None:
    samples = [World(kind, 256, seed=2000).sample(i) for i in range(3)]
    with torch.no_grad():
        emb = pipe.text_encoder(tokenize(pipe.tokenizer, [s.caption for s in samples]))[0]
    stats = self_attention_stats(pipe.unet, pipe.vae, pipe.scheduler, emb, [s.image for s in samples],
                                 [s.mask for s in samples], [KIND_CLASSES[kind]] * len(samples))
    assert stats.entropy_ratio < 0.75
    assert stats.own_part_ratio > 2.0
    assert stats.far_own_part_ratio > 1.4


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.parent.name}/{k}": v for k, v in load_file(f).items()})
    return out


def _stop_at(monkeypatch, train_model, *lines: str) -> list[str]:
    """Send SIGINT to ourselves when the trainer logs a line starting with each of `lines`, in
    order (one signal each); returns the list of those not reached yet."""
    import os
    import signal

    triggers = list(lines)

    def fake_print(*a, **kw) -> None:
        if triggers and " ".join(map(str, a)).startswith(triggers[0]):
            triggers.pop(0)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_model, "print", fake_print, raising=False)
    return triggers


def test_interrupted_and_resumed_training_gives_the_same_weights(tmp_path: Path, monkeypatch) -> None:
    """Stopped by SIGINT while rendering, in the VAE and in the UNet phase, then resumed each time:
    bitwise the weights of an uninterrupted run (one thread), and the README lists every run."""
    import json

    from lab import train_model

    args = ["--size", "64", "--images", "8", "--vae-steps", "12", "--unet-steps", "12", "--seed", "3",
            "--val-every", "5", "--v2-fraction", "0.5", "--no-eval"]
    assert train_model.main([str(tmp_path / "a"), *args]) == 0
    assert not (tmp_path / "a.ckpt").exists()  # removed after success

    triggers = _stop_at(monkeypatch, train_model, "rendered images 0..7", "vae step 0/", "unet step 0/")
    out = str(tmp_path / "b")
    assert train_model.main([out, *args]) == 130
    state = torch.load(tmp_path / "b.ckpt" / "state.pt", weights_only=False)
    assert state["phase"] == "render" and (tmp_path / "b.ckpt" / "data" / "train_000000.pt").exists()
    assert train_model.main([out, *args]) == 2  # a checkpoint exists: --resume or remove it
    assert train_model.main([out, "--resume", "--seed", "4"]) == 2  # options must agree
    assert train_model.main([out, "--resume"]) == 130
    state = torch.load(tmp_path / "b.ckpt" / "state.pt", weights_only=False)
    assert (state["phase"], state["vae_step"]) == ("vae", 1)
    assert train_model.main([out, *args, "--resume"]) == 130
    state = torch.load(tmp_path / "b.ckpt" / "state.pt", weights_only=False)
    assert (state["phase"], state["unet_step"], len(state["runs"])) == ("unet", 1, 3)
    assert train_model.main([out, "--resume", "--keep-checkpoint"]) == 0
    assert not triggers

    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 100
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "a" / "training.json").read_text())
    rb = json.loads((tmp_path / "b" / "training.json").read_text())
    assert ra["unet_curve"] == rb["unet_curve"] and ra["unet_val_curve"] == rb["unet_val_curve"]
    assert len(rb["runs"]) == 4 and rb["cpu_s"] > 0
    assert rb["command"] == f"python -m lab.train_model {out} " + " ".join(args)
    readme = (tmp_path / "b" / "README.md").read_text()
    assert "Trained in 4 runs" in readme and f"`python -m lab.train_model {out} --resume`" in readme


def test_unet_phase_restarts_with_another_schedule(tmp_path: Path, monkeypatch) -> None:
    """Stopped in the UNet phase, resumed with --restart-unet and fewer steps: the weights of a run
    that had those steps from the start (one thread), and the README's re-make command says so."""

    from lab import train_model

    args = ["--size", "64", "--images", "8", "--vae-steps", "4", "--seed", "5", "--no-eval"]
    assert train_model.main([str(tmp_path / "a"), *args, "--unet-steps", "3"]) == 0

    _stop_at(monkeypatch, train_model, "unet step 0/")
    out = str(tmp_path / "b")
    assert train_model.main([out, *args, "--unet-steps", "9"]) == 130
    assert train_model.main([out, "--resume", "--unet-steps", "3"]) == 2  # another schedule: say --restart-unet
    assert train_model.main([out, "--restart-unet"]) == 2  # only with --resume and the new step count
    assert train_model.main([out, "--resume", "--unet-steps", "3", "--restart-unet"]) == 0

    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((tmp_path / "b" / "training.json").read_text())
    assert report["unet_steps"] == 3 and len(report["unet_curve"]) == 1
    assert report["command"] == f"python -m lab.train_model {out} " + " ".join([*args, "--unet-steps", "3"])
    assert "UNet phase restarted with --unet-steps 3 (was 9; the 1 step(s) done" in report["runs"][1]["note"]
    assert "UNet phase restarted" in (tmp_path / "b" / "README.md").read_text()


def test_training_continues_from_a_trained_model(tmp_path: Path, monkeypatch, capsys) -> None:
    """--init-from: the init model's VAE and tokenizer are kept as they are, its text encoder and
    UNet train on; stopped and resumed, the same weights as one run; a model of another size or
    width is refused before any training."""

    from lab import train_model

    base = ["--size", "64", "--images", "8", "--seed", "6", "--no-eval"]
    assert train_model.main([str(tmp_path / "init"), *base, "--vae-steps", "3", "--unet-steps", "3"]) == 0
    init = _weights(tmp_path / "init")
    args = [*base, "--init-from", str(tmp_path / "init"), "--unet-steps", "4"]
    assert train_model.main([str(tmp_path / "a"), *args]) == 0
    a = _weights(tmp_path / "a")
    assert a.keys() == init.keys()
    assert all(torch.equal(a[k], init[k]) for k in a if k.startswith("vae/"))
    for part, at_least in (("unet/", 50), ("text_encoder/", 10)):  # both trained on from where they were
        assert sum(not torch.equal(a[k], init[k]) for k in a if k.startswith(part)) > at_least, part
    report = json.loads((tmp_path / "a" / "training.json").read_text())
    init_report = json.loads((tmp_path / "init" / "training.json").read_text())
    assert report["vae_steps"] == 0 and report["scaling_factor"] == init_report["scaling_factor"]
    assert report["unet_val_loss_random"] == pytest.approx(init_report["unet_val_loss"], abs=1e-6)
    readme = (tmp_path / "a" / "README.md").read_text()
    assert f"Continued from `{tmp_path / 'init'}`" in readme and "VAE: the init model's" in readme
    assert "start tied and scaled" not in readme and "scaling factor" in readme and "the init model's)" in readme
    attention = train_model.evaluate_attention(tmp_path / "a", start_from=tmp_path / "init", n_per_kind=2)
    assert set(attention) == {f"{m}/{k}" for m in ("trained", "start", "random") for k in ("car", "face")}

    _stop_at(monkeypatch, train_model, "unet step 0/")
    out = str(tmp_path / "b")
    assert train_model.main([out, *args]) == 130
    assert train_model.main([out, *args, "--resume"]) == 0  # the printed resume command: options agree
    b = _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert set(json.loads((tmp_path / "b" / "training.json").read_text())["attention"]) == set()  # --no-eval

    monkeypatch.undo()
    assert train_model.main([str(tmp_path / "c"), *args, "--size", "128"]) == 2
    assert "unet: sample_size is 8, the run's config says 16" in capsys.readouterr().err
    assert not (tmp_path / "c.ckpt").exists()  # refused before anything was rendered or checkpointed
    assert train_model.main([str(tmp_path / "d"), *args, "--vae-steps", "5"]) == 2
    assert "--vae-steps must be 0" in capsys.readouterr().err
