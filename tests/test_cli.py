"""The CLI end to end in a temp dir, and one-line errors with no partial output for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slimeseg.cli import main
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

CLASSES = ",".join(SHAPE_CLASSES)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("cli")
    for s in range(3):
        image, mask = shapes_scene(s, 192 if s else 128)
        Image.fromarray(image).save(d / f"scene{s}.jpg" if s else d / f"scene{s}.png")
        Image.fromarray(mask).save(d / f"scene{s}_mask.png")
    np.save(d / "scene0_mask.npy", shapes_scene(0, 128)[1].astype(np.float64))  # reference format
    return d


def _train(workdir, tiny_dir, out, *extra):
    return main(["train", "--image", str(workdir / "scene0.png"), "--mask", str(workdir / "scene0_mask.png"),
                 "--classes", CLASSES, "--model", str(tiny_dir), "--steps", "3", "--image-size", "128",
                 "--quiet", "--out", str(out), *extra])


def test_train_and_segment(workdir, tiny_dir, capsys):
    out = workdir / "shapes.safetensors"
    assert _train(workdir, tiny_dir, out) == 0
    assert out.exists()
    assert main(["train", "--image", str(workdir / "scene0.png"), "--mask", str(workdir / "scene0_mask.npy"),
                 "--classes", CLASSES, "--model", str(tiny_dir), "--steps", "2", "--image-size", "128",
                 "--quiet", "--out", str(workdir / "npy.safetensors")]) == 0
    folder = workdir / "in"
    folder.mkdir()
    for s in (1, 2):
        (folder / f"scene{s}.jpg").write_bytes((workdir / f"scene{s}.jpg").read_bytes())
    seg = workdir / "seg"
    assert main(["segment", str(out), str(folder), str(workdir / "scene0.png"), "--out", str(seg), "--quiet"]) == 0
    for name, size in (("scene0", 128), ("scene1", 192), ("scene2", 192)):
        labels = Image.open(seg / f"{name}.png")
        assert labels.mode == "P" and labels.size == (size, size)
        assert np.asarray(labels).max() < len(SHAPE_CLASSES)
        assert Image.open(seg / f"{name}.overlay.png").size == (size, size)
    meta = json.loads((seg / "classes.json").read_text())
    assert meta["classes"] == SHAPE_CLASSES and len(meta["palette"]) == len(SHAPE_CLASSES)
    assert not list(seg.glob(".*tmp"))  # atomic writes leave no temp files
    capsys.readouterr()
    assert main(["segment", str(out), str(folder), "--out", str(seg), "--quiet"]) == 0
    assert "skipped 2 already done" in capsys.readouterr().out


def test_console_script_runs(workdir):
    exe = Path(sys.executable).with_name("slimeseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "slimeseg"]
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "train" in res.stdout and "segment" in res.stdout


def _expect_error(capsys, argv, *words) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    last = err[-1]
    assert last.startswith("error: "), err
    for w in words:
        assert w in last, (w, last)
    return last


def test_bad_inputs_give_one_line_errors(workdir, tiny_dir, capsys, tmp_path):
    out = tmp_path / "x.safetensors"
    base = ["train", "--image", str(workdir / "scene1.jpg"), "--model", str(tiny_dir), "--steps", "1",
            "--image-size", "128", "--quiet", "--out", str(out)]
    # image and mask of different sizes
    _expect_error(capsys, [*base, "--mask", str(workdir / "scene0_mask.png"), "--classes", CLASSES],
                  "scene0_mask.png", "128x128", "192x192")
    # mask values outside 0..K-1
    _expect_error(capsys, [*base, "--mask", str(workdir / "scene1_mask.png"), "--classes", "background,disc"],
                  "scene1_mask.png", "holds class 3")
    # more than 76 classes
    many = ",".join(f"c{i}" for i in range(80))
    _expect_error(capsys, [*base, "--mask", str(workdir / "scene1_mask.png"), "--classes", many], "80 classes")
    # unreadable / corrupt image
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    _expect_error(capsys, [*base[:2], str(bad), *base[3:], "--mask", str(workdir / "scene1_mask.png"),
                           "--classes", CLASSES], "broken.jpg")
    # an output path that cannot be written
    _expect_error(capsys, [*base[:-1], str(tmp_path / "no" / "such" / "dir" / "x.safetensors"),
                           "--mask", str(workdir / "scene1_mask.png"), "--classes", CLASSES], "does not exist")
    assert not out.exists() and not list(tmp_path.glob("*.safetensors*"))  # nothing half-written


def test_absent_class_warns(workdir, tiny_dir, capsys, tmp_path):
    out = tmp_path / "w.safetensors"
    assert _train(workdir, tiny_dir, out, "--classes", CLASSES + ",wheel") == 0
    assert "wheel appear in no mask" in capsys.readouterr().err


def test_segment_errors(workdir, tiny_dir, capsys, tmp_path):
    learned = workdir / "shapes.safetensors"
    if not learned.exists():
        assert _train(workdir, tiny_dir, learned) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(capsys, ["segment", str(learned), str(empty), "--out", str(tmp_path / "o")], "no images found")
    clash = tmp_path / "clash"
    clash.mkdir()
    for ext in ("png", "jpg"):
        Image.fromarray(shapes_scene(1, 64)[0]).save(clash / f"a.{ext}")
    _expect_error(capsys, ["segment", str(learned), str(clash), "--out", str(tmp_path / "o")], "same output")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _expect_error(capsys, ["segment", str(learned), str(workdir / "scene1.jpg"), "--out", str(blocker / "sub")],
                  "cannot create output directory")
    _expect_error(capsys, ["segment", str(tmp_path / "none.safetensors"), str(workdir), "--out", str(tmp_path / "o")],
                  "not found")
    # a failing image in a batch is reported, the rest is written, exit code 1
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "good.jpg").write_bytes((workdir / "scene1.jpg").read_bytes())
    (mixed / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["segment", str(learned), str(mixed), "--out", str(tmp_path / "m"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "bad.png" in captured.err and "1 failed" in captured.out
    assert (tmp_path / "m" / "good.png").exists() and not (tmp_path / "m" / "bad.png").exists()


def test_wrong_model_cli(workdir, tiny_dir, other_tiny_dir, capsys, tmp_path):
    learned = tmp_path / "l.safetensors"
    assert _train(workdir, tiny_dir, learned) == 0
    _expect_error(capsys, ["segment", str(learned), str(workdir / "scene1.jpg"), "--out", str(tmp_path / "o"),
                           "--model", str(other_tiny_dir)], str(tiny_dir), str(other_tiny_dir))


def test_tiny_model_command(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "t")]) == 0
    assert "NOT a trained" in capsys.readouterr().out
    assert (tmp_path / "t" / "unet" / "config.json").exists()
    _expect_error(capsys, ["tiny-model", str(tmp_path / "t")], "not empty")


def test_segment_without_overlays(workdir, tiny_dir, tmp_path):
    learned = workdir / "shapes.safetensors"
    if not learned.exists():
        assert _train(workdir, tiny_dir, learned) == 0
    out = tmp_path / "labels-only"
    assert main(["segment", str(learned), str(workdir / "scene1.jpg"), "--out", str(out), "--no-overlays",
                 "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "scene1.png"]


def test_segment_at_native_resolution_and_squashed(workdir, tiny_dir, tmp_path):
    learned = workdir / "shapes.safetensors"
    if not learned.exists():
        assert _train(workdir, tiny_dir, learned) == 0
    wide = np.concatenate([shapes_scene(i, 192)[0] for i in range(2)], axis=1)[:150]  # (150, 384, 3)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    for flags in (["--resolution", "native", "--context", "mean"], ["--aspect", "squash"], ["--resolution", "0.5"]):
        out = tmp_path / "-".join(flags)
        assert main(["segment", str(learned), str(tmp_path / "wide.png"), "--out", str(out), "--quiet",
                     *flags]) == 0
        assert np.asarray(Image.open(out / "wide.png")).shape == (150, 384)
    assert main(["segment", str(learned), str(tmp_path / "wide.png"), "--out", str(tmp_path / "bad"),
                 "--resolution", "huge"]) == 2
