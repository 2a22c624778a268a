"""The one segment job: the same inputs, errors and label path for the CLI, the app and Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slimeseg import Segmenter, writers
from slimeseg.cli import main
from slimeseg.errors import InputError
from slimeseg.job import SegmentJob, list_inputs
from slimeseg.models import LayerPlan
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

CLASSES = ",".join(SHAPE_CLASSES)


@pytest.fixture(scope="module")
def learned_file(tmp_path_factory, segmenter) -> Path:
    d = tmp_path_factory.mktemp("job")
    image, mask = shapes_scene(0, 64)
    learned = segmenter.fit([image], [mask], SHAPE_CLASSES, steps=1, image_size=64, progress=False)
    return learned.save(d / "learned.safetensors")


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for s in range(3):
        Image.fromarray(shapes_scene(s, 48)[0]).save(folder / f"s{s}.png")
    Image.fromarray(shapes_scene(3, 48)[0]).save(folder / "sub" / "deep.jpg")
    return folder


def test_globs_and_lists_work_without_ray(learned_file, images, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("# the ones to do\nin/s1.png\n\nin/sub/deep.jpg\n")
    out = tmp_path / "out"
    code = main(["segment", str(learned_file), str(images / "s0*.png"), str(listing), "--out", str(out),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png") if ".overlay" not in p.name) == ["deep.png", "s0.png", "s1.png"]
    assert not (out / "errors.jsonl").exists()  # a run without failures leaves no list
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"segmented 3 image(s) into {out} in ") and "Ray" not in last
    got = list_inputs([str(images / "**" / "*.jpg"), str(images)])
    assert got == [images / "sub" / "deep.jpg", *(images / f"s{s}.png" for s in range(3))]


def test_errors_jsonl_without_ray_tells_about_the_last_run(learned_file, images, tmp_path, capsys):
    (images / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    assert main(["segment", str(learned_file), str(images), "--out", str(out), "--quiet"]) == 1
    printed = capsys.readouterr()
    rows = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["bad.png"] and "truncated" in rows[0]["error"]
    assert f"error: {images / 'bad.png'}: corrupt or truncated" in printed.err
    assert "1 failed (listed in" in printed.out and "skipped" not in printed.out
    (images / "bad.png").unlink()
    assert main(["segment", str(learned_file), str(images), "--out", str(out), "--quiet"]) == 0
    assert not (out / "errors.jsonl").exists()
    assert "skipped 3 already done" in capsys.readouterr().out


def test_each_input_refused_alone_when_asked(learned_file, images, tmp_path):
    """The app's way: a clash or a missing file refuses that input only, the rest is done."""
    (images / "s 0.png").write_bytes((images / "s0.png").read_bytes())  # "s 0" -> "s_0": no clash
    (images / "s_0.png").write_bytes((images / "s0.png").read_bytes())  # now a clash with "s 0"
    items = [str(images / "s 0.png"), str(images / "s_0.png"), str(images / "gone.png"), str(images / "s1.png")]
    with pytest.raises(InputError, match="same output"):
        SegmentJob.plan(learned_file, items[:2], tmp_path / "o")
    job = SegmentJob.plan(learned_file, items, tmp_path / "o", each=True)
    assert job.inputs == [images / "s 0.png", images / "s1.png"]
    assert [Path(p).name for p, _ in job.refused] == ["s_0.png", "gone.png"]
    seen, errors = [], []
    result = job.run(Segmenter.from_learned(learned_file, device="cpu"), progress=False,
                     on_result=lambda p, im, lab: seen.append(p.name), on_error=lambda p, why: errors.append(why))
    assert seen == ["s 0.png", "s1.png"] and result.segmented == 2 and len(result.failed) == 2
    assert "same output" in errors[0] and "no such file" in errors[1]
    assert not errors[0].startswith(str(images))  # the reason, without the path the row carries


def test_predict_holds_no_full_size_scores(learned_file, segmenter):
    """The one label path: `predict` equals the argmax of `predict_scores` (small images: the
    same upsampling) and goes through the banded argmax (`labels_at`)."""
    image = shapes_scene(5, 72)[0][:, :60]
    seg = Segmenter.from_learned(learned_file, device="cpu")
    labels = seg.predict(image)
    assert labels.shape == (72, 60) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, seg.predict_scores(image).argmax(0).numpy())


