"""`evaluate_learned`, `reproduce`, the k-shot split rules and the `eval` / `reproduce` commands.

Everything runs on the tiny model at 64 px with 2 training steps: these tests check the
plumbing (reports, splits, ablation switches, JSON files, errors), not segmentation quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from slimeseg.cli import main
from slimeseg.datasets import Sample, load_dataset
from slimeseg.errors import InputError
from slimeseg.evaluate import evaluate_learned, format_report
from slimeseg.reproduce import PAPER_MIOU, reproduce
from slimeseg.splits import kshot_split, seeded_pick
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared sample data not found at {SHARED_DATA}")


def _write_folder(root, seeds, classes=SHAPE_CLASSES, size=64):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for s in seeds:
        image, mask = shapes_scene(s, size)
        Image.fromarray(image).save(root / "images" / f"scene{s}.png")
        Image.fromarray(mask).save(root / "masks" / f"scene{s}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, segmenter):
    """A 3-image folder dataset, a same-images folder with other class names, a learned file."""
    d = tmp_path_factory.mktemp("eval")
    data = _write_folder(d / "data", (1, 2, 3))
    other = _write_folder(d / "other", (1,), ["background", "square", "disc", "triangle"])
    image, mask = shapes_scene(0, 64)
    learned = segmenter.fit([image], [mask], SHAPE_CLASSES, steps=2, image_size=64, progress=False)
    path = d / "shapes.safetensors"
    learned.save(path)
    return {"dir": d, "data": data, "other": other, "learned": learned, "path": path}


def test_evaluate_learned_report(shapes, segmenter):
    dataset = load_dataset(shapes["data"])
    report = evaluate_learned(segmenter, shapes["learned"], dataset, per_image=True, batch_size=2,
                              dataset_path=shapes["data"], dataset_format="folder")
    assert report["classes"] == SHAPE_CLASSES and report["num_images"] == 3
    acc = report["accumulated"]
    assert acc["method"] == "accumulated" and set(acc["per_class"]) == set(SHAPE_CLASSES)
    assert report["miou"] == acc["miou"] and 0.0 <= report["miou"] <= 1.0
    assert report["per_image"]["method"] == "per_image"
    assert report["settings"]["image_size"] == 64  # the artifact's own settings by default
    assert set(report["versions"]) >= {"slimeseg", "torch", "diffusers"}
    assert report["model"]["id"] == segmenter.sd.model_id
    assert report["dataset"] == {"path": str(shapes["data"]), "format": "folder", "num_images": 3}
    assert report["timings"]["predict_s"] > 0
    json.dumps(report)  # JSON-ready
    table = format_report(report)
    assert "mIoU" in table and "triangle" in table and "per-image" in table
    # overrides reach inference, and the plain report has no per-image block
    plain = evaluate_learned(segmenter, shapes["learned"], dataset, use_was=False, tiles=2)
    assert "per_image" not in plain
    assert plain["settings"]["use_was"] is False and plain["settings"]["tiles"] == 2


def test_evaluate_refuses_other_class_list(shapes, segmenter):
    other = load_dataset(shapes["other"])
    with pytest.raises(InputError) as err:
        evaluate_learned(segmenter, shapes["learned"], other)
    msg = str(err.value)
    assert "\n" not in msg
    assert "background, disc, square, triangle" in msg and "background, square, disc, triangle" in msg


def test_cli_eval_writes_json(shapes, tiny_dir, capsys):
    out = shapes["dir"] / "report.json"
    code = main(["eval", str(shapes["path"]), str(shapes["data"]), "--model", str(tiny_dir),
                 "--per-image", "--no-was", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "disc" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert report["settings"]["use_was"] is False and "per_image" in report
    assert not list(shapes["dir"].glob(".*tmp"))  # written atomically


def test_cli_eval_class_mismatch_is_one_line(shapes, tiny_dir, capsys):
    out = shapes["dir"] / "bad.json"
    code = main(["eval", str(shapes["path"]), str(shapes["other"]), "--model", str(tiny_dir),
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "do not match" in err[-1]
    assert not out.exists()


def test_cli_eval_pascal_needs_category(shapes, capsys):
    code = main(["eval", str(shapes["path"]), str(shapes["data"]), "--format", "pascal-part",
                 "--out", str(shapes["dir"] / "x.json")])
    assert code == 2 and "--category" in capsys.readouterr().err


# ---------------------------------------------------------------------------- splits
def _samples(n):
    return [Sample(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), f"s{i}") for i in range(n)]


def test_seeded_pick_rules():
    pool = _samples(12)
    train, test, notes = seeded_pick(pool, 10, seed=0)
    assert len(train) == 10 and len(test) == 2 and not notes
    assert {s.name for s in train}.isdisjoint(s.name for s in test)
    again, _, _ = seeded_pick(pool, 10, seed=0)
    assert [s.name for s in again] == [s.name for s in train]
    train, test, notes = seeded_pick(_samples(3), 10, seed=0)
    assert len(train) == 2 and len(test) == 1 and "not 10" in notes[0]
    train, test, notes = seeded_pick(_samples(1), 1, seed=0)
    assert train == test and "SAME" in notes[0]


def test_seeds_draw_different_examples():
    pool = _samples(50)
    picks = {seeded_pick(pool, 1, seed)[0][0].name for seed in range(3)}
    assert len(picks) > 1


@needs_shared
def test_kshot_split_on_samples():
    face = kshot_split("celeba", SHARED_DATA / "celeba-slime", 1, seed=0)
    assert face.data_format == "slime" and [s.name for s in face.train] == ["152"]
    assert [s.name for s in face.test] == ["18"] and face.classes[0] == "background"
    plain = kshot_split("celeba", SHARED_DATA / "celebamask-hq-samples", 1, seed=0)
    assert plain.data_format == "celebamask-hq" and len(plain.train) == 1 and len(plain.test) == 3
    car = kshot_split("car", SHARED_DATA / "pascal-part", 1, seed=0)
    assert car.data_format == "pascal-part" and car.train and car.test
    assert "ReGAN" in car.rule


# ---------------------------------------------------------------------------- reproduce
@needs_shared
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_reproduce_celeba_and_car(segmenter):
    face = reproduce("tiny", "celeba", 1, seeds=2, data_dir=SHARED_DATA / "celeba-slime", steps=2,
                     image_size=64, segmenter=segmenter)
    assert face.seeds == [0, 1] and len(face.runs) == 2
    assert face.paper_miou == PAPER_MIOU[("celeba", 1)]
    assert all(r["report"]["settings"]["tiles"] == 2 for r in face.runs)  # the reference's tiles
    assert face.runs[0]["report"]["settings"]["min_crop_ratio"] == 0.6  # face preset
    assert face.runs[0]["report"]["settings"]["rotate_degrees"] == 10.0
    summary = face.summary()
    assert summary["miou"]["seeds"] == 2 and summary["miou"]["std"] >= 0
    table = face.table()
    assert "69.6" in table and "ours" in table and "seed 1" in table and "mIoU" in table
    assert "ours, reference decoding" in table  # the reference's own test step, beside ours
    assert all(0 <= r["report"]["reference_decoding"]["miou"] <= 1 for r in face.runs)
    json.dumps(face.to_dict())

    car = reproduce("tiny", "car", 1, seeds=2, data_dir=SHARED_DATA / "pascal-part", steps=2,
                    image_size=64, segmenter=segmenter, use_was=False, use_ldm=False)
    table = car.table()
    assert "61.6" not in table and "paper (no WAS)" in table  # the paper has no 1-shot no-WAS figure
    assert any("SAME" in n or "trained on" in n for n in car.notes)  # too few objects, said so
    for run in car.runs:  # ablations reached training and inference
        assert run["report"]["settings"]["use_was"] is False
        assert run["report"]["settings"]["use_ldm"] is False
        assert run["report"]["settings"]["rotate_degrees"] == 30.0  # car preset


@needs_shared
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_reproduce(tiny_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["reproduce", "--dataset", "horse", "--shots", "1", "--seeds", "2", "--data",
                 str(SHARED_DATA / "pascal-part"), "--model", str(tiny_dir), "--steps", "2",
                 "--image-size", "64", "--no-mse", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "PASCAL-Part horse, 1-shot" in printed and "56.4" in printed and "note:" in printed
    results = json.loads(out.read_text())
    assert results["shots"] == 1 and len(results["runs"]) == 2
    assert results["settings"]["use_mse"] is False


# ---------------------------------------------------------------------------- class names
def test_eval_takes_the_artifacts_names_when_the_dataset_names_none(shapes, tiny_dir, capsys):
    unnamed = _write_folder(shapes["dir"] / "unnamed", (1, 2))
    (unnamed / "classes.txt").unlink()
    assert load_dataset(unnamed).named is False
    out = shapes["dir"] / "unnamed.json"
    code = main(["eval", str(shapes["path"]), str(unnamed), "--model", str(tiny_dir), "--out", str(out),
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "names no classes; using the embeddings'" in captured.err
    report = json.loads(out.read_text())
    assert report["classes"] == SHAPE_CLASSES and report["notes"]
    # a dataset whose labels go beyond the artifact's classes is still refused
    from slimeseg.datasets import Dataset
    from slimeseg.evaluate import match_classes

    wide = Dataset(classes=["background", "class_1"], samples=load_dataset(unnamed).samples, named=False)
    with pytest.raises(InputError, match="do not match"):
        match_classes(["background", "disc"], wide)


def test_segment_classes_json_names_a_dataset(shapes, tmp_path):
    data = _write_folder(tmp_path / "d", (1,))
    (data / "classes.txt").unlink()
    (data / "classes.json").write_text(json.dumps({"classes": SHAPE_CLASSES, "palette": []}))
    dataset = load_dataset(data)
    assert dataset.named and dataset.classes == SHAPE_CLASSES
    (data / "classes.json").write_text(json.dumps({"palette": []}))
    with pytest.raises(InputError, match="classes.json: needs a \"classes\" list"):
        load_dataset(data)
