"""Dataset readers: generated folders in tmp_path, and the real samples in shared/data."""

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from slimeseg.datasets import IGNORE, Sample, celebamask, load_dataset, pascal_part
from slimeseg.errors import InputError
from slimeseg.io import load_image, load_mask

# The repository is cloned beside shared/ (e.g. /work/main and /work/shared).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def need(sub: str) -> Path:
    path = DATA / sub
    if not path.is_dir():
        pytest.skip(f"real sample data not found at {path} (only present beside a dev checkout)")
    return path


def write_image(path: Path, h: int, w: int, value: int = 100) -> None:
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def write_png_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


# ---------------------------------------------------------------- folder


def test_folder_images_and_masks_pair_by_stem(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    # Different sizes per stem, and each mask holds a value of its own: a pairing by position
    # would fail the size check or swap the values.
    write_image(tmp_path / "images" / "zebra.jpg", 6, 4)
    write_image(tmp_path / "images" / "apple.png", 5, 7)
    np.save(tmp_path / "masks" / "zebra.npy", np.full((6, 4), 2.0))
    write_png_mask(tmp_path / "masks" / "apple.png", np.full((5, 7), 1))
    ds = load_dataset(tmp_path)
    assert ds.names == ["apple", "zebra"]
    assert ds[0].image.shape == (5, 7, 3) and set(np.unique(ds[0].mask)) == {1}
    assert ds[1].image.shape == (6, 4, 3) and set(np.unique(ds[1].mask)) == {2}
    assert ds.classes == ["background", "class_1", "class_2"]


def test_folder_side_by_side(tmp_path):
    write_image(tmp_path / "a.jpg", 4, 4)
    write_png_mask(tmp_path / "a.png", np.eye(4))  # PNG beside a JPEG: the mask
    write_image(tmp_path / "b.png", 3, 5)
    np.save(tmp_path / "b.npy", np.ones((3, 5)))  # .npy beside a PNG: the mask
    ds = load_dataset(tmp_path, format="folder")
    assert ds.names == ["a", "b"]
    assert (ds[0].mask == np.eye(4)).all()
    assert ds[1].image.shape == (3, 5, 3) and (ds[1].mask == 1).all()


def test_folder_natural_order_and_names(tmp_path):
    for stem in ("10", "2", "1"):
        write_image(tmp_path / f"{stem}.jpg", 2, 2)
        write_png_mask(tmp_path / f"{stem}.png", np.zeros((2, 2)))
    assert load_dataset(tmp_path).names == ["1", "2", "10"]
    assert load_dataset(tmp_path, names=["10", "1"]).names == ["1", "10"]
    with pytest.raises(InputError, match="no sample named 3"):
        load_dataset(tmp_path, names=["3"])


def test_folder_unpaired_image_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "images" / "a.jpg", 2, 2)
    write_image(tmp_path / "images" / "lonely.jpg", 2, 2)
    write_png_mask(tmp_path / "masks" / "a.png", np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"lonely\.jpg: no mask named lonely"):
        load_dataset(tmp_path)


def test_folder_unpaired_mask_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "images" / "a.jpg", 2, 2)
    write_png_mask(tmp_path / "masks" / "a.png", np.zeros((2, 2)))
    np.save(tmp_path / "masks" / "orphan.npy", np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"orphan\.npy: no image named orphan"):
        load_dataset(tmp_path)


def test_folder_side_by_side_unpaired_and_ambiguous(tmp_path):
    write_image(tmp_path / "a.jpg", 2, 2)
    write_png_mask(tmp_path / "a.png", np.zeros((2, 2)))
    write_image(tmp_path / "b.jpg", 2, 2)
    with pytest.raises(InputError, match=r"b\.jpg: unpaired file"):
        load_dataset(tmp_path)
    write_image(tmp_path / "b.bmp", 2, 2)  # two images, no mask
    with pytest.raises(InputError, match="cannot tell image from mask"):
        load_dataset(tmp_path)


def test_folder_duplicate_stem_in_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "images" / "a.jpg", 2, 2)
    write_image(tmp_path / "images" / "a.png", 2, 2)
    write_png_mask(tmp_path / "masks" / "a.png", np.zeros((2, 2)))
    with pytest.raises(InputError, match="two images named 'a'"):
        load_dataset(tmp_path)


