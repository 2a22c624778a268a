"""Single-file checkpoints: the tiny SD written in the original (LDM) layout loads through
diffusers' `from_single_file` to the very model of its diffusers folder; bad files get one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from slimeseg import Segmenter
from slimeseg.artifact import Learned
from slimeseg.cli import main
from slimeseg.errors import ModelError
from slimeseg.models import load_stable_diffusion
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.synthetic.single_file import save_single_file
from slimeseg.synthetic.tiny import build_tiny_sd


@pytest.fixture(scope="module")
def single_file(tmp_path_factory) -> Path:
    """The tiny SD of `tiny_dir` (seed 0) as one checkpoint in the original layout."""
    return save_single_file(build_tiny_sd(seed=0), tmp_path_factory.mktemp("single") / "tiny.safetensors")


@pytest.fixture(scope="module")
def learned_file(tmp_path_factory, segmenter) -> Path:
    image, mask = shapes_scene(0, 64)
    learned = segmenter.match([image], [mask], SHAPE_CLASSES, image_size=64)
    return learned.save(tmp_path_factory.mktemp("single-learned") / "m.safetensors")


def test_the_file_is_in_the_original_layout(single_file):
    with safe_open(str(single_file), framework="pt") as fh:
        keys = set(fh.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.output_blocks.1.0.skip_connection.weight" in keys
    assert "first_stage_model.encoder.down.0.block.0.conv1.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert not any(k.startswith(("unet.", "vae.", "down_blocks.")) for k in keys)


def test_single_file_loads_the_model_of_the_folder(tiny_dir, segmenter, learned_file, tmp_path):
    # the file is written from the folder's own weights: in the full suite a model built in
    # process late (`build_tiny_sd`) differed from the one the session built first (an earlier
    # test leaves some global state changed; not found yet)
    from diffusers import StableDiffusionPipeline

    single_file = save_single_file(StableDiffusionPipeline.from_pretrained(str(tiny_dir)),
                                   tmp_path / "folder.safetensors")
    sd = load_stable_diffusion(str(single_file), device="cpu", model_config=str(tiny_dir))
    ref = load_stable_diffusion(str(tiny_dir), device="cpu")  # fresh, as the file's
    assert sd.fingerprint == ref.fingerprint  # artifacts of the folder model fit it, and back
    for mine, theirs in ((sd.unet, ref.unet), (sd.vae_encoder, ref.vae_encoder)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
        differ = [(k, a[k].dtype, b[k].dtype) for k in a if not torch.equal(a[k], b[k])]
        assert not differ, differ[:3]
    assert sd.scaling_factor == ref.scaling_factor and sd.prediction_type == ref.prediction_type
    assert torch.equal(sd.encode_prompt("a disc"), ref.encode_prompt("a disc"))  # the file's CLIP
    image = shapes_scene(3, 48)[0]
    seg, folder = Segmenter(sd), Segmenter(ref)
    assert np.array_equal(seg.predict(image, seg.load(learned_file)),
                          folder.predict(image, folder.load(learned_file)))


def test_segment_and_tiny_model_commands(single_file, tiny_dir, learned_file, tmp_path, capsys):
    made = tmp_path / "made.safetensors"
    assert main(["tiny-model", str(tmp_path / "tiny"), "--single-file", str(made)]) == 0
    assert f"--model {made} --model-config {tmp_path / 'tiny'}" in capsys.readouterr().out
    assert made.read_bytes() == single_file.read_bytes()  # the same seed, the same file
    photo = tmp_path / "p.png"
    Image.fromarray(shapes_scene(5, 40)[0]).save(photo)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["segment", str(learned_file), str(photo), "--out", str(a), "--quiet"]) == 0
    assert main(["segment", str(learned_file), str(photo), "--out", str(b), "--quiet", "--model",
                 str(made), "--model-config", str(tmp_path / "tiny")]) == 0
    assert (a / "p.png").read_bytes() == (b / "p.png").read_bytes()


def test_artifacts_made_with_a_single_file_remember_its_configs(single_file, tiny_dir, segmenter,
                                                               tmp_path):
    seg = Segmenter.from_pretrained(str(single_file), device="cpu", model_config=str(tiny_dir))
    image, mask = shapes_scene(0, 64)
    path = seg.match([image], [mask], SHAPE_CLASSES, image_size=64).save(tmp_path / "m.safetensors")
    learned = Learned.load(path)
    assert learned.model_id == str(single_file) and learned.model_config == str(tiny_dir)
    again = Segmenter.from_learned(path, device="cpu")  # no --model, no --model-config: recorded
    assert again.sd.model_id == str(single_file) and again.sd.text is not None
    photo = shapes_scene(4, 40)[0]
    assert np.array_equal(again.predict(photo), segmenter.predict(photo, learned))


def _one_line_error(capsys, argv: list[str], start: str, out: Path) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {start}"), err
    assert not out.exists()  # nothing written
    return err


def test_files_that_are_not_sd_checkpoints_get_one_line(single_file, learned_file, tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.fromarray(shapes_scene(5, 32)[0]).save(photo)
    out = tmp_path / "out"
    base = ["segment", str(learned_file), str(photo), "--out", str(out), "--quiet", "--model"]
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(other))
    _one_line_error(capsys, [*base, str(other)], f"'{other}': not a Stable Diffusion checkpoint in "
                    "the original single-file layout (no model.diffusion_model.* weights)", out)
    _one_line_error(capsys, [*base, str(learned_file)],
                    f"'{learned_file}': these are learned embeddings, not a Stable Diffusion", out)
    text = tmp_path / "text.safetensors"
    text.write_text("not a checkpoint")
    _one_line_error(capsys, [*base, str(text)], f"'{text}': not a readable safetensors file", out)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04")
    _one_line_error(capsys, [*base, str(pickle)], f"'{pickle}' is a file; give a diffusers model "
                    "folder, a hub id or a single-file checkpoint as .safetensors", out)
    # offline, without --model-config: the configs diffusers infers are not in this test's cache
    err = _one_line_error(capsys, [*base, str(single_file)], f"cannot load single-file checkpoint "
                          f"'{single_file}' (configs: the preset diffusers infers): ", out)
    assert err.endswith("; give --model-config DIR, a local diffusers folder of the same "
                        "architecture (its unet/, vae/, scheduler/, text_encoder/, tokenizer/ configs)")
    _one_line_error(capsys, [*base, str(single_file), "--model-config", str(tmp_path / "nope")],
                    f"--model-config '{tmp_path / 'nope'}': no such diffusers folder", out)


def test_model_config_without_a_single_file_is_refused(tiny_dir):
    with pytest.raises(ModelError, match="--model-config goes with a single-file --model"):
        load_stable_diffusion(str(tiny_dir), device="cpu", model_config=str(tiny_dir))
