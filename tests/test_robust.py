"""Robustness: readers under random input, batch segmentation that loses nothing when killed,
training that survives Ctrl-C, and output names that stay inside the output folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from test_corpus import CASES  # tests/ is on sys.path (rootdir-less test modules)

from slimeseg import Learned
from slimeseg.cli import main
from slimeseg.errors import InputError
from slimeseg.io import load_image, load_mask
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.writers import output_names, safe_stem

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ",".join(SHAPE_CLASSES)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _env() -> dict[str, str]:
    """Subprocesses run this checkout's code on one thread (multi-threaded CPU kernels are not
    bitwise repeatable, so exact-equality checks run single-threaded on both sides)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt even
    when the test runner itself was started with SIGINT ignored (as background jobs are)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _slimeseg(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slimeseg", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)


@pytest.fixture(scope="module")
def example(tmp_path_factory, tiny_dir) -> Path:
    """A training pair at 64 px and embeddings trained on it for one step."""
    d = tmp_path_factory.mktemp("robust")
    image, mask = shapes_scene(0, 64)
    Image.fromarray(image).save(d / "train.png")
    Image.fromarray(mask).save(d / "train_mask.png")
    assert main(["train", "--image", str(d / "train.png"), "--mask", str(d / "train_mask.png"), "--classes",
                 CLASSES, "--model", str(tiny_dir), "--steps", "1", "--image-size", "64", "--quiet",
                 "--out", str(d / "learned.safetensors")]) == 0
    return d


# ---------------------------------------------------------------------------- readers, fuzzed
@FUZZ
@given(data=st.binary(max_size=600), ext=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".bmp", ".webp"]))
def test_random_bytes_as_image(data, ext):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{ext}"
        path.write_bytes(data)
        try:
            arr = load_image(path)
        except InputError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
        else:
            assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8


@FUZZ
@given(data=st.binary(max_size=600), ext=st.sampled_from([".npy", ".png", ".tif"]))
def test_random_bytes_as_mask(data, ext):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"m{ext}"
        path.write_bytes(b"\x93NUMPY" + data if ext == ".npy" and data[:1] == b"\x01" else data)
        try:
            arr = load_mask(path)
        except InputError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
        else:
            assert arr.ndim == 2 and arr.dtype == np.uint8


def _valid_mask(arr: np.ndarray) -> bool:
    if arr.ndim != 2 or arr.size == 0:
        return False
    if arr.dtype == bool:
        return True
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
            return False
    return bool(arr.min() >= 0 and arr.max() < 256)


MASK_DTYPES = st.sampled_from([np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float32,
                               np.float64, np.bool_])


@FUZZ
@given(arr=hnp.arrays(MASK_DTYPES, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6)))
def test_random_arrays_as_npy_masks(arr):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.npy"
        np.save(path, arr)
        try:
            out = load_mask(path)
        except InputError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            squeezed = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
            assert not _valid_mask(squeezed), arr
        else:
            expected = arr[..., 0] if arr.ndim == 3 else arr
            assert out.dtype == np.uint8 and _valid_mask(expected)
            np.testing.assert_array_equal(out, expected.astype(np.uint8))


@FUZZ
@given(arr=hnp.arrays(st.sampled_from([np.uint8, np.uint16]), hnp.array_shapes(min_dims=2, max_dims=2,
                                                                                max_side=9)))
def test_random_arrays_as_png_masks(arr):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.png"
        Image.fromarray(arr).save(path)
        try:
            out = load_mask(path)
        except InputError as exc:
            assert str(path) in str(exc) and arr.max() >= 256
        else:
            np.testing.assert_array_equal(out, arr)


# ---------------------------------------------------------------------------- output names
def test_output_names_stay_inside_and_never_collide(tmp_path):
    assert safe_stem("../../etc/passwd") == "_._.._etc_passwd"
    assert safe_stem(".hidden") == "_hidden" and safe_stem("") == "_"
    assert safe_stem("my photo (1)") == "my_photo__1_" and safe_stem("Straße") == "Stra_e"
    for stem in ("../x", "/abs/x", "a\\b", "..", "\x00nul", "ok.name-1_2"):
        name = safe_stem(stem)
        assert (tmp_path / f"{name}.png").resolve().parent == tmp_path.resolve()
        assert not name.startswith(".") and set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                             "0123456789._-")
    for a, b in (("a b.png", "a_b.jpg"), ("Car.png", "car.jpg"), ("x.png", "x.overlay.png"),
                 ("d1/a.png", "d2/a.png")):
        with pytest.raises(InputError, match="same output"):
            output_names([tmp_path / a, tmp_path / b])
    assert output_names([tmp_path / "a.png", tmp_path / "b.png"]) == {tmp_path / "a.png": "a",
                                                                      tmp_path / "b.png": "b"}