def test_folder_size_mismatch(tmp_path):
    write_image(tmp_path / "a.jpg", 8, 10)
    write_png_mask(tmp_path / "a.png", np.zeros((10, 10)))
    with pytest.raises(InputError, match=r"a\.png: mask is 10x10 but image .*a\.jpg is 10x8"):
        load_dataset(tmp_path)


def test_folder_class_files(tmp_path):
    write_image(tmp_path / "a.jpg", 2, 2)
    write_png_mask(tmp_path / "a.png", np.array([[0, 1], [2, IGNORE]]))
    (tmp_path / "classes.txt").write_text("background\nwheel\nwindow\n")
    ds = load_dataset(tmp_path)
    assert ds.classes == ["background", "wheel", "window"]
    assert ds[0].mask[1, 1] == IGNORE  # void pixels are kept for the metrics to skip
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "labels.txt").write_text("# index name\n2 window\n0 background\n1 wheel\n")
    assert load_dataset(tmp_path).classes == ["background", "wheel", "window"]
    (tmp_path / "labels.txt").write_text("background\nwheel\n")
    with pytest.raises(InputError, match="mask holds class 2 but the class list lists only 2"):
        load_dataset(tmp_path)
    (tmp_path / "labels.txt").write_text("0 background\n2 wheel\n")
    with pytest.raises(InputError, match="no gaps"):
        load_dataset(tmp_path)
    (tmp_path / "labels.txt").unlink()
    assert load_dataset(tmp_path).classes == ["background", "class_1", "class_2"]
    assert load_dataset(tmp_path, classes=["bg", "x", "y", "z"]).classes == ["bg", "x", "y", "z"]


def test_unknown_format_and_bad_sample():
    with pytest.raises(InputError, match="unknown dataset format"):
        load_dataset(".", format="coco")
    with pytest.raises(InputError, match="image is"):
        Sample(np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2), np.uint8), "x")


# ---------------------------------------------------------------- slime layout


def test_slime_real_samples():
    root = need("celeba-slime")
    expected = (root / "labels.txt").read_text().split()
    for split, stem in (("train_1", "152"), ("test", "18")):
        ds = load_dataset(root / split, format="slime")
        assert ds.classes == expected  # from the parent folder's labels.txt
        assert ds.names == [stem]
        s = ds[0]
        raw = np.load(root / split / f"{stem}.npy")
        assert raw.dtype == np.float64  # the reference code's float masks ...
        assert s.mask.dtype == np.uint8 and (s.mask == raw).all()  # ... read exactly
        assert s.image.shape == (512, 512, 3)
        assert set(np.unique(s.mask)) == set(range(10))


def test_slime_needs_npy_masks(tmp_path):
    write_image(tmp_path / "a.jpg", 2, 2)
    write_png_mask(tmp_path / "a.png", np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"no a\.npy mask"):
        load_dataset(tmp_path, format="slime")


# ---------------------------------------------------------------- CelebAMask-HQ


def test_celebamask_real_samples():
    root = need("celebamask-hq-samples")
    assert (root / "labels.txt").read_text().split() == celebamask.CELEBAMASK_NAMES
    ds = load_dataset(root, format="celebamask-hq")
    assert ds.classes == celebamask.CLASSES
    assert ds.names == ["0", "1", "2", "3"]
    idx = {name: k for k, name in enumerate(ds.classes)}
    for s in ds:
        raw = load_mask(root / f"{s.name}.png")
        assert s.image.shape == (512, 512, 3)  # the 1024 image brought down to the mask
        assert s.mask.shape == raw.shape == (512, 512)
        assert (s.mask[raw == 13] == idx["hair"]).all()
        assert (s.mask[np.isin(raw, [10, 11, 12])] == idx["mouth"]).all()
        assert (s.mask[np.isin(raw, [4, 5])] == idx["eye"]).all()
        assert (s.mask[np.isin(raw, [6, 7])] == idx["eyebrow"]).all()
        assert (s.mask[raw == 1] == idx["face"]).all()
        assert s.mask.max() < len(ds.classes)
    full = load_image(root / "0.jpg")
    assert full.shape == (1024, 1024, 3)
    small = np.asarray(Image.fromarray(full).resize((512, 512), Image.BILINEAR))
    assert (ds[0].image == small).all()


