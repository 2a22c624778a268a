"""The one writer of segmentation results: names, clashes, atomic files, skipping, temp clean-up,
classes.json, zips, and overlays that stay readable where an object has its class's colour."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from slimeseg.errors import InputError
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.writers import (
    SegmentWriter,
    atomic_path,
    colour_labels,
    output_names,
    overlay,
    palette,
    remove_stale_temp_files,
)


def test_overlay_outlines_regions_in_class_colour_over_a_lighter_image():
    image = np.zeros((60, 80, 3), np.uint8)
    image[..., 0] = 230  # a red image: the colour of class 1
    labels = np.zeros((60, 80), np.uint8)
    labels[20:40, 20:50] = 1
    out = overlay(image, labels, outline=2)
    assert out.shape == image.shape and out.dtype == np.uint8
    red = palette(2)[1].astype(int)
    np.testing.assert_array_equal(out[20, 30], red)  # the region's border: its full colour
    np.testing.assert_array_equal(out[39, 49], red)
    inside, outside = out[30, 35].astype(int), out[5, 5].astype(int)
    assert not np.array_equal(inside, red)  # the inside is a blend, not solid paint
    # the image under it is desaturated and lighter, so the red region differs from red background
    assert outside[1] > 60 and outside[2] > 60  # red 230,0,0 became a light pinkish grey
    assert np.abs(out[19, 30].astype(int)).sum() < np.abs(outside).sum()  # a dark edge outside


def test_overlay_leaves_an_all_background_map_as_the_lightened_image():
    image, _ = shapes_scene(0, 64)
    out = overlay(image, np.zeros((64, 64), np.uint8))
    assert out.shape == image.shape
    assert out.astype(int).mean() > image.astype(int).mean()  # lighter everywhere


def test_colour_labels_is_the_palette():
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    np.testing.assert_array_equal(colour_labels(labels, 4), palette(4)[labels])


def test_names_refuse_clashes_per_written_file(tmp_path):
    assert output_names([tmp_path / "a b.png", tmp_path / "c.jpg"]) == {
        tmp_path / "a b.png": "a_b", tmp_path / "c.jpg": "c"}
    with pytest.raises(InputError, match="same output 'x.overlay.png'"):
        output_names([tmp_path / "x.png", tmp_path / "x.overlay.png"])
    # without overlays, x.overlay.png writes only x.overlay.png: no clash with x
    assert len(output_names([tmp_path / "x.png", tmp_path / "x.overlay.png"], (".png",))) == 2


def test_writer_prepares_writes_skips_and_zips(tmp_path):
    image, mask = shapes_scene(1, 48)
    out = tmp_path / "out"
    writer = SegmentWriter(out, SHAPE_CLASSES, info={"model": "m"})
    out.mkdir()
    (out / ".a.png.1234abcd.tmp").write_bytes(b"half")  # a killed run's leftovers
    (out / ".notes.txt.swp").write_bytes(b"not ours")
    assert writer.prepare() == 1
    assert (out / ".notes.txt.swp").exists()
    meta = json.loads((out / "classes.json").read_text())
    assert meta["classes"] == SHAPE_CLASSES and meta["model"] == "m" and len(meta["palette"]) == 4
    assert not writer.done("a")
    files = writer.write("a", image, mask)
    assert [p.name for p in files] == ["a.overlay.png", "a.png"] and writer.done("a")
    labels = Image.open(out / "a.png")
    assert labels.mode == "P"
    np.testing.assert_array_equal(np.asarray(labels), mask)
    assert not list(out.glob(".*.tmp"))
    with zipfile.ZipFile(writer.zip()) as zf:
        assert set(zf.namelist()) == {"a.png", "a.overlay.png", "classes.json"}
    labels_only = SegmentWriter(tmp_path / "lo", SHAPE_CLASSES, overlays=False)
    labels_only.prepare()
    labels_only.write("b", image, mask)
    assert sorted(p.name for p in (tmp_path / "lo").iterdir()) == ["b.png", "classes.json"]
    assert labels_only.done("b")


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.png"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_written_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (0600); the file in place has open()'s mode (0666 less
    the umask), like any output, readable by whoever may read the folder."""
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    with atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_writer_refuses_an_unusable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot create output directory"):
        SegmentWriter(blocker / "sub", SHAPE_CLASSES).prepare()
    assert remove_stale_temp_files(tmp_path) == 0


