"""Augmentation keeps masks aligned with images under every transform, and a seed repeats it."""

from __future__ import annotations

import pytest
import torch

from slimeseg.augment import augment, resize_pair
from slimeseg.config import SlimeConfig

COLOURS = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # (K, 3)
ONLY = {"crop": dict(crop_p=1.0, flip_p=0.0, rotate_p=0.0, blur_p=0.0),
        "flip": dict(crop_p=0.0, flip_p=1.0, rotate_p=0.0, blur_p=0.0),
        "rotate": dict(crop_p=0.0, flip_p=0.0, rotate_p=1.0, blur_p=0.0),
        "all-but-blur": dict(crop_p=1.0, flip_p=0.5, rotate_p=0.5, blur_p=0.0),
        "reference-order": dict(augment_order="reference", crop_p=1.0, flip_p=0.5, rotate_p=0.5, blur_p=0.0)}


def _pair(h: int = 90, w: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask of large blocks (classes 1-3 on background) and an image painting each class in its
    own pure colour, so a pixel's colour says which class it should carry."""
    mask = torch.zeros(h, w, dtype=torch.long)
    mask[10:50, 10:60] = 1
    mask[40:80, 70:110] = 2
    mask[60:85, 5:40] = 3
    return COLOURS[mask].permute(2, 0, 1).contiguous(), mask  # (3, H, W), (H, W)


def _agreement(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over the classes present (in >= 200 px: a crop can leave a sliver that is all border)
    of the share of their pixels whose colour is nearest to the class's own colour; class-balanced,
    so background cannot carry it."""
    dist = ((image.permute(1, 2, 0)[:, :, None, :] - COLOURS[None, None]) ** 2).sum(-1)  # (S, S, K)
    hit = dist.argmin(-1) == mask  # (S, S)
    shares = [hit[mask == c].float().mean() for c in mask.unique() if (mask == c).sum() >= 200]
    return float(torch.stack(shares).mean())


@pytest.mark.parametrize("name", list(ONLY))
def test_mask_stays_aligned_with_image(name):
    image, mask = _pair()
    cfg = SlimeConfig(image_size=64, rotate_degrees=30.0, min_crop_ratio=0.5, **ONLY[name])
    wrong = []
    for seed in range(8):
        img, msk = augment(image, mask, cfg, torch.Generator().manual_seed(seed), focus=1 + seed % 3)
        assert img.shape == (3, 64, 64) and msk.shape == (64, 64) and msk.dtype == torch.long
        assert 0 <= float(img.min()) and float(img.max()) <= 1
        assert set(msk.unique().tolist()) <= {0, 1, 2, 3}
        # interpolation softens one-pixel borders only
        assert _agreement(img, msk) > 0.9, (name, seed, _agreement(img, msk))
        wrong.append(_agreement(img, msk.flip(-1)))
    assert sum(wrong) / len(wrong) < 0.75  # the measure sees a mask flipped against its image


def test_rotation_fills_uncovered_corners_with_background():
    image, mask = _pair()
    image[:] = 1.0
    mask[:] = 2
    cfg = SlimeConfig(image_size=64, rotate_degrees=30.0, **ONLY["rotate"])
    img, msk = augment(image, mask, cfg, torch.Generator().manual_seed(0))
    assert int(msk[0, 0]) == 0 and float(img[:, 0, 0].max()) == 0.0  # a corner: rotated out
    assert int(msk[32, 32]) == 2


def test_crop_keeps_part_of_the_focus_class():
    image, mask = _pair()
    cfg = SlimeConfig(image_size=64, min_crop_ratio=0.3, crop_keep_fraction=0.3, **ONLY["crop"])
    for seed in range(10):
        _, msk = augment(image, mask, cfg, torch.Generator().manual_seed(seed), focus=3)
        assert (msk == 3).any(), seed


def test_blur_changes_the_image_only():
    image, mask = _pair()
    plain = SlimeConfig(image_size=64, crop_p=0.0, flip_p=0.0, rotate_p=0.0, blur_p=0.0)
    blurred = plain.replace(blur_p=1.0)
    img0, msk0 = augment(image, mask, plain, torch.Generator().manual_seed(0))
    img1, msk1 = augment(image, mask, blurred, torch.Generator().manual_seed(0))
    torch.testing.assert_close(msk0, msk1, rtol=0, atol=0)
    assert not torch.equal(img0, img1)
    torch.testing.assert_close(img0, resize_pair(image, mask, 64)[0], rtol=0, atol=0)


def test_a_seed_repeats_the_augmentation():
    image, mask = _pair()
    cfg = SlimeConfig(image_size=64)
    a = augment(image, mask, cfg, torch.Generator().manual_seed(5), focus=2)
    b = augment(image, mask, cfg, torch.Generator().manual_seed(5), focus=2)
    c = augment(image, mask, cfg, torch.Generator().manual_seed(6), focus=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_reference_blur_uses_opencv_kernels():
    from slimeseg.augment import _blur_kernel

    image = torch.zeros(3, 9, 9)
    image[:, 4, 4] = 1.0
    assert torch.equal(_blur_kernel(image, 1), image)
    out = _blur_kernel(image, 3)  # sigma 0.8: the weights OpenCV uses for a 3-tap kernel
    w = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * 0.8**2))
    w = w / w.sum()
    torch.testing.assert_close(out[0, 3:6, 3:6], torch.outer(w, w))
    assert float(out.sum()) == pytest.approx(3.0)