def test_overlay_in_bands_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (301, 157, 3), dtype=np.uint8)
    labels = (rng.random((31, 16)) * 5).astype(np.uint8).repeat(10, 0).repeat(10, 1)[:301, :157]
    banded = writers.overlay(image, labels, outline=4)
    monkeypatch.setattr(writers, "OVERLAY_BAND_PIXELS", 1 << 40)
    np.testing.assert_array_equal(banded, writers.overlay(image, labels, outline=4))


@pytest.mark.slow
def test_segment_of_12_megapixels_with_20_classes_stays_within_500_mb(tiny_dir, tmp_path):
    """`slimeseg segment` itself (overlay included) on a 4000 x 3000 image with K = 20 classes:
    the peak RSS grows by at most 500 MB over the same command on a 64 px image. Measured: +192
    MB; the full (K, H, W) float scores alone are 960 MB (the old path: +956 MB)."""
    seg = Segmenter.from_pretrained(str(tiny_dir), device="cpu")
    image, mask = shapes_scene(0, 64)
    mask = (mask.astype(np.int64) * 5 + np.arange(64)[None] // 4) % 20  # all 20 classes present
    classes = ["background"] + [f"part{i}" for i in range(1, 20)]
    learned = seg.fit([image], [mask.astype(np.uint8)], classes, steps=1, image_size=64, progress=False)
    learned.save(tmp_path / "k20.safetensors")
    Image.fromarray(np.tile(shapes_scene(1, 500)[0], (6, 8, 1))).save(tmp_path / "big.png")  # 4000 x 3000
    Image.fromarray(shapes_scene(1, 64)[0]).save(tmp_path / "small.png")
    code = ("import resource, sys; from slimeseg.cli import main; c = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024); sys.exit(c)")

    def peak_mb(name: str) -> int:
        out = subprocess.run([sys.executable, "-c", code, "segment", str(tmp_path / "k20.safetensors"),
                              str(tmp_path / name), "--out", str(tmp_path / f"out-{name}"), "--quiet"],
                             capture_output=True, text=True, timeout=600, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    small, big = peak_mb("small.png"), peak_mb("big.png")
    assert Image.open(tmp_path / "out-big.png" / "big.png").size == (4000, 3000)
    assert big - small <= 500, (small, big)


def test_artifacts_are_read_through_their_recorded_layers(segmenter, tmp_path, monkeypatch):
    """The artifact records its layers; a model whose rule would choose others still reads it
    through its own; an artifact without the record uses today's rule; a bad record is refused."""
    image, mask = shapes_scene(0, 64)
    learned = segmenter.fit([image], [mask], SHAPE_CLASSES, steps=1, image_size=64, progress=False)
    plan = segmenter.sd.plan
    assert learned.layers == plan.to_dict() and learned.layers["rule"] >= 1
    from slimeseg import Learned

    path = learned.save(tmp_path / "a.safetensors")
    assert Learned.load(path).layers == plan.to_dict()
    fewer = LayerPlan(cross=plan.cross[:1], self_=plan.self_[:1])  # as a changed rule might choose
    learned_fewer = Learned.load(path)
    learned_fewer.layers = fewer.to_dict()
    from slimeseg import inference

    used = []
    real = inference.capture
    monkeypatch.setattr(inference, "capture", lambda unet, roles, store: used.append(roles) or real(unet, roles, store))
    a = segmenter.predict(image, learned)
    b = segmenter.predict(image, learned_fewer)
    legacy = Learned.load(path)
    legacy.layers = None  # made before layers were recorded: today's rule
    np.testing.assert_array_equal(segmenter.predict(image, legacy), a)
    assert used == [plan.roles(), fewer.roles(), plan.roles()] and b.shape == a.shape
    learned_fewer.layers = {"rule": 1, "cross": ["no.such.layer.processor"], "self": plan.self_}
    from slimeseg.errors import ArtifactError

    with pytest.raises(ArtifactError, match="does not have"):
        learned_fewer.check_fits(segmenter.sd, "x.safetensors")
    meta = learned.metadata() | {"layers": {"rule": "one"}}
    from safetensors.torch import save_file

    save_file({"context": learned.context}, str(tmp_path / "bad.safetensors"),
              metadata={"slimeseg": json.dumps(meta)})
    with pytest.raises(ArtifactError, match="'layers' is malformed"):
        Learned.load(tmp_path / "bad.safetensors")
