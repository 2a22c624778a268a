"""`segment --ray` on a local Ray cluster (2 CPUs, tiny model): the same bytes as the single
process, bad files recorded and skipped, a killed worker restarted by Ray with every output
written exactly once, re-runs that do no prediction work, Parquet output, and the load/write
task layout that GPU clusters use."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

import slimeseg
from slimeseg import Segmenter, distributed
from slimeseg.cli import main
from slimeseg.io import load_image
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.writers import label_png_bytes

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 40
BAD = {"corrupt.png": "corrupt or truncated image", "notes.png": "not a readable image"}


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module; its workers import this checkout's slimeseg."""
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_dir):
    """40 scenes of several sizes (some not square), a corrupt PNG and a text file named .png,
    a learned artifact, and the single-process CLI's outputs for them."""
    root = tmp_path_factory.mktemp("ray-job")
    images = root / "images"
    images.mkdir()
    for i in range(IMAGES):
        size = 40 + 8 * (i % 4)
        image = shapes_scene(i + 1, size)[0]
        Image.fromarray(image[: size - 8] if i % 3 == 0 else image).save(images / f"scene{i:02d}.png")
    (images / "corrupt.png").write_bytes((images / "scene01.png").read_bytes()[:150])
    (images / "notes.png").write_text("a text file, not an image\n")
    learned = root / "shapes.safetensors"
    image, mask = shapes_scene(0, 64)
    # bilinear: the tiny random model's scores are nearly flat, and guided upsampling smooths
    # them to background everywhere; these tests need label maps with parts in them
    Segmenter.from_pretrained(str(tiny_dir), device="cpu").fit(
        [image], [mask], SHAPE_CLASSES, steps=2, image_size=64, upsample="bilinear",
        progress=False).save(learned)
    ref = root / "reference"
    assert main(["segment", str(learned), str(images), "--out", str(ref), "--quiet"]) == 1
    return SimpleNamespace(root=root, images=images, learned=learned, ref=ref)


@pytest.fixture(scope="module")
def ray_run(cluster, job):
    """The same job through `slimeseg segment --ray` (once for the module): exit code, printed
    lines, output folder."""
    out, printed = job.root / "ray", io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["segment", str(job.learned), str(job.images), "--out", str(out), "--ray", "--quiet"])
    return SimpleNamespace(code=code, out=out, lines=printed.getvalue().splitlines())


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "errors.jsonl"}


def _expected_files() -> set[str]:
    names = {f"scene{i:02d}{s}" for i in range(IMAGES) for s in (".png", ".overlay.png")}
    return names | {"classes.json", "errors.jsonl"}


def test_workers_import_this_checkout(cluster):
    where = ray.get(ray.remote(lambda: __import__("slimeseg").__file__).remote())
    assert where == slimeseg.__file__


def test_ray_outputs_equal_the_single_process_bitwise_and_bad_files_are_recorded(job, ray_run):
    assert ray_run.code == 1  # some inputs failed
    ref, out = _outputs(job.ref), _outputs(ray_run.out)
    assert len(ref) == 2 * IMAGES + 1  # label maps, overlays, classes.json
    assert out.keys() == ref.keys()
    assert [n for n in ref if out[n] != ref[n]] == []  # every file byte for byte
    assert {p.name for p in ray_run.out.iterdir()} == _expected_files()  # nothing else, no temp file
    sizes = {Image.open(ray_run.out / f"scene{i:02d}.png").size for i in range(IMAGES)}
    assert sizes == {Image.open(job.images / f"scene{i:02d}.png").size for i in range(IMAGES)}
    assert len(sizes) == 8  # each input's own size: four sides, square or not
    errors = [json.loads(line) for line in (ray_run.out / "errors.jsonl").read_text().splitlines()]
    assert sorted(Path(e["path"]).name for e in errors) == sorted(BAD)
    for e in errors:
        assert BAD[Path(e["path"]).name] in e["error"] and "\n" not in e["error"]
        assert Path(e["path"]).is_absolute()
    # the final line: images, seconds, images/s
    assert ray_run.lines[-1].startswith(f"segmented {IMAGES} image(s) into {ray_run.out} in ")
    assert " images/s) on 2 Ray worker(s), 2 failed (listed in " in ray_run.lines[-1]