def test_celebamask_table_covers_every_index():
    table = celebamask.lookup_table()
    assert (table[:19] != IGNORE).all() and (table[19:] == IGNORE).all()
    assert set(celebamask.CELEBAMASK_TO_CLASS.values()) == set(celebamask.CLASSES)
    acc = celebamask.lookup_table(ignore_accessories=True)
    for name in celebamask.ACCESSORIES:
        assert acc[celebamask.CELEBAMASK_NAMES.index(name)] == IGNORE


def test_celebamask_aspect_mismatch_and_bad_value(tmp_path):
    write_image(tmp_path / "a.jpg", 40, 80)
    write_png_mask(tmp_path / "a.png", np.zeros((20, 20)))
    with pytest.raises(InputError, match="different aspect ratio"):
        load_dataset(tmp_path, format="celebamask-hq")
    write_image(tmp_path / "a.jpg", 40, 40)
    write_png_mask(tmp_path / "a.png", np.full((20, 20), 19))
    with pytest.raises(InputError, match="not a CelebAMask-HQ class"):
        load_dataset(tmp_path, format="celebamask-hq")


# ---------------------------------------------------------------- PASCAL-Part


def test_pascal_part_observed_names_all_map():
    root = need("pascal-part")
    for line in (root / "observed_part_names.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        category, names = line.split("\t")
        for name in names.split():
            assert pascal_part.part_class(category, name) is not None, (category, name)


def test_pascal_part_full_vocabulary_maps():
    car = {"frontside": "body", "roofside": "body", "leftmirror": "body", "door_10": "body",
           "headlight_7": "light", "fliplate": "plate", "bliplate": "plate",
           "wheel_9": "wheel", "window_20": "window"}
    horse = {"leye": "head", "muzzle": "head", "lear": "head", "neck": "neck+torso",
             "torso": "neck+torso", "lblleg": "leg", "rfuleg": "leg", "rbho": "leg",
             "tail": "tail"}
    for category, table in (("car", car), ("horse", horse)):
        for name, cls in table.items():
            assert pascal_part.part_class(category, name) == cls, name
    assert pascal_part.part_class("car", "spoiler") is None


def test_pascal_part_car_real_protocol():
    root = need("pascal-part")
    ds = load_dataset(root, format="pascal-part", category="car")
    # 2010_003057's four cars overlap each other's boxes by 26-56% and are dropped.
    assert ds.names == ["2008_000939_1"]
    assert ds.classes == ["background", "body", "light", "plate", "wheel", "window"]
    s = ds[0]
    # Tight box 498x224 at y 37..261; widened to a square, clipped to the 375-pixel height.
    assert s.image.shape == (375, 498, 3) and s.mask.shape == (375, 498)
    assert set(np.unique(s.mask)) == {0, 1, 3, 4, 5}  # no headlight visible on this car
    tight = load_dataset(root, format="pascal-part", category="car", square=False)[0]
    assert tight.mask.shape == (224, 498)
    assert tight.mask.sum() and (tight.mask == 1).sum() == (s.mask == 1).sum()

    # Windows overlap the body parts everywhere; windows must win.
    objects = pascal_part.read_annotation(root / "Annotations_Part" / "2008_000939.mat")
    car = objects[1]
    window = np.any([m for n, m in car.parts if n.startswith("window")], axis=0)
    unknown = Counter()
    labels = pascal_part.label_map(car, "car", unknown)
    assert (labels[window] == 5).all() and not unknown

    loose = load_dataset(root, format="pascal-part", category="car", max_overlap=1.0)
    # Without the overlap rule the size rule still drops the 45x43 and 34x57 cars.
    assert loose.names == ["2008_000939_1", "2010_003057_1", "2010_003057_2"]
    every = load_dataset(root, format="pascal-part", category="car", max_overlap=1.0, min_size=0)
    assert len(every) == 5
    assert all(s.image.shape[0] == s.image.shape[1] for s in every[1:])  # squares inside the image


def test_pascal_part_horse_real_protocol():
    root = need("pascal-part")
    ds = load_dataset(root, format="pascal-part", category="horse")
    # 2008_000008's horse: 10.4% of its box lies in its rider's box -> dropped.
    assert ds.names == ["2010_005243_10"]
    assert ds.classes == ["background", "head", "neck+torso", "leg", "tail"]
    assert ds[0].image.shape == (155, 155, 3)
    assert set(np.unique(ds[0].mask)) == {0, 1, 2, 3}  # this horse's tail is not annotated
    kept = load_dataset(root, format="pascal-part", category="horse", max_overlap=0.2)
    assert kept.names == ["2008_000008_1", "2010_005243_10"]
    assert set(np.unique(kept[0].mask)) == {0, 1, 2, 3, 4}


def _write_mat(path: Path, objects: list) -> None:
    """A PASCAL-Part-shaped .mat: anno.objects(k) = class, class_ind, mask, parts."""
    objs = np.zeros((1, len(objects)), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    for k, (cls, mask, parts) in enumerate(objects):
        if parts:
            p = np.zeros((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
            for j, (name, pm) in enumerate(parts):
                p[0, j] = (name, pm.astype(np.uint8))
        else:
            p = np.zeros((0, 0))
        objs[0, k] = (cls, np.uint8(7), mask.astype(np.uint8), p)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (path.stem, objs)
    scipy.io.savemat(path, {"anno": anno})


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pascal_part_synthetic_rules(tmp_path):
    (tmp_path / "Annotations_Part").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    h, w = 100, 200
    big = _box(h, w, 0, 100, 0, 100)  # 100x100 car
    body, wheel = _box(h, w, 0, 60, 0, 100), _box(h, w, 50, 100, 10, 40)  # overlap at y 50..60
    small = _box(h, w, 10, 40, 110, 140)  # 30x30 car: too small for the 50x50 rule
    person = _box(h, w, 0, 100, 96, 98)  # 2x100 box: 2% of the big car's box, 100% of its own
    _write_mat(tmp_path / "Annotations_Part" / "x.mat", [
        ("car", big, [("leftside", body), ("wheel_1", wheel), ("spoiler", _box(h, w, 0, 5, 0, 5))]),
        ("car", small, [("leftside", small)]),
        ("person", person, []),
        ("car", _box(h, w, 60, 100, 150, 200), []),  # no part labels: skipped
    ])
    write_image(tmp_path / "JPEGImages" / "x.jpg", h, w)
    with pytest.warns(UserWarning, match=r"spoiler \(x1\)"):
        ds = load_dataset(tmp_path, format="pascal-part", category="car")
    assert ds.names == ["x_0"]
    m = ds[0].mask
    assert m.shape == (100, 100)
    assert (m[50:60, 10:40] == 4).all()  # wheel painted over body
    assert (m[0:5, 0:5] == 1).all()  # unknown part: body underneath stays, nothing new painted
    assert (m[60:, 50:] == 0).all()  # object pixels with no part: background
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_dataset(tmp_path, format="pascal-part", category="car", min_size=20).names == ["x_0", "x_1"]
        # Overlap is measured against each object's own box: the person covers 2% of the big car.
        assert load_dataset(tmp_path, format="pascal-part", category="car", max_overlap=0.01).names == []


def test_pascal_part_errors(tmp_path):
    with pytest.raises(InputError, match="unknown PASCAL-Part category"):
        load_dataset(tmp_path, format="pascal-part", category="dog")
    with pytest.raises(InputError, match="no PASCAL-Part .mat"):
        load_dataset(tmp_path, format="pascal-part", category="car")
    (tmp_path / "Annotations_Part").mkdir()
    (tmp_path / "Annotations_Part" / "bad.mat").write_bytes(b"not a mat file")
    with pytest.raises(InputError, match=r"bad\.mat"):
        load_dataset(tmp_path, format="pascal-part", category="car")
    (tmp_path / "Annotations_Part" / "bad.mat").unlink()
    _write_mat(tmp_path / "Annotations_Part" / "y.mat", [("car", _box(60, 60, 0, 60, 0, 60),
                                                          [("wheel_1", _box(60, 60, 0, 9, 0, 9))])])
    with pytest.raises(InputError, match=r"y\.jpg: image file not found"):
        load_dataset(tmp_path, format="pascal-part", category="car")
