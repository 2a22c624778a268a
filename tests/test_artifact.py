"""The learned artifact: round trip, wrong model, newer format, corrupt files."""

from __future__ import annotations

import json

import pytest
import torch

from slimeseg import Learned, Segmenter
from slimeseg.errors import ArtifactError


@pytest.fixture(scope="module")
def learned(segmenter, scene):
    image, mask, classes = scene
    return segmenter.fit([image], [mask], classes, image_size=128, steps=3, progress=False)


def test_round_trip(learned, tmp_path, segmenter, scene):
    path = learned.save(tmp_path / "a.safetensors")
    back = Learned.load(path)
    assert torch.equal(back.context, learned.context)
    assert back.classes == learned.classes and back.fingerprint == learned.fingerprint
    assert back.config == learned.config and back.image_hashes == learned.image_hashes
    assert back.model_id == segmenter.sd.model_id and not back.state
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left
    image = scene[0]
    segmenter.set_learned(learned)
    a = segmenter.predict(image)
    segmenter.load(path)
    assert (segmenter.predict(image) == a).all()


def test_wrong_model_names_both(learned, tmp_path, other_tiny_dir):
    path = learned.save(tmp_path / "a.safetensors")
    other = Segmenter.from_pretrained(str(other_tiny_dir), device="cpu")
    with pytest.raises(ArtifactError) as err:
        other.load(path)
    msg = str(err.value)
    assert learned.model_id in msg and str(other_tiny_dir) in msg and "\n" not in msg


def test_newer_format_and_corrupt_files(learned, tmp_path):
    from safetensors.torch import save_file

    newer = tmp_path / "newer.safetensors"
    meta = learned.metadata() | {"format_version": 99}
    save_file({"context": learned.context}, str(newer), metadata={"slimeseg": json.dumps(meta)})
    with pytest.raises(ArtifactError, match="newer slimeseg"):
        Learned.load(newer)
    good = learned.save(tmp_path / "good.safetensors")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a file" * 10)
    pickle_like = tmp_path / "embedding.pth"
    torch.save({"x": 1}, pickle_like)
    plain = tmp_path / "plain.safetensors"
    save_file({"context": learned.context}, str(plain))
    for bad in (truncated, garbage, pickle_like, plain, tmp_path / "missing.safetensors"):
        with pytest.raises(ArtifactError) as err:
            Learned.load(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