def test_rerun_after_completion_does_no_prediction_work(cluster, job, ray_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ray_run.out, out)  # copy2: the same modification times
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith("scene")}
    again = distributed.segment(str(job.learned), [str(job.images / "scene*.png")], out,
                                progress=False, echo=None)
    assert (again.skipped, again.segmented, again.predicted, again.workers) == (IMAGES, 0, 0, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith("scene")} == before


def _alive_workers() -> list[dict]:
    return [a for a in ray._private.state.actors().values()
            if "SegmentWorker" in a["ActorClassName"] and a["State"] == "ALIVE" and a["Pid"]]


def test_killed_worker_is_restarted_and_every_output_is_written_once(cluster, job, ray_run, tmp_path):
    """Resume a half-finished folder (24 inputs lack their label map or their overlay) with two
    workers, SIGKILL one worker's process mid-run (it may be writing): Ray restarts it and redoes
    its batches, and the folder ends up byte for byte the single process's, each output once,
    no temp file."""
    out = tmp_path / "out"
    shutil.copytree(ray_run.out, out)
    for i in range(0, IMAGES, 5):  # 8 incomplete: label map gone
        (out / f"scene{i:02d}.png").unlink()
    for i in range(IMAGES):  # 16 more: overlay gone
        if i % 5 and i % 5 < 3:
            (out / f"scene{i:02d}.overlay.png").unlink()
    present = len(list(out.glob("scene*")))
    done: dict = {}
    run = threading.Thread(target=lambda: done.update(result=distributed.segment(
        str(job.learned), [str(job.images)], out, workers=2, progress=False, echo=None)))
    run.start()
    deadline = time.monotonic() + 180
    while len(list(out.glob("scene*"))) < present + 2 or len(_alive_workers()) < 2:
        assert run.is_alive() and time.monotonic() < deadline, "the job ended before the kill"
        time.sleep(0.01)
    victim = _alive_workers()[0]
    written_at_kill = len(list(out.glob("scene*"))) - present
    os.kill(victim["Pid"], signal.SIGKILL)  # mid-run: the actor's process, at once
    run.join(timeout=300)
    assert not run.is_alive()
    result = done["result"]
    assert written_at_kill < 24 + 8  # the kill came with work left
    assert ray._private.state.actors(victim["ActorID"])["NumRestarts"] >= 1  # Ray restarted it
    assert (result.skipped, result.segmented) == (IMAGES - 24, 24)
    assert sorted(Path(p).name for p, _ in result.failed) == sorted(BAD)
    assert {p.name for p in out.iterdir()} == _expected_files()  # no partial, duplicate or temp file
    assert _outputs(out) == _outputs(job.ref)


def test_parquet_dataset_and_errors_table(cluster, job, tmp_path):
    listing = tmp_path / "list.txt"
    (tmp_path / "readme.txt").write_text("not an image\n")
    names = [f"scene{i:02d}.png" for i in range(6)]
    listing.write_text("# images to segment\n" + "".join(f"{job.images / n}\n" for n in names)
                       + "readme.txt\nmissing.png\n")
    out = tmp_path / "out"
    # in the GPU clusters' layout (decoding and writing in CPU tasks beside the actor), with a
    # setting other than the artifact's: the workers apply it as `predict` does
    result = distributed.segment(str(job.learned), [str(listing)], out, format="parquet", workers=1,
                                 io_tasks=True, progress=False, echo=None, image_size=128)
    assert result.segmented == 6 and len(result.failed) == 2
    table = pq.read_table(out / "labels")  # the dataset: every part of the folder
    assert sorted(table.column_names) == ["classes", "height", "labels_png", "name", "path", "width"]
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert sorted(rows) == names
    seg = Segmenter.from_learned(str(job.learned), device="cpu")
    for n, r in rows.items():
        labels = seg.predict(load_image(job.images / n), image_size=128)
        assert r["labels_png"] == label_png_bytes(labels, len(SHAPE_CLASSES))  # NAME.png's bytes
        assert not np.array_equal(labels, np.asarray(Image.open(job.ref / n)))  # not the 64-px map
        assert (r["width"], r["height"]) == Image.open(job.images / n).size
        assert r["classes"] == SHAPE_CLASSES and r["name"] == n[:-4]
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert {Path(e["path"]).name: e["error"] for e in errors} == {
        "readme.txt": "not a readable image (unknown or corrupt format)",
        "missing.png": "image file not found"}
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert len(list((out / "labels").iterdir())) == len(list((out / "labels").glob("part-*.parquet")))


