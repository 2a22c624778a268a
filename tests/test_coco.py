"""COCO export (`segment --format coco`): pycocotools decodes coco.json to exactly the label maps
of a PNG run; resumable, never partial; a folder with another job's coco.json is refused."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from slimeseg import coco
from slimeseg.cli import main
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

mask_api = pytest.importorskip("pycocotools.mask", reason="pycocotools (slimeseg[coco]) not installed")
from pycocotools.coco import COCO  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def decode(coco_file: Path) -> dict[str, np.ndarray]:
    """file_name -> label map rebuilt from the COCO file by pycocotools alone."""
    api = COCO(str(coco_file))
    out = {}
    for image in api.dataset["images"]:
        labels = np.zeros((image["height"], image["width"]), np.uint8)
        for ann in api.loadAnns(api.getAnnIds(imgIds=[image["id"]])):
            binary = api.annToMask(ann).astype(bool)
            assert not (labels[binary] != 0).any(), "annotations of one image overlap"
            labels[binary] = ann["category_id"]
        out[image["file_name"]] = labels
    return out


# ---------------------------------------------------------------------------- the module alone
def test_document_round_trip_non_square_absent_class_and_instances():
    a = np.zeros((30, 50), np.uint8)  # not square; class 2 absent
    a[2:8, 3:9] = 1
    a[20:25, 40:48] = 1  # a second region of class 1
    a[10:12, 10:12] = 3
    b = np.full((40, 20), 2, np.uint8)  # every pixel one class; classes 1 and 3 absent
    job = {"embeddings": "x"}
    doc = coco.document([("a.png", a), ("sub/b.jpg", b)], SHAPE_CLASSES, job)
    assert [c["id"] for c in doc["categories"]] == list(range(1, len(SHAPE_CLASSES)))
    assert [c["name"] for c in doc["categories"]] == SHAPE_CLASSES[1:]
    assert all(len(c["color"]) == 3 for c in doc["categories"])
    assert doc["images"] == [{"id": 1, "file_name": "a.png", "width": 50, "height": 30},
                             {"id": 2, "file_name": "sub/b.jpg", "width": 20, "height": 40}]
    per = [(x["image_id"], x["category_id"]) for x in doc["annotations"]]
    assert per == [(1, 1), (1, 3), (2, 2)]  # one per (image, class present)
    first = doc["annotations"][0]
    assert first["area"] == 36 + 40 and first["iscrowd"] == 0
    assert first["bbox"] == [3.0, 2.0, 45.0, 23.0]
    assert isinstance(first["segmentation"]["counts"], str)
    inst = coco.document([("a.png", a)], SHAPE_CLASSES, job, instances=True)["annotations"]
    assert [(x["category_id"], x["area"], x["bbox"]) for x in inst] == [
        (1, 36, [3.0, 2.0, 6.0, 6.0]), (1, 40, [40.0, 20.0, 8.0, 5.0]), (3, 4, [10.0, 10.0, 2.0, 2.0])]
    assert [x["id"] for x in inst] == [1, 2, 3]
    # pycocotools decodes each RLE to exactly its region
    for x, want in zip(inst, [(slice(2, 8), slice(3, 9)), (slice(20, 25), slice(40, 48))], strict=False):
        m = mask_api.decode({**x["segmentation"], "counts": x["segmentation"]["counts"].encode()})
        ref = np.zeros_like(a)
        ref[want] = 1
        assert np.array_equal(m, ref)


def test_instances_join_pixels_touching_at_a_corner():
    a = np.zeros((6, 6), np.uint8)
    a[1, 1] = a[2, 2] = 1  # diagonal neighbours: one object
    a[4, 4] = 1
    assert [m.sum() for _, m in coco.regions(a, 2, instances=True)] == [2, 1]


# ---------------------------------------------------------------------------- the segment job
@pytest.fixture(scope="module")
def run(tmp_path_factory, segmenter):
    """A matching artifact, inputs (two non-square, one in a sub folder via a list), a PNG run
    and a COCO run of the same job through the CLI."""
    root = tmp_path_factory.mktemp("coco")
    images = root / "in"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(shapes_scene(1, 48)[0][:32]).save(images / "wide.png")  # 48 x 32
    Image.fromarray(shapes_scene(2, 40)[0][:, :24]).save(images / "sub" / "tall.png")  # 24 x 40
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(images / "flat.png")
    (images / "bad.png").write_text("not an image\n")
    listing = root / "list.txt"
    listing.write_text("in/wide.png\nin/sub/tall.png\nin/flat.png\nin/bad.png\n")
    image, mask = shapes_scene(0, 64)
    learned = segmenter.match([image], [mask], SHAPE_CLASSES, image_size=64).save(root / "m.safetensors")
    png, out = root / "png", root / "coco"
    assert main(["segment", str(learned), str(listing), "--out", str(png), "--quiet"]) == 1
    assert main(["segment", str(learned), str(listing), "--out", str(out), "--format", "coco",
                 "--quiet"]) == 1  # bad.png fails, the others are written
    return SimpleNamespace(root=root, images=images, listing=listing, learned=learned, png=png, out=out)


def test_coco_decodes_to_the_label_maps_of_a_png_run(run):
    decoded = decode(run.out / "coco.json")
    assert list(decoded) == ["wide.png", "sub/tall.png", "flat.png"]  # input order; bad.png left out
    for name, labels in decoded.items():
        ref = np.asarray(Image.open(run.png / (Path(name).stem + ".png")))
        assert labels.shape == ref.shape
        assert np.array_equal(labels, ref), name
    data = json.loads((run.out / "coco.json").read_text())
    assert {(i["width"], i["height"]) for i in data["images"]} == {(48, 32), (24, 40), (32, 32)}
    present = {(a["image_id"], a["category_id"]) for a in data["annotations"]}
    assert len(present) < 3 * (len(SHAPE_CLASSES) - 1)  # some image lacks some class
    assert json.loads((run.out / "errors.jsonl").read_text())["path"].endswith("bad.png")


def test_rerun_after_a_kill_gives_the_same_file(run, tmp_path):
    out = tmp_path / "killed"
    shutil.copytree(run.out, out)
    whole = (out / "coco.json").read_bytes()
    (out / "coco.json").unlink()  # killed before the end: no coco.json yet ...
    (out / "tall.png").unlink()  # ... one image not done ...
    (out / ".coco.json.abc123.tmp").write_text('{"half": ')  # ... and a half-written temp file
    assert main(["segment", str(run.learned), str(run.listing), "--out", str(out), "--format",
                 "coco", "--quiet"]) == 1
    assert (out / "coco.json").read_bytes() == whole
    assert not list(out.glob(".*.tmp"))


def test_instances_on_the_cli(run, tmp_path):
    out = tmp_path / "inst"
    assert main(["segment", str(run.learned), str(run.images / "wide.png"), "--out", str(out),
                 "--format", "coco", "--instances", "--no-overlays", "--quiet"]) == 0
    data = json.loads((out / "coco.json").read_text())
    ref = np.asarray(Image.open(run.png / "wide.png"))
    assert len(data["annotations"]) == sum(n for _, n in (
        coco.ndimage.label(ref == k, structure=coco._EIGHT) for k in range(1, len(SHAPE_CLASSES))))
    assert np.array_equal(decode(out / "coco.json")["wide.png"], ref)
    assert data["info"]["slimeseg"]["instances"] is True
    # the same label maps, one annotation per class again: the folder is not another job's
    assert main(["segment", str(run.learned), str(run.images / "wide.png"), "--out", str(out),
                 "--format", "coco", "--no-overlays", "--quiet"]) == 0
    data = json.loads((out / "coco.json").read_text())
    assert data["info"]["slimeseg"]["instances"] is False
    assert len(data["annotations"]) == len(set(np.unique(ref)) - {0})


def test_stale_coco_file_of_another_job_is_refused_and_nothing_written(run, tmp_path, capsys):
    out = tmp_path / "stale"
    out.mkdir()
    stale = json.loads((run.out / "coco.json").read_text())
    stale["info"]["slimeseg"]["embeddings"] = "0" * 64
    (out / "coco.json").write_text(json.dumps(stale))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(["segment", str(run.learned), str(run.images / "wide.png"), "--out", str(out),
                 "--format", "coco", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {out / 'coco.json'}: written by another job (its embeddings differ)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written
    (out / "coco.json").write_text("[1, 2]")  # not ours at all
    assert main(["segment", str(run.learned), str(run.images / "wide.png"), "--out", str(out),
                 "--format", "coco", "--quiet"]) == 2
    assert "not written by slimeseg" in capsys.readouterr().err
    assert main(["segment", str(run.learned), str(run.images / "wide.png"), "--out", str(out),
                 "--format", "coco", "--overwrite", "--quiet"]) == 0
    assert list(decode(out / "coco.json")) == ["wide.png"]


def test_instances_and_parquet_without_their_companions_are_refused(run, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["segment", str(run.learned), str(run.images), "--out", str(out), "--instances"]) == 2
    assert "--instances goes with --format coco" in capsys.readouterr().err
    assert main(["segment", str(run.learned), str(run.images), "--out", str(out), "--format",
                 "parquet"]) == 2
    assert "go with --ray" in capsys.readouterr().err
    assert not out.exists()


def test_without_pycocotools_the_command_says_what_to_install(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails
    out = tmp_path / "x"
    assert main(["segment", str(run.learned), str(run.images), "--out", str(out), "--format",
                 "coco"]) == 2
    assert capsys.readouterr().err.strip() == ("error: COCO output needs pycocotools; install it "
                                               "with: pip install 'slimeseg[coco]'")
    assert not out.exists()


@pytest.mark.slow
def test_ray_writes_the_same_coco_file(run, tmp_path):
    ray = pytest.importorskip("ray")
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    try:
        out = tmp_path / "ray"
        assert main(["segment", str(run.learned), str(run.listing), "--out", str(out), "--format",
                     "coco", "--ray", "--quiet"]) == 1
    finally:
        ray.shutdown()
    assert (out / "coco.json").read_bytes() == (run.out / "coco.json").read_bytes()


def test_clips_are_refused_with_coco_before_any_work(run, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)  # refused by its kind, before it is opened
    out = tmp_path / "x"
    assert main(["segment", str(run.learned), str(clip), "--out", str(out), "--format", "coco"]) == 2
    assert "clip.mp4: a clip; --format coco takes images" in capsys.readouterr().err
    assert not out.exists()
