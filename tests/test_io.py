"""Image and mask readers: modes, formats and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from slimeseg.errors import InputError
from slimeseg.io import load_image, load_mask
from slimeseg.writers import save_labels


def test_image_modes(tmp_path):
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    for mode in ("RGB", "L", "RGBA", "P", "CMYK", "I;16"):
        if mode == "I;16":
            img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
            assert img.mode.startswith("I;16")
        else:
            img = Image.fromarray(rgb).convert(mode)
        path = tmp_path / f"im_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        img.save(path)
        arr = load_image(path)
        assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8, mode


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape == (40, 20, 3)


def test_masks(tmp_path):
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    save_labels(tmp_path / "p.png", labels, 4)
    assert (load_mask(tmp_path / "p.png") == labels).all()
    np.save(tmp_path / "f.npy", labels.astype(np.float64))
    assert (load_mask(tmp_path / "f.npy") == labels).all()
    cases = {
        "nan.npy": np.array([[0, np.nan]]), "frac.npy": np.array([[0, 0.5]]),
        "neg.npy": np.array([[0, -1]]), "3d.npy": np.zeros((2, 2, 3)),
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(InputError) as err:
            load_mask(tmp_path / name)
        assert name in str(err.value)
    Image.fromarray((np.zeros((4, 4, 3)) + [10, 20, 30]).astype(np.uint8)).save(tmp_path / "color.png")
    with pytest.raises(InputError, match="colour"):
        load_mask(tmp_path / "color.png")
    (tmp_path / "m.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="lossy"):
        load_mask(tmp_path / "m.jpg")



def test_mask_values_up_to_255_read_and_the_error_says_that_range(tmp_path):
    np.save(tmp_path / "ignore.npy", np.array([[0, 255]]))  # 255: a dataset's "ignore" label
    assert load_mask(tmp_path / "ignore.npy").max() == 255
    np.save(tmp_path / "big.npy", np.array([[0, 300]]))
    with pytest.raises(InputError, match=r"value 300; mask values must be 0\.\.255 "):
        load_mask(tmp_path / "big.npy")

def test_unreadable_files(tmp_path):
    (tmp_path / "rand.png").write_bytes(np.random.default_rng(0).bytes(200))
    buf = tmp_path / "ok.png"
    Image.new("RGB", (64, 64), "blue").save(buf)
    (tmp_path / "trunc.png").write_bytes(buf.read_bytes()[:60])
    for name in ("rand.png", "trunc.png", "missing.png"):
        with pytest.raises(InputError) as err:
            load_image(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