def test_inputs_from_folders_globs_and_lists(job, tmp_path):
    listing = tmp_path / "sub" / "list.txt"
    listing.parent.mkdir()
    listing.write_text(f"\n# comment\n../a.png\n{job.images / 'scene00.png'}\n")
    import pyarrow as pa

    pq.write_table(pa.table({"path": [str(job.images / "scene01.png"), "b.jpg"]}), tmp_path / "l.parquet")
    got = distributed.list_inputs([str(job.images / "scene0[0-2].png"), str(listing),
                                   str(tmp_path / "l.parquet"), str(job.images)])
    assert got[:5] == [job.images / "scene00.png", job.images / "scene01.png", job.images / "scene02.png",
                       tmp_path / "a.png", tmp_path / "b.jpg"]
    assert len(got) == 5 + IMAGES + len(BAD) - 3  # each path once
    with pytest.raises(distributed.InputError, match="no image matches"):
        distributed.list_inputs([str(tmp_path / "*.webp")])
    pq.write_table(pa.table({"file": ["x.png"]}), tmp_path / "bad.parquet")
    with pytest.raises(distributed.InputError, match="needs a 'path' column"):
        distributed.list_inputs([str(tmp_path / "bad.parquet")])


def test_without_ray_installed_the_flag_says_how_to_install_it(job, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code = main(["segment", str(job.learned), str(job.images), "--out", str(tmp_path / "o"), "--ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and "pip install 'slimeseg[ray]'" in err[0]
    assert not (tmp_path / "o").exists()


def test_worker_in_process_batches_records_failures_and_stops_on_a_bad_model(job, tmp_path):
    """SegmentWorker without Ray: several images per UNet pass, per-file failures, a model that
    cannot load (every row 'fatal': the driver stops the job with its reason), found outputs."""
    from slimeseg import Learned
    from slimeseg.job import SegmentJob
    from slimeseg.writers import SegmentWriter

    learned = Learned.load(job.learned)
    writer = SegmentWriter(tmp_path / "out", SHAPE_CLASSES)
    writer.prepare()
    files = [job.images / f"scene{i:02d}.png" for i in range(5)] + [job.images / "corrupt.png"]
    batch = {"path": distributed._objects([str(f) for f in files]),
             "name": distributed._objects([f.stem for f in files])}
    planned = SegmentJob(learned, "shapes", writer, inputs=[], names={})  # the rows carry both
    options = dict(job=planned, model=None, revision=None, device="cpu", dtype=None,
                   threads=None, batch_size=4, keep_image=True, write=True,
                   load={"job": planned, "skip_done": True, "max_image_pixels": None})
    out = distributed.SegmentWorker(**options)(batch)
    assert list(out["status"]) == ["written"] * 5 + ["failed"]
    assert out["error"][-1] == "corrupt or truncated image (image file is truncated)"
    seg = Segmenter.from_learned(learned, device="cpu")
    maps = seg.predict_batch([str(f) for f in files[:4]], batch_size=4) + [seg.predict(str(files[4]))]
    for f, m in zip(files, maps, strict=False):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{f.stem}.png")), m)
    again = distributed.SegmentWorker(**options)(batch)  # a retried batch: outputs found, not redone
    assert list(again["status"]) == ["exists"] * 5 + ["failed"]
    bad = distributed.SegmentWorker(**{**options, "model": str(tmp_path / "no-model"),
                                       "load": {**options["load"], "skip_done": False}})(batch)
    assert set(bad["status"]) == {"fatal"} and "no such model folder" in bad["error"][0]


class _FakeCluster:
    """What `_plan_pool` asks of Ray: the cluster's resources and its nodes."""

    def __init__(self, nodes):
        self._nodes = [{"Alive": True, "Resources": r} for r in nodes]
        self.data = SimpleNamespace(ActorPoolStrategy=lambda **kw: kw)

    def cluster_resources(self):
        return {k: sum(n["Resources"].get(k, 0) for n in self._nodes) for k in ("CPU", "GPU")}

    def nodes(self):
        return self._nodes


def test_pool_maps_one_worker_to_each_gpu_or_shares_out_the_cpus():
    gpus = _FakeCluster([{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}])
    pool = distributed._plan_pool(gpus, None, None, None)
    assert (pool.workers, pool.gpus, pool.device, pool.io_tasks) == (8, 1, "cuda", True)
    assert pool.compute(gpus) == {"size": 8}
    more = distributed._plan_pool(gpus, 12, None, None)  # more than the GPUs there: the pool grows
    assert more.compute(gpus) == {"min_size": 8, "max_size": 12}
    on_cpu = distributed._plan_pool(gpus, 2, "cpu", None)  # --device cpu on a GPU cluster
    assert (on_cpu.gpus, on_cpu.cpus, on_cpu.threads, on_cpu.io_tasks) == (0, 16, 16, False)
    cpus = _FakeCluster([{"CPU": 8}, {"CPU": 8}])
    assert (distributed._plan_pool(cpus, None, None, None).workers,
            distributed._plan_pool(cpus, None, None, None).threads) == (16, 1)
    assert distributed._plan_pool(cpus, 4, None, None).threads == 4
    assert distributed._plan_pool(cpus, None, None, None, cpus_per_worker=8).workers == 2
    assert distributed._plan_pool(cpus, 3, None, True).cpus == 5  # one CPU left for load/write
    with pytest.raises(distributed.InputError, match="no GPU"):
        distributed._plan_pool(cpus, None, "cuda", None)
    with pytest.raises(distributed.InputError, match="ask for fewer workers"):
        distributed._plan_pool(cpus, 2, None, None, cpus_per_worker=9)


def test_cli_passes_its_flags_and_settings_to_the_ray_job(job, tmp_path, monkeypatch):
    seen = {}

    def fake(learned, inputs, out, **kwargs):
        seen.update(learned=learned, inputs=inputs, out=out, **kwargs)
        return SimpleNamespace(failed=[("x", "bad")])

    monkeypatch.setattr(distributed, "segment", fake)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # --max-image-pixels sets it
    code = main(["segment", str(job.learned), "a/*.png", "list.txt", "--out", str(tmp_path), "--ray",
                 "auto", "--workers", "3", "--format", "parquet", "--batch-size", "4", "--image-size",
                 "128", "--no-was", "--device", "cpu", "--max-image-pixels", "1000", "--quiet"])
    assert code == 1  # some inputs failed
    assert seen["inputs"] == ["a/*.png", "list.txt"] and seen["address"] == "auto"
    assert (seen["workers"], seen["format"], seen["batch_size"], seen["device"]) == (3, "parquet", 4, "cpu")
    assert (seen["image_size"], seen["use_was"], seen["max_image_pixels"]) == (128, False, 1000)
    assert seen["progress"] is False and seen["overlays"] is True and "tiles" not in seen
    main(["segment", str(job.learned), "x.png", "--out", str(tmp_path), "--ray"])
    assert seen["address"] is None and seen["batch_size"] == 1 and seen["format"] == "png"