def test_finished_lists_the_folder_once_and_wants_every_output(tmp_path):
    image, mask = shapes_scene(2, 32)
    writer = SegmentWriter(tmp_path / "out", SHAPE_CLASSES)
    writer.prepare()
    names = writer.names([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"])
    for stem in ("a", "b", "c"):
        writer.write(stem, image, mask)
    (tmp_path / "out" / "b.overlay.png").unlink()  # incomplete: redone by a re-run
    (tmp_path / "out" / "c.png").unlink()
    assert writer.finished(names) == {tmp_path / "a.png"}
    assert SegmentWriter(tmp_path / "none", SHAPE_CLASSES).finished(names) == set()


def test_parquet_parts_are_atomic_idempotent_and_hold_the_png_bytes(tmp_path):
    import pyarrow.parquet as pq

    image, mask = shapes_scene(3, 40)
    writer = SegmentWriter(tmp_path / "out", SHAPE_CLASSES, format="parquet")
    assert not writer.overlays  # the dataset holds label maps only
    (tmp_path / "out" / "labels").mkdir(parents=True)
    (tmp_path / "out" / "labels" / ".part-x.parquet.abcd1234.tmp").write_bytes(b"half")  # a killed write
    assert writer.prepare() == 1
    inputs = [tmp_path / "x.png", tmp_path / "sub" / "x.png"]
    names = writer.names(inputs)  # keyed by path: the same stem twice is no clash
    assert list(names.values()) == ["x", "x"]
    rows = [(str(p), names[p], mask) for p in inputs]
    first = writer.write_part(rows, batch=[str(p) for p in inputs] + ["/failed.png"])
    again = writer.write_part(rows[::-1], batch=["/failed.png"] + [str(p) for p in inputs][::-1])
    assert first == again  # a retried batch replaces its part: no duplicate rows
    assert writer.write_part([]) is None
    table = pq.read_table(writer.parquet_dir)
    assert table.num_rows == 2 and sorted(table.column("path").to_pylist()) == sorted(map(str, inputs))
    png = tmp_path / "one.png"
    SegmentWriter(tmp_path, SHAPE_CLASSES).write("one", image, mask)
    assert table.column("labels_png")[0].as_py() == png.read_bytes()
    assert table.column("classes")[0].as_py() == SHAPE_CLASSES
    assert (table.column("width")[0].as_py(), table.column("height")[0].as_py()) == (40, 40)
    assert writer.finished({**names, tmp_path / "y.png": "y"}) == set(inputs)
    path = writer.write_errors([("/a.png", "not a readable image")])
    assert path.name == "errors.parquet" and pq.read_table(path).to_pylist() == [
        {"path": "/a.png", "error": "not a readable image"}]
    with pytest.raises(InputError, match="unknown output format"):
        SegmentWriter(tmp_path, SHAPE_CLASSES, format="csv")


def test_errors_jsonl_replaces_the_last_runs_list(tmp_path):
    writer = SegmentWriter(tmp_path, SHAPE_CLASSES)
    writer.write_errors([("/a b.png", "corrupt"), ("/c.png", "too large")])
    lines = [json.loads(s) for s in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert lines == [{"path": "/a b.png", "error": "corrupt"}, {"path": "/c.png", "error": "too large"}]
    writer.write_errors([])
    assert (tmp_path / "errors.jsonl").read_text() == ""
    (tmp_path / ".errors.jsonl.1234abcd.tmp").write_text("{")  # a killed run's
    assert remove_stale_temp_files(tmp_path) == 1
