"""The synthetic world: deterministic, exact masks with every part, truthful captions."""

from __future__ import annotations

import re

import numpy as np
import pytest

from slimeseg.lab import KIND_CLASSES, World, caption_vocabulary, make_split
from slimeseg.lab.world import CAPTION_COLOURS, CAR_GROUNDS, FACE_BACKDROPS
from slimeseg.tokenizer import build_tokenizer

KINDS = sorted(KIND_CLASSES)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_and_index_give_the_same_sample(kind: str) -> None:
    a, b = World(kind, 64, seed=3).sample(5), World(kind, 64, seed=3).sample(5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.caption == b.caption
    other = World(kind, 64, seed=4).sample(5)
    assert not np.array_equal(a.image, other.image)
    assert not np.array_equal(a.image, World(kind, 64, seed=3).sample(6).image)


def test_sample_accepts_a_generator() -> None:
    w = World("car", 64)
    a = w.sample(np.random.default_rng(7))
    b = w.sample(np.random.default_rng(7))
    assert np.array_equal(a.image, b.image)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [64, 128])
def test_images_and_masks_have_the_documented_form_and_every_class(kind: str, size: int) -> None:
    world = World(kind, size, seed=1)
    assert world.classes == KIND_CLASSES[kind] and world.classes[0] == "background"
    for i in range(6):
        s = world.sample(i)
        assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (size, size) and s.mask.dtype == np.uint8
        assert set(np.unique(s.mask).tolist()) == set(range(len(world.classes)))


@pytest.mark.parametrize("kind", KINDS)
def test_mask_is_exactly_the_shape_at_each_pixel_centre(kind: str) -> None:
    # without supersampling the only sample point is the pixel centre: the same labels result
    fine, plain = World(kind, 64, seed=2, supersample=3), World(kind, 64, seed=2, supersample=1)
    for i in range(3):
        a, b = fine.sample(i), plain.sample(i)
        assert np.array_equal(a.mask, b.mask)
        assert a.caption == b.caption
        # anti-aliasing only changes pixels at edges: interiors keep their colour
        interior = np.ones_like(a.mask, dtype=bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                interior &= np.roll(a.mask, (dy, dx), axis=(0, 1)) == a.mask
        edge_gap = np.abs(a.image.astype(int) - b.image.astype(int)).max(-1)
        assert np.median(edge_gap[interior]) <= 6


@pytest.mark.parametrize("kind", KINDS)
def test_captions_use_the_vocabulary_and_one_token_per_word(kind: str) -> None:
    pattern = {
        "car": rf"a ({'|'.join(CAPTION_COLOURS)}) car on ({'|'.join(CAR_GROUNDS)})",
        "face": rf"a face with ({'|'.join(CAPTION_COLOURS)}) hair in front of ({'|'.join(FACE_BACKDROPS)})",
    }[kind]
    vocab = set(caption_vocabulary())
    tok = build_tokenizer(caption_vocabulary())
    captions = [World(kind, 64, seed=0).sample(i).caption for i in range(8)]
    assert len(set(captions)) > 3
    for c in captions:
        assert re.fullmatch(pattern, c), c
        assert set(c.split()) <= vocab
        assert len(tok(c).input_ids) == len(c.split()) + 2  # start + words + end


@pytest.mark.parametrize("kind", KINDS)
def test_part_colours_vary_so_colour_alone_does_not_identify_parts(kind: str) -> None:
    samples = make_split(kind, 12, seed=5, size=64)
    for k in range(1, len(KIND_CLASSES[kind])):
        means = np.array([s.image[s.mask == k].mean(0) for s in samples])
        assert means.std(0).max() > 25, (kind, KIND_CLASSES[kind][k])


def test_make_split_is_the_first_samples_of_the_world() -> None:
    split = make_split("face", 3, seed=9, size=64)
    world = World("face", 64, seed=9)
    assert all(np.array_equal(s.image, world.sample(i).image) for i, s in enumerate(split))


@pytest.mark.parametrize("kwargs", [dict(size=100), dict(size=0), dict(kind="horse"), dict(supersample=2)])
def test_bad_arguments_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        World(**kwargs)
