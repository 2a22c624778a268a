"""Edge-aware (guided) upsampling of the class scores: the filter, the working size, the label path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slimeseg import SlimeConfig, inference, upsample
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene


def test_the_box_mean_is_the_cut_windows_mean():
    x = torch.rand(2, 9, 13)  # (C, H, W)
    out = upsample.box(x, 3)
    ref = torch.empty_like(x)
    for i in range(9):
        for j in range(13):
            ref[:, i, j] = x[:, max(0, i - 3):i + 4, max(0, j - 3):j + 4].mean((1, 2))
    assert torch.allclose(out, ref, atol=1e-6)


def test_a_constant_passes_through_and_shapes_hold():
    gen = torch.Generator().manual_seed(0)
    guide = torch.rand(3, 40, 56, generator=gen)  # (3, H, W)
    src = torch.full((11, 40, 56), 0.3)  # (K, H, W): more classes than CLASS_CHUNK
    out = upsample.guided_filter(guide, src, radius=4, eps=1e-3)
    assert out.shape == (11, 40, 56)
    assert torch.allclose(out, src, atol=1e-4)


def test_the_filter_moves_a_blurred_boundary_onto_the_image_edge():
    # an image with a colour edge at x = 45 (not on the 8-px cell grid); scores that know the
    # edge only to the cell: bilinear puts the boundary at the cell's middle, guided at the edge
    h, w, edge = 64, 128, 45
    image = np.zeros((h, w, 3), np.uint8)
    image[:, edge:] = (200, 180, 40)
    truth = np.zeros((h, w), np.uint8)
    truth[:, edge:] = 1
    cells = F.adaptive_avg_pool2d(torch.from_numpy(truth).float()[None, None], (h // 8, w // 8))[0, 0]
    scores = torch.stack([1 - cells, cells])  # (K, h, w)
    bilinear = inference.labels_at(scores, (h, w))
    guided = inference.labels_for(scores, image, SlimeConfig(upsample="guided"))
    assert guided.shape == (h, w) and guided.dtype == np.uint8
    assert (guided != truth).sum() == 0
    assert (bilinear != truth).sum() >= h  # at least a column off


def test_large_images_are_filtered_at_the_working_size(monkeypatch):
    monkeypatch.setattr(upsample, "WORK_PIXELS", 64 * 48)
    assert upsample.work_size((480, 640)) == (48, 64)
    assert upsample.work_size((30, 20)) == (30, 20)  # small images: their own size
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    scores = torch.rand(3, 60, 80)  # (K, h, w)
    out = upsample.guided_scores(scores, image, radius=8.0, eps=1e-3)
    assert out.shape == (3, 48, 64)
    labels = inference.labels_for(scores, image, SlimeConfig(upsample="guided"))
    assert labels.shape == (480, 640) and labels.max() < 3


def test_the_filter_stays_on_the_scores_device():
    """Everything the filter makes lives on the scores' device (the GPU's after a GPU pass): run
    on the meta device, a tensor made on the CPU anywhere in it would raise."""
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    out = upsample.guided_scores(torch.rand(4, 5, 6, device="meta"), image, radius=8.0, eps=1e-3)
    assert out.device.type == "meta" and out.shape == (4, 40, 48)


def test_setting_is_checked():
    with pytest.raises(ValueError, match="upsample"):
        SlimeConfig(upsample="bicubic")
    with pytest.raises(ValueError, match="guide_radius"):
        SlimeConfig(guide_radius=0)


def test_predict_with_guided_upsampling(segmenter):
    image, mask = shapes_scene(0, 64)
    test = shapes_scene(3, 80)[0]
    learned = segmenter.match([image], [mask], SHAPE_CLASSES, SlimeConfig(image_size=64))
    a = segmenter.predict(test, learned, upsample="guided")
    b = segmenter.predict_batch([test], learned, upsample="guided")[0]
    plain = segmenter.predict(test, learned, upsample="bilinear")
    assert a.shape == test.shape[:2] and a.dtype == np.uint8
    assert np.array_equal(a, b)  # one path for one image and for a batch
    scores = segmenter.predict_scores(test, learned, upsample="guided")  # (K, H, W)
    assert scores.shape == (len(SHAPE_CLASSES), *test.shape[:2])
    assert np.array_equal(scores.argmax(0).numpy(), a)
    assert (a != plain).any()  # the setting reaches the label path
