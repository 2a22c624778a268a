"""The app's behaviour (`SlimeApp`) without a browser or Gradio: classes, examples, training with
progress and stop, loading artifacts, segmenting through the shared writer."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slimeseg.app import MAX_STEPS, Session, SlimeApp, steps_field
from slimeseg.config import MAX_CLASSES, SlimeConfig
from slimeseg.errors import InputError, SlimeError
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.writers import overlay, palette


@pytest.fixture
def app(segmenter) -> SlimeApp:
    return SlimeApp(segmenter)


def _mask_file(mask: np.ndarray, folder: Path) -> str:
    """A mask upload, as Gradio hands it over: a path."""
    path = folder / f"mask{len(list(folder.glob('mask*.png')))}.png"
    Image.fromarray(mask).save(path)
    return str(path)


def _session_with_example(app: SlimeApp, folder: Path) -> Session:
    sess = Session()
    for name in SHAPE_CLASSES[1:]:
        sess = app.add_class(name, sess)
    image, mask = shapes_scene(0, 64)
    return app.add_example(image, None, _mask_file(mask, folder), sess)


def test_classes_and_examples(app, tmp_path):
    sess = Session()
    with pytest.raises(SlimeError, match="Type a class name"):
        app.add_class("  ", sess)
    sess = app.add_class("disc", sess)
    with pytest.raises(SlimeError, match="already a class"):
        app.add_class("disc", sess)
    many = Session(classes=[f"c{i}" for i in range(MAX_CLASSES)])
    with pytest.raises(SlimeError, match=f"At most {MAX_CLASSES}"):
        app.add_class("one more", many)
    image, mask = shapes_scene(0, 64)
    with pytest.raises(SlimeError, match="Nothing painted"):
        app.add_example(image, [], None, sess)
    with pytest.raises(SlimeError, match="holds class 3 but only 2"):
        app.add_example(image, None, _mask_file(mask, tmp_path), sess)
    with pytest.raises(SlimeError, match="mask is 32x32"):
        app.add_example(image, None, _mask_file(mask[:32, :32], tmp_path), sess)
    sess = _session_with_example(app, tmp_path)
    assert len(sess.images) == 1 and app.examples_text(sess) == "1 example(s)."
    assert app.example_gallery(sess)[0][0].shape == (64, 64, 3)
    assert app.clear_examples(sess).images == []


def test_train_settings_default_to_slimeconfig(app, tmp_path):
    sess = _session_with_example(app, tmp_path)
    d = SlimeConfig()
    assert app.train_settings(None, None, None, sess) == {"steps": d.epochs, "image_size": d.image_size,
                                                          "seed": d.seed}
    assert app.train_settings(5, 128, 3, sess) == {"steps": 5, "image_size": 128, "seed": 3}
    for bad in (0, MAX_STEPS + 1, 2.5):
        with pytest.raises(SlimeError, match="whole number"):
            app.train_settings(bad, 64, 0, sess)
    with pytest.raises(SlimeError, match="multiple of 64"):
        app.train_settings(5, 100, 0, sess)
    with pytest.raises(SlimeError, match="painted example"):
        app.train_settings(5, 64, 0, Session())


def test_fast_fit_box_adds_the_fast_fit_settings(app, tmp_path):
    """The app's "Fast fit" box: `fast_fit`'s settings under the typed fields, its 100 epochs
    when the steps are empty; the fit it starts runs with them."""
    from slimeseg import fast_fit

    sess = _session_with_example(app, tmp_path)
    quick = {k: v for k, v in fast_fit(256).items() if k != "epochs"}
    assert app.train_settings(None, 256, 1, sess, fast=True) == {**quick, "steps": 100, "image_size": 256,
                                                                 "seed": 1}
    assert app.train_settings(7, 256, 1, sess, fast=True)["steps"] == 7  # typed steps win
    assert "gradients" not in app.train_settings(7, 256, 1, sess)  # off: as before
    *_, last = app.train(2, 64, 0, sess, fast=True)
    assert last.learned is not None and last.learned.config["gradients"] == "local"
    assert last.learned.config["view_pool"] == 16 and last.step == 2


def test_steps_box_and_refused_input_are_input_errors(app, tmp_path):
    for empty in (None, "", "  "):
        assert steps_field(empty) is None  # empty: the default steps
    assert steps_field(" 300 ") == 300
    for bad in ("ten", "nan", "inf"):
        with pytest.raises(InputError, match="whole number"):
            steps_field(bad)
    sess = _session_with_example(app, tmp_path)
    with pytest.raises(InputError, match="whole number"):
        app.train_settings(steps_field("2.5"), 64, 0, sess)
    with pytest.raises(InputError, match="Nothing to undo"):
        app.undo(sess)


def test_train_reports_progress_and_stops_early(app, tmp_path):
    sess = _session_with_example(app, tmp_path)
    updates = []
    for u in app.train(50, 64, 0, sess, key="tab"):
        updates.append(u)
        if u.step >= 3 and u.learned is None:
            assert app.stop("tab")
    assert updates[0].state == "starting"
    last = updates[-1]
    assert last.state == "stopped early" and 3 <= last.step < 50
    assert last.learned.history["steps_done"] == last.step and sess.learned_path == last.learned_path
    assert [s for s, _ in last.losses] == list(range(1, last.step + 1))
    assert not app.stop("tab")  # nothing running any more


def test_segment_writes_through_the_shared_writer(app, tmp_path):
    sess = _session_with_example(app, tmp_path)
    with pytest.raises(SlimeError, match="Train or load"):
        app.segment([str(tmp_path / "x.png")], sess)
    *_, last = app.train(2, 64, 0, sess)
    for name in ("a b.png", "a_b.jpg", "c.png"):  # "a b" and "a_b" both become a_b: a clash
        Image.fromarray(shapes_scene(1, 48)[0]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("no")
    files = [str(tmp_path / n) for n in ("a b.png", "a_b.jpg", "c.png", "notes.txt")]
    result = app.segment(files, sess)
    assert result.note == "2 image(s) segmented, 2 refused"
    assert any("same output" in p and "a_b.jpg" in p for p in result.problems)
    assert any("notes.txt" in p for p in result.problems)
    assert len(result.gallery) == 6  # original, overlay, label map per image
    with zipfile.ZipFile(result.zip_path) as zf:
        names = set(zf.namelist())
    assert names == {"a_b.png", "a_b.overlay.png", "c.png", "c.overlay.png", "classes.json"}
    assert not list(Path(result.zip_path).parent.glob(".*.tmp"))  # atomic writes leave no temp files
    labels = np.asarray(Image.open(zipfile.ZipFile(result.zip_path).open("c.png")))
    assert labels.shape == (48, 48) and labels.max() < len(SHAPE_CLASSES)
    np.testing.assert_array_equal(labels, app.segmenter.predict(tmp_path / "c.png", last.learned))


def test_load_artifact_refuses_other_models(app, tmp_path, other_tiny_dir):
    from slimeseg import Segmenter

    other = Segmenter.from_pretrained(str(other_tiny_dir), device="cpu")
    image, mask = shapes_scene(0, 64)
    other.fit([image], [mask], SHAPE_CLASSES, steps=1, image_size=64, progress=False).save(tmp_path / "o.safetensors")
    with pytest.raises(SlimeError, match="start the app with --model"):
        app.load_artifact(str(tmp_path / "o.safetensors"), Session())
    with pytest.raises(SlimeError, match="not a .safetensors"):
        app.load_artifact(str(tmp_path / "o.txt"), Session())
    sess = _session_with_example(app, tmp_path)
    *_, last = app.train(1, 64, 0, sess)
    fresh = Session()
    learned = app.load_artifact(last.learned_path, fresh)
    assert learned.classes == SHAPE_CLASSES and fresh.learned_path != last.learned_path


def test_correction_round_refines_and_undo_goes_back(app, tmp_path):
    from slimeseg.app import layers_to_mask

    sess = _session_with_example(app, tmp_path)
    *_, first = app.train(3, 64, 0, sess)
    Image.fromarray(shapes_scene(4, 48)[0]).save(tmp_path / "new.png")
    result = app.segment([str(tmp_path / "new.png")], sess)
    with pytest.raises(SlimeError, match="Segment some images first"):
        app.pick_result(0, Session(rounds=list(sess.rounds)))
    view = app.pick_result(2, sess)  # the third gallery item: the label map of image 0
    assert sess.picked == 0
    _, image, labels = sess.results[0]
    np.testing.assert_array_equal(view, overlay(image, labels))  # the editor paints on the overlay
    with pytest.raises(SlimeError, match="all background"):
        blank = [("x.png", image, np.zeros_like(labels))]
        app.add_correction([], Session(results=blank, picked=0, classes=sess.classes))
    # the user paints the true mask over it (black where it is background) and adds the example
    true_mask = shapes_scene(4, 48)[1]
    layer = np.zeros((*true_mask.shape, 4), np.uint8)
    layer[..., :3] = np.array([(0, 0, 0), *palette(4)[1:]])[true_mask]
    layer[..., 3] = 255
    assert np.array_equal(layers_to_mask([layer], 4, true_mask.shape, labels), true_mask)
    sess = app.add_correction([layer], sess)
    assert len(sess.images) == 2
    assert sess.images[-1] is image  # the original image, not the overlay it was corrected on
    np.testing.assert_array_equal(sess.masks[-1], true_mask)
    updates = list(app.train(None, None, 0, sess, refine=True))
    last = updates[-1]
    assert last.state == "done" and last.total == SlimeConfig().refine_steps
    assert len(sess.rounds) == 2 and last.learned.lineage[-1]["parent"] == first.learned.digest()
    assert last.learned.config["image_size"] == 64  # the size the embeddings were learned at
    pair = app.before_after(sess)
    assert [c.split(" · ")[1] for _, c in pair] == ["before (round 1)", "after (round 2)"]
    assert result.zip_path
    back = app.undo(sess)
    assert len(sess.rounds) == 1 and back.digest() == first.learned.digest()
    with pytest.raises(SlimeError, match="Nothing to undo"):
        app.undo(sess)


def test_refine_needs_embeddings_in_the_examples_classes(app, tmp_path):
    sess = _session_with_example(app, tmp_path)
    with pytest.raises(SlimeError, match="Train or load"):
        app.refine_settings(None, None, sess)
    *_, last = app.train(2, 64, 0, sess)
    sess.classes = [*sess.classes, "extra"]
    with pytest.raises(SlimeError, match="differ from the embeddings'"):
        app.refine_settings(None, None, sess)


def test_segment_at_native_resolution_keeps_each_images_size(app, tmp_path):
    sess = _session_with_example(app, tmp_path)
    *_, last = app.train(2, 64, 0, sess)
    wide = np.concatenate([shapes_scene(i, 96)[0] for i in range(3)], axis=1)[:90]  # (90, 288, 3)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    result = app.segment([str(tmp_path / "wide.png")], sess, "native")
    labels = result.gallery[2][0]  # the label map, coloured
    assert labels.shape[:2] == (90, 288) and sess.results[0][2].shape == (90, 288)


def test_preview_matches_before_training_and_segment_compares(app, tmp_path):
    """The instant preview: matching on the examples so far, no training; after Train, Segment
    shows each previewed image's preview and trained overlays side by side."""
    sess = Session()
    with pytest.raises(InputError, match="Add an example first"):
        app.preview([str(tmp_path / "x.png")], sess)
    with pytest.raises(InputError, match="Preview first"):
        app.check_example(sess)
    sess = _session_with_example(app, tmp_path)
    Image.fromarray(shapes_scene(2, 48)[0]).save(tmp_path / "p.png")
    result = app.preview([str(tmp_path / "p.png")], sess, image_size=64)
    assert result.note == "1 image(s) previewed by matching (no training yet; Train to improve)"
    note = app.check_example(sess)  # shown after the preview: the previewed image sent back
    assert note.startswith(result.note + "; example check: 1 previewed image(s) label the example(s) "
                           "back at ") and note.split(" at ")[1].split(" %")[0].isdigit()
    assert len(result.gallery) == 3 and not sess.rounds and set(sess.previewed) == {"p.png"}
    assert sess.previewed["p.png"].shape == (48, 48)
    with pytest.raises(InputError, match="That was a preview"):
        app.pick_result(0, sess)
    *_, last = app.train(2, 64, 0, sess)
    result = app.segment([str(tmp_path / "p.png")], sess)
    assert [caption for _, caption in result.compared] == ["p.png · preview (matching)",
                                                           "p.png · trained (round 1)"]


def test_load_artifact_from_a_hub_id_in_the_cache(app, tmp_path, monkeypatch):
    """The app takes a hub id (its text box) as well as an upload: through the hub cache."""
    import huggingface_hub
    from test_hub import lay_out_cache

    image, mask = shapes_scene(0, 64)
    file = app.segmenter.match([image], [mask], SHAPE_CLASSES, image_size=64).save(tmp_path / "m.safetensors")
    lay_out_cache(tmp_path / "cache", "someone/shapes", file)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    sess = Session()
    learned = app.load_artifact(" someone/shapes ", sess)
    assert learned.classes == SHAPE_CLASSES and sess.learned_path.endswith("someone--shapes.safetensors")
    assert Path(sess.learned_path).read_bytes() == file.read_bytes()
    with pytest.raises(SlimeError, match="^someone/other: no such file, and hub repo"):
        app.load_artifact("someone/other", Session())
