"""Training-free matching and its fusion with SLiMe: shapes, votes, artifacts, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimeseg import Learned, SlimeConfig, inference, matching
from slimeseg.cli import main
from slimeseg.errors import InputError
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

FAST = {"image_size": 64}


def _bank(seed: int = 0, k: int = 4, views: int = 2) -> tuple[matching.MatchBank, list, list]:
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(8, 6, 5, generator=gen) for _ in range(views)]  # (C, h, w) each
    masks = [torch.randint(0, k, (48, 40), generator=gen) for _ in range(views)]
    targets = [matching.soft_targets(m, k, (6, 5)) for m in masks]  # (K, h, w) each
    return matching.MatchBank.build(feats, targets), feats, targets


def test_soft_targets_are_class_fractions():
    mask = torch.zeros(16, 16, dtype=torch.long)
    mask[:8, :4] = 2  # a quarter of the top-left 8x8 cell... of the top-left 2x2 grid cell
    t = matching.soft_targets(mask, 3, (2, 2))  # (K, h, w)
    assert t.shape == (3, 2, 2) and torch.allclose(t.sum(0), torch.ones(2, 2))
    assert t[2, 0, 0] == pytest.approx(0.5) and t[2, 1, 1] == 0


def test_bank_and_votes_shapes_and_self_match():
    bank, feats, targets = _bank()
    assert bank.features.shape == (2 * 30, 8) and bank.targets.shape == (60, 4)
    assert torch.allclose(bank.features.float().norm(dim=1), torch.ones(60), atol=1e-2)
    votes = matching.vote(bank, torch.stack(feats), k=1, temperature=0.1)  # (B, K, h, w)
    assert votes.shape == (2, 4, 6, 5)
    assert torch.allclose(votes.sum(1), torch.ones(2, 6, 5), atol=1e-3)
    # each cell's nearest bank cell is itself: k = 1 gives back its own class fractions
    assert torch.allclose(votes, torch.stack(targets), atol=2e-3)
    protos = matching.prototype_scores(bank, torch.stack(feats))
    assert protos.shape == (2, 4, 6, 5) and torch.allclose(protos.sum(1), torch.ones(2, 6, 5), atol=1e-4)


def test_votes_are_chunked_without_changing_them(monkeypatch):
    bank, feats, _ = _bank(seed=1)
    whole = matching.vote(bank, torch.stack(feats), k=5)
    monkeypatch.setattr(matching, "SIMILARITY_CHUNK", 70)  # 1 row of 60 bank cells at a time
    assert torch.allclose(matching.vote(bank, torch.stack(feats), k=5), whole, atol=1e-6)  # BLAS blocking


def test_balanced_subset_keeps_the_small_classes():
    targets = torch.zeros(1000, 3)
    targets[:980, 0] = 1  # background
    targets[980:995, 1] = 1  # 15 cells
    targets[995:, 2] = 1  # 5 cells
    feats = [torch.randn(4, 1000, 1)]
    bank = matching.MatchBank.build(feats, [targets.T.reshape(3, 1000, 1)], max_cells=60)
    owner = bank.targets.float().argmax(1)
    assert len(owner) == 60 and (owner == 2).sum() == 5 and (owner == 1).sum() == 15


def test_fusion_rules_give_distributions():
    gen = torch.Generator().manual_seed(0)
    slime = torch.rand(2, 4, 6, 5, generator=gen).softmax(1)
    votes = torch.rand(2, 4, 6, 5, generator=gen).softmax(1)
    for rule in ("mean", "confidence"):
        fused = inference.fuse(slime, votes, SlimeConfig(fuse_rule=rule))
        assert fused.shape == (2, 4, 6, 5) and torch.allclose(fused.sum(1), torch.ones(2, 6, 5), atol=1e-4)
    # confidence: a certain source outweighs an unsure one where they disagree
    sure = torch.zeros(1, 2, 1, 1)
    sure[0, 1] = 1.0
    unsure = torch.full((1, 2, 1, 1), 0.5)
    unsure[0, 0] = 0.55
    unsure[0, 1] = 0.45
    fused = inference.fuse(unsure, sure, SlimeConfig(fuse_rule="confidence"))
    assert fused.argmax(1).item() == 1
    assert inference.fuse(unsure, sure, SlimeConfig(fuse_rule="mean", fuse_weight=0.0)).argmax(1).item() == 0


def test_small_parts_are_raised_by_their_size_in_the_examples():
    mask = torch.zeros(64, 64, dtype=torch.uint8)  # 64 latent cells of 8 x 8 px
    mask[:, 32:] = 1  # class 1: 32 cells
    mask[:8, :16] = 2  # class 2: 2 cells; class 3: absent
    learned = Learned(context=torch.zeros(77, 8), classes=["bg", "a", "b", "c"], model_id="m",
                      fingerprint="f", config={}, examples=[(torch.zeros(3, 64, 64, dtype=torch.uint8), mask)])
    assert inference.class_cells(learned).tolist() == [30.0, 32.0, 2.0, 0.0]
    scores = torch.full((2, 4, 3, 3), 0.25)  # (B, K, h, w)
    off = SlimeConfig(match_small=0.0)
    assert torch.equal(inference.small_part_boost(scores, learned, off), scores)
    cfg = SlimeConfig(match_small=0.5, match_small_cells=32)
    out = inference.small_part_boost(scores, learned, cfg)  # (B, K, h, w)
    assert out.shape == scores.shape and torch.allclose(out.sum(1), torch.ones(2, 3, 3))
    # bg (30 cells) x (32/30)^0.5, a (32) x 1, b (2) x 16^0.5 = 4, c (absent) x 1
    gain = torch.tensor([(32 / 30) ** 0.5, 1.0, 4.0, 1.0])
    assert torch.allclose(out[0, :, 0, 0], gain / gain.sum())
    with pytest.raises(ValueError, match="match_small"):
        SlimeConfig(match_small=-1.0)


@pytest.fixture(scope="module")
def fitted(segmenter) -> Learned:
    image, mask = shapes_scene(0, 64)
    return segmenter.fit([image], [mask], SHAPE_CLASSES, steps=2, progress=False, **FAST)


def test_match_artifact_round_trip(segmenter, tmp_path):
    image, mask = shapes_scene(0, 80)
    learned = segmenter.match([image[:, :72]], [mask[:, :72]], SHAPE_CLASSES, **FAST)
    assert not learned.trained and learned.config["method"] == "match"
    (ex_image, ex_mask), = learned.examples
    assert ex_image.dtype == torch.uint8 and ex_image.shape == (3, 64, 64)  # the model input's size
    assert ex_mask.shape == (64, 64) and int(ex_mask.max()) < len(SHAPE_CLASSES)
    path = learned.save(tmp_path / "m.safetensors")
    back = Learned.load(path)
    assert not back.trained and len(back.examples) == 1
    assert torch.equal(back.examples[0][0], ex_image) and torch.equal(back.examples[0][1], ex_mask)
    test = shapes_scene(3, 64)[0]
    labels = segmenter.predict(test, learned)
    assert labels.shape == (64, 64) and labels.dtype == np.uint8
    np.testing.assert_array_equal(segmenter.predict(test, back), labels)
    with pytest.raises(InputError, match="needs a trained artifact"):
        segmenter.predict(test, back, method="slime")


def test_fit_artifacts_carry_examples_and_fuse_deterministically(segmenter, fitted):
    assert fitted.trained and len(fitted.examples) == 1
    test = shapes_scene(4, 64)[0]
    for method in ("slime", "match", "fuse"):
        a = segmenter.predict(test, fitted, method=method)
        b = segmenter.predict(test, fitted, method=method)
        assert a.shape == (64, 64) and np.array_equal(a, b), method
    boosted = segmenter.predict_scores(test, fitted, method="fuse", match_small=0.5)  # (K, H, W)
    assert boosted.shape == (len(SHAPE_CLASSES), 64, 64) and torch.isfinite(boosted).all()
    scores = segmenter.predict_scores(test, fitted, method="fuse", tta_flip=True)  # (K, H, W)
    assert scores.shape == (len(SHAPE_CLASSES), 64, 64)
    assert torch.allclose(scores.sum(0), torch.ones(64, 64), atol=1e-3)  # a distribution per pixel
    batch = segmenter.predict_batch([test, shapes_scene(5, 64)[0]], fitted, method="fuse")
    assert [m.shape for m in batch] == [(64, 64), (64, 64)]
    check = segmenter.check_examples(fitted, views=2)  # the poor-example warning's number
    assert 0 <= check <= 1 and check == segmenter.check_examples(fitted, views=2)


def test_cycle_check_sends_the_images_labels_back_to_the_examples(segmenter, fitted):
    image, mask = shapes_scene(0, 64)  # the fit's own example (shapes_scene seed 0)
    images = [shapes_scene(s, 64)[0] for s in (4, 5)]
    before = segmenter.learned
    check = segmenter.check_examples(fitted, images=images)  # matching labels them, then back
    assert 0 <= check <= 1 and check == segmenter.check_examples(fitted, images=images)
    assert segmenter.learned is before  # the one-image banks never become the artifact in use
    labels = segmenter.predict_batch(images, fitted, method="match")
    assert segmenter.check_examples(fitted, images=images, labels=labels) == check
    # the example itself with its true mask labels it back far better than with everything background
    right = segmenter.check_examples(fitted, images=[image], labels=[np.asarray(mask)])
    wrong = segmenter.check_examples(fitted, images=[image], labels=[np.zeros((64, 64), np.uint8)])
    assert right > 0.5 and right > wrong + 0.3
    with pytest.raises(InputError, match="2 images but 1 label"):
        segmenter.check_examples(fitted, images=images, labels=labels[:1])


def _setting_moves_scores(segmenter, fitted, method: str, name: str, today, other) -> tuple:
    """A test scene's scores (K, H, W) by default and with setting `name` at `other`: its default
    value `today` typed out gives the same scores, `other` different ones of the same shape."""
    test = shapes_scene(4, 64)[0]
    base = segmenter.predict_scores(test, fitted, method=method)  # (K, H, W)
    assert torch.equal(segmenter.predict_scores(test, fitted, method=method, **{name: today}), base)
    moved = segmenter.predict_scores(test, fitted, method=method, **{name: other})  # (K, H, W)
    assert moved.shape == base.shape and not torch.equal(moved, base)
    return test, base, moved


def test_noise_draws_average_passes_and_one_draw_is_today(segmenter, fitted):
    test, _, two = _setting_moves_scores(segmenter, fitted, "fuse", "noise_draws", 1, 2)
    assert torch.isfinite(two).all()
    assert torch.equal(segmenter.predict_scores(test, fitted, method="fuse", noise_draws=2), two)
    with pytest.raises(ValueError, match="noise_draws"):
        SlimeConfig(noise_draws=0)


def test_match_t_moves_only_matchings_half_of_the_fused_batch(segmenter, fitted):
    test, _, _ = _setting_moves_scores(segmenter, fitted, "fuse", "match_t", 100, 300)  # 100 = t_test
    slime = segmenter.predict_scores(test, fitted, method="slime")  # SLiMe's maps stay at t_test
    assert torch.equal(segmenter.predict_scores(test, fitted, method="slime", match_t=300), slime)
    with pytest.raises(ValueError, match="match_t"):
        SlimeConfig(match_t=1000)


def test_match_blocks_choose_the_features_read(segmenter, fitted):
    test, _, _ = _setting_moves_scores(segmenter, fitted, "match", "match_blocks", "all", "1")
    with pytest.raises(InputError, match="up blocks 0-"):
        segmenter.predict(test, fitted, method="match", match_blocks="9")
    with pytest.raises(ValueError, match="match_blocks"):
        SlimeConfig(match_blocks="first")


def test_an_artifact_without_examples_says_how_to_go_on(segmenter, fitted):
    old = Learned(context=fitted.context, classes=fitted.classes, model_id=fitted.model_id,
                  fingerprint=fitted.fingerprint, config=fitted.config)  # made before matching
    with pytest.raises(InputError, match="hold no examples"):
        segmenter.predict(shapes_scene(4, 64)[0], old, method="fuse")


def test_the_references_exact_test_step_goes_with_slime_only():
    with pytest.raises(ValueError, match="goes with method 'slime'"):
        SlimeConfig(method="fuse", normalization="reference_exact")
    SlimeConfig(method="fuse", normalization="reference")  # its maps, made a distribution, fuse


def test_cli_train_method_match_and_segment_fused(tiny_dir, tmp_path, capsys):
    from PIL import Image

    image, mask = shapes_scene(0, 64)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    Image.fromarray(shapes_scene(2, 64)[0]).save(tmp_path / "b.png")
    common = ["--image", str(tmp_path / "a.png"), "--mask", str(tmp_path / "a_mask.png"), "--classes",
              ",".join(SHAPE_CLASSES), "--model", str(tiny_dir), "--image-size", "64", "--quiet"]
    assert main(["train", *common, "--method", "match", "--out", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "no training" in out and "augmented copies" in out  # the example check from the example alone
    assert main(["train", *common, "--method", "match", "--check-image", str(tmp_path / "b.png"),
                 "--out", str(tmp_path / "m2.safetensors")]) == 0
    assert "1 --check-image(s), labelled by matching, label the examples back at" in capsys.readouterr().out
    (tmp_path / "bad.png").write_bytes(b"not a png")  # read before anything loads: a one-line error
    assert main(["train", *common, "--method", "match", "--check-image", str(tmp_path / "bad.png"),
                 "--out", str(tmp_path / "m3.safetensors")]) == 2
    assert "bad.png" in capsys.readouterr().err and not (tmp_path / "m3.safetensors").exists()
    assert main(["segment", str(tmp_path / "m.safetensors"), str(tmp_path / "b.png"), "--out",
                 str(tmp_path / "o1"), "--quiet"]) == 0
    assert main(["train", *common, "--steps", "1", "--out", str(tmp_path / "s.safetensors")]) == 0
    assert main(["segment", str(tmp_path / "s.safetensors"), str(tmp_path / "b.png"), "--out",
                 str(tmp_path / "o2"), "--method", "fuse", "--quiet"]) == 0
    assert (tmp_path / "o1" / "b.png").exists() and (tmp_path / "o2" / "b.png").exists()
    code = main(["train", *common, "--method", "match", "--resume", str(tmp_path / "s.safetensors"),
                 "--out", str(tmp_path / "x.safetensors")])
    assert code == 2 and "trains nothing" in capsys.readouterr().err


def test_rescaled_example_views_zoom_in_and_out():
    from slimeseg.augment import bank_view, hue_rotation

    image, mask = torch.rand(3, 128, 192), torch.randint(0, 3, (128, 192))
    sizes = set()
    for seed in range(12):
        a, m = bank_view(image, mask, torch.Generator().manual_seed(seed), (0.5, 2.0))
        b, n = bank_view(image, mask, torch.Generator().manual_seed(seed), (0.5, 2.0))
        assert torch.equal(a, b) and torch.equal(m, n)  # seeded: the bank repeats
        assert a.shape[0] == 3 and a.shape[1:] == m.shape and set(m.unique().tolist()) <= {0, 1, 2}
        assert m.shape == (128, 192) or (m.shape[0] % 64 == 0 and m.shape[1] % 64 == 0 and m.shape[1] < 192)
        sizes.add(tuple(m.shape))
    assert len(sizes) > 1  # some copies are smaller inputs (zoomed out), some crops (zoomed in)
    red = torch.zeros(3, 2, 2)
    red[0] = 1
    assert torch.allclose(hue_rotation(red, 120.0), red.roll(1, 0), atol=1e-5)  # red -> green
    grey = torch.full((3, 2, 2), 0.4)
    assert torch.allclose(hue_rotation(grey, 73.0), grey, atol=1e-6)


def test_match_views_grow_the_bank_and_repeat(segmenter):
    image, mask = shapes_scene(0, 64)
    learned = segmenter.match([image], [mask], SHAPE_CLASSES, **FAST)
    cfg = SlimeConfig.from_dict(learned.config)
    plain = inference.match_bank(segmenter.sd, learned, cfg)
    more = inference.match_bank(segmenter.sd, learned, cfg.replace(match_views=3, match_hue=True))
    assert len(more.features) > len(plain.features) == 2 * 8 * 8  # the example and its mirror: 8 x 8 cells each
    test = shapes_scene(3, 64)[0]
    a = segmenter.predict(test, learned, match_views=3, match_hue=True)
    learned.__dict__.pop("_match_banks")  # built again from scratch: the same copies
    np.testing.assert_array_equal(segmenter.predict(test, learned, match_views=3, match_hue=True), a)
    with pytest.raises(ValueError, match="match_views"):
        SlimeConfig(match_views=-1)


def test_votes_spread_by_self_attention(segmenter, fitted):
    from slimeseg import maps
    from slimeseg.attention import AttentionStore, capture

    test = shapes_scene(4, 64)[0]
    for method in ("match", "fuse"):
        a = segmenter.predict_scores(test, fitted, method=method, match_spread=0.5)  # (K, H, W)
        assert a.shape == (len(SHAPE_CLASSES), 64, 64) and torch.allclose(a.sum(0), torch.ones(64, 64), atol=1e-3)
        assert torch.equal(a, segmenter.predict_scores(test, fitted, method=method, match_spread=0.5))
        assert not torch.equal(a, segmenter.predict_scores(test, fitted, method=method))
    # the spread equals the WAS formula written out: R @ A_sa^T per layer, head-averaged
    sd, hw = segmenter.sd, (8, 8)
    store = AttentionStore(len(SHAPE_CLASSES), hw, want_was=False)
    store.keep_self = True
    x = inference.model_input(test, SlimeConfig.from_dict(fitted.config))[None]
    with capture(sd.unet, fitted.layer_plan(sd).roles(), store):
        sd.denoise(sd.encode_image(x), torch.randn(1, 4, *hw), torch.tensor([100]), fitted.context[None])
    assert store.self_qk and store.cross  # queries and keys kept; the class maps still captured
    values = torch.rand(1, len(SHAPE_CLASSES), *hw).softmax(1)  # (1, K, h, w)
    expected = torch.zeros_like(values)
    for q, k, scale in store.self_qk:
        n = q.shape[2]
        attn = ((q.float() @ k.float().transpose(-1, -2)) * scale).softmax(-1).mean(1)  # (1, n, n)
        v = torch.nn.functional.interpolate(values, size=store.hw_for(n), mode="bilinear", align_corners=False)
        s = maps.was_direct(v.flatten(2), attn).view(1, -1, *store.hw_for(n))  # (1, K, h', w')
        expected += torch.nn.functional.interpolate(s, size=hw, mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps.self_spread(values, store), expected / len(store.self_qk), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="match_spread"):
        SlimeConfig(match_spread=1.5)