# ---------------------------------------------------------------------------- CLI over bad inputs
def test_segment_folder_of_corpus_images(example, tmp_path, capsys):
    """Good images (odd modes, sizes, names) are written; each bad one is one error line; exit 1."""
    folder = tmp_path / "in"
    folder.mkdir()
    picks = {"mode_I16.png", "mode_CMYK.jpg", "mode_P.gif", "exif6.jpg", "tiny1x1.png", "tiny40x1.bmp",
             "trunc30.png", "trunc60.jpg", "random.webp", "text.tif", "empty.png", "svg.png"}
    cases = [c for c in CASES if c.name in picks]
    assert len(cases) == len(picks)
    for case in cases:
        case.write(folder / case.name)
    (folder / "notes.txt").write_text("not an image, not even by name")  # skipped silently
    (folder / "my photo (1).png").write_bytes((example / "train.png").read_bytes())
    out = tmp_path / "out"
    code = main(["segment", str(example / "learned.safetensors"), str(folder), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    bad = [c for c in cases if c.expect == "error"]
    assert code == 1 and "Traceback" not in captured.err
    assert len(errors) == len(bad) and f"{len(bad)} failed" in captured.out
    for case in bad:
        assert any(str(folder / case.name) in line for line in errors), case.name
        assert not (out / f"{Path(case.name).stem}.png").exists()
    for case in (c for c in cases if c.expect == "works"):
        labels = Image.open(out / f"{Path(case.name).stem.replace(';', '_')}.png")
        assert labels.size == (case.shape[1], case.shape[0])  # the input's own (EXIF-applied) size
    assert Image.open(out / "my_photo__1_.png").size == (64, 64)


def test_max_image_pixels_flag(example, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["segment", str(example / "learned.safetensors"), str(example / "train.png"), "--out", str(out),
            "--quiet"]
    assert main([*args, "--max-image-pixels", "1000"]) == 1  # 64x64 > 2 x 1000: refused
    assert "--max-image-pixels" in capsys.readouterr().err
    assert main([*args, "--max-image-pixels", "0"]) == 0
    assert main([*args, "--max-image-pixels", "-1"]) == 2
    Image.MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default, for the tests that follow


# ---------------------------------------------------------------------------- killed batches
def _opens_fully(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:
        return False


def test_killed_batch_loses_nothing_and_rerun_finishes(example, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    n = 60  # far more than are done by the time the kill lands
    for s in range(n):
        Image.fromarray(shapes_scene(s, 64)[0]).save(folder / f"img{s:02d}.png")
    learned = str(example / "learned.safetensors")
    proc = _slimeseg("segment", learned, str(folder), "--out", str(out), "--quiet")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len(list(out.glob("img??.png"))) >= 3:  # label maps are written last
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = sorted(out.glob("img??.png"))
    assert 3 <= len(done) < n, "the batch finished before it could be killed"
    for png in out.glob("*.png"):
        assert _opens_fully(png), png  # every output there is whole; only temp files may be partial
    (out / ".img29.png.deadbeef.tmp").write_bytes(b"half a png")  # what a kill mid-write leaves
    rerun = _slimeseg("segment", learned, str(folder), "--out", str(out), "--quiet")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"skipped {len(done)} already done" in stdout or f"skipped {len(done) + 1}" in stdout, stdout
    assert not list(out.glob(".*.tmp"))
    assert len(list(out.glob("img??.png"))) == n and all(_opens_fully(p) for p in out.glob("*.png"))


# ---------------------------------------------------------------------------- interrupted training
def test_ctrl_c_then_resume_equals_uninterrupted_run(example, tiny_dir, tmp_path):
    common = ["--image", str(example / "train.png"), "--mask", str(example / "train_mask.png"), "--classes",
              CLASSES, "--model", str(tiny_dir), "--steps", "150", "--image-size", "64", "--seed", "7",
              "--no-augment", "--quiet"]
    out, ckpt = tmp_path / "run.safetensors", tmp_path / "run.safetensors.ckpt"
    proc = _slimeseg("train", *common, "--checkpoint-every", "2", "--out", str(out))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not ckpt.exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"progress saved to {ckpt}" in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    partial = Learned.load(ckpt)
    assert 2 <= partial.history["steps_done"] < 150
    assert len(partial.history["loss"]) == partial.history["steps_done"]
    full = tmp_path / "full.safetensors"
    with _one_thread():
        assert main(["train", *common, "--resume", str(ckpt), "--out", str(out)]) == 0
        assert main(["train", *common, "--out", str(full)]) == 0
    assert torch.equal(Learned.load(out).context, Learned.load(full).context)
    assert Learned.load(out).history["loss"] == Learned.load(full).history["loss"]


def test_nan_loss_keeps_last_good_embeddings(example, tiny_dir, tmp_path, capsys):
    out = tmp_path / "nan.safetensors"
    code = main(["train", "--image", str(example / "train.png"), "--mask", str(example / "train_mask.png"),
                 "--classes", CLASSES, "--model", str(tiny_dir), "--steps", "4", "--image-size", "64",
                 "--lr", "1e30", "--no-augment", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and not out.exists()
    ckpt = tmp_path / "nan.safetensors.ckpt"
    assert f"saved in {ckpt}" in err, err
    good = Learned.load(ckpt)
    assert torch.isfinite(good.context).all() and good.history["steps_done"] >= 1


def test_exif_rotated_image_and_mask_pair_up(tmp_path):
    """A photo and its mask that both carry an orientation tag are rotated alike and still match."""
    from slimeseg.examples import prepare_examples

    image, mask = shapes_scene(0, 64)
    image, mask = image[:, :48], mask[:, :48]  # not square, so a missed rotation shows
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image).save(tmp_path / "photo.jpg", exif=exif)
    Image.fromarray(mask).save(tmp_path / "photo_mask.png", exif=exif)
    (ex,) = prepare_examples([tmp_path / "photo.jpg"], [tmp_path / "photo_mask.png"], SHAPE_CLASSES)
    assert tuple(ex.image.shape[1:]) == tuple(ex.mask.shape) == (48, 64)
    np.testing.assert_array_equal(ex.mask.numpy(), np.rot90(mask, -1))
