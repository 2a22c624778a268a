"""The web app: colour -> class mapping, queueing set-up, and the whole flow in a real browser.

The browser test drives `slimeseg app` (started through the CLI) against the tiny model with
Debian's chromium via Playwright: upload, add classes, paint with mouse strokes, train and stop
early, download and reload the artifact, segment two images. Screenshots of every stage go to
the test's tmp dir and to /tmp/app-shots/.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the web app needs the `app` extra (gradio)")

from slimeseg.app import (  # noqa: E402
    BRUSH_CLASSES,
    CONCURRENCY_ID,
    brush_colors,
    layers_to_mask,
    legend_html,
)
from slimeseg.errors import SlimeError  # noqa: E402
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene  # noqa: E402
from slimeseg.writers import palette  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path("/tmp/app-shots")


# ---------------------------------------------------------------------------- unit tests
def _paint(mask: np.ndarray, alpha: int = 255) -> np.ndarray:
    """An RGBA layer painting each pixel of `mask` > 0 in its class's brush colour."""
    colors = palette(BRUSH_CLASSES + 1)
    layer = np.zeros((*mask.shape, 4), dtype=np.uint8)
    layer[..., :3] = colors[mask]
    layer[..., 3] = np.where(mask > 0, alpha, 0)
    return layer


def test_layers_to_mask_is_exact():
    _, mask = shapes_scene(3, 96)
    got = layers_to_mask([_paint(mask)], len(SHAPE_CLASSES), mask.shape)
    np.testing.assert_array_equal(got, mask)


def test_layers_to_mask_tolerates_antialiasing_and_stacks_layers():
    _, mask = shapes_scene(1, 64)
    layer = _paint(mask).astype(np.int16)
    layer[..., :3] += np.random.default_rng(0).integers(-12, 13, layer[..., :3].shape)  # lossy codec
    faint = _paint(np.full_like(mask, 2), alpha=60)  # antialiased edge: below half alpha, ignored
    top = np.zeros_like(faint)
    top[:8, :8] = _paint(np.full((8, 8), 3, np.uint8))  # a later layer paints over earlier ones
    got = layers_to_mask([faint, np.clip(layer, 0, 255).astype(np.uint8), top], 4, mask.shape)
    want = mask.copy()
    want[:8, :8] = 3
    np.testing.assert_array_equal(got, want)


def test_layers_to_mask_corrects_a_base_map():
    _, base = shapes_scene(2, 64)
    fix = np.zeros_like(base)
    fix[:10, :10] = 3  # a missed region...
    layer = _paint(fix)
    layer[30:40, 30:40] = (0, 0, 0, 255)  # ...and a false one painted back to background
    got = layers_to_mask([layer], 4, base.shape, base)
    want = base.copy()
    want[:10, :10] = 3
    want[30:40, 30:40] = 0
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(layers_to_mask([], 4, base.shape, base), base)


def test_layers_to_mask_resizes_and_refuses_paint_of_unknown_class():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5] = 1
    big = np.kron(_paint(mask), np.ones((2, 2, 1), np.uint8))  # canvas at twice the image size
    np.testing.assert_array_equal(layers_to_mask([big], 2, (10, 10)), mask)
    mask[6:8, 6:8] = 5
    with pytest.raises(SlimeError, match="belongs to no class"):
        layers_to_mask([_paint(mask)], 3, (10, 10))


def test_brush_colours_are_the_overlay_palette():
    assert len(brush_colors()) == BRUSH_CLASSES + 1  # the classes, then black: paint background
    assert brush_colors()[0] == "#{:02x}{:02x}{:02x}".format(*palette(2)[1])
    assert brush_colors()[-1] == "#000000"
    html = legend_html(["background", "car <b>"])
    assert "1: car &lt;b&gt;" in html and brush_colors()[0] in html


def test_training_and_segmenting_share_one_queue_and_no_telemetry(segmenter):
    from slimeseg.app import build_app

    demo = build_app(segmenter)
    assert demo.analytics_enabled is False  # also stops Gradio's version check
    fns = {fn.name: fn for fn in demo.fns.values()}
    for name in ("train", "segment"):
        assert fns[name].concurrency_id == CONCURRENCY_ID
        assert fns[name].concurrency_limit == 1


def test_cli_app_defaults_to_localhost():
    from slimeseg.cli import build_parser

    args = build_parser().parse_args(["app"])
    assert args.host == "127.0.0.1" and args.func.__name__ == "cmd_app"


# ---------------------------------------------------------------------------- browser test
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_server(tiny_dir, tmp_path):
    """`slimeseg app` on the tiny model in a subprocess; yields its URL."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "slimeseg", "app", "--model", str(tiny_dir),
                             "--device", "cpu", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"app did not start:\n{(tmp_path / 'server.log').read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _open(page, url: str) -> None:
    """Load the app and wait until every part of it has rendered (slow on a busy machine)."""
    page.goto(url)
    for selector in ("#example_editor input[type=file]", "#class_legend .slime-legend",
                     "#loss_plot", "#artifact_upload input[type=file]",
                     "#segment_files input[type=file]", "#results"):
        page.wait_for_selector(selector, state="attached", timeout=60_000)


def _strokes(mask: np.ndarray, cls: int) -> list[list[tuple[float, float]]]:
    """Three horizontal strokes (image x, y) well inside the region of `cls`."""
    ys, xs = np.nonzero(mask == cls)
    y0, y1 = np.percentile(ys, [30, 70])
    out = []
    for y in np.linspace(y0, y1, 3):
        row = np.nonzero(mask[int(y)] == cls)[0]
        a, b = row.min(), row.max()
        pad = 0.25 * (b - a)
        out.append([(float(x), float(y)) for x in np.linspace(a + pad, b - pad, 6)])
    return out


def _canvas_origin(editor, size: int) -> tuple[float, float, float]:
    """Page (x, y) of an editor's image pixel (0, 0) and its zoom, for a size x size image."""
    canvas = editor.locator("canvas").first.bounding_box()
    zoom = float(re.search(r"(\d+)%", editor.inner_text()).group(1)) / 100
    return (canvas["x"] + canvas["width"] / 2 - size * zoom / 2,
            canvas["y"] + canvas["height"] / 2 - size * zoom / 2, zoom)


def _draw(page, origin: tuple[float, float, float], strokes: list[list[tuple[float, float]]]) -> None:
    """Drag the mouse along each stroke (image coordinates) with the button down."""
    x0, y0, zoom = origin
    for (sx, sy), *rest in strokes:
        page.mouse.move(x0 + sx * zoom, y0 + sy * zoom)
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(x0 + x * zoom, y0 + y * zoom, steps=3)
        page.mouse.up()


def _download_artifact(page, path):
    """Save the app's current learned embeddings to `path` and load them."""
    from slimeseg import Learned

    with page.expect_download() as dl:
        page.locator("#artifact_download a").first.click()
    dl.value.save_as(path)
    return Learned.load(path)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; CI installs it)")
def test_browser_paint_train_segment(app_server, tmp_path, tiny_dir):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
    from slimeseg import Segmenter

    size = 128
    image, mask = shapes_scene(0, size)
    segmenter = Segmenter.from_pretrained(str(tiny_dir), device="cpu")
    premade = tmp_path / "premade.safetensors"  # for the second user, who queues
    segmenter.fit([image], [mask], SHAPE_CLASSES, steps=1, image_size=64, progress=False).save(premade)
    Image.fromarray(image).save(tmp_path / "example.png")
    for s in (1, 2):
        Image.fromarray(shapes_scene(s, size)[0]).save(tmp_path / f"scene{s}.png")
    shots = tmp_path / "shots"
    shots.mkdir()
    if SHOTS.exists():
        shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str) -> None:
        page.screenshot(path=shots / f"{name}.png", full_page=True)
        shutil.copy(shots / f"{name}.png", SHOTS / f"{name}.png")

    outside: list[str] = []

    def block_outside(route) -> None:
        outside.append(route.request.url)
        route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"), block_outside)
            page = context.new_page()
            page.set_default_timeout(30_000)
            _open(page, app_server)
            shot(page, "01-start")
            assert page.locator("#steps input").input_value() == ""  # empty: the default steps

            # 1. upload, add classes, paint each with its brush colour
            page.locator("#example_editor input[type=file]").set_input_files(tmp_path / "example.png")
            page.wait_for_selector("#example_editor button[aria-label=Color]", timeout=60_000)
            for name in SHAPE_CLASSES[1:]:
                page.locator("#class_name textarea, #class_name input").first.fill(name)
                page.locator("#add_class").click()
                page.wait_for_function(
                    f"document.querySelector('#class_legend').innerText.includes('{name}')")
            editor = page.locator("#example_editor")
            origin = _canvas_origin(editor, size)
            editor.locator("button[aria-label=Brush]").click()
            editor.locator("button[aria-label='Brush Size']").click()
            editor.locator("input[type=range]").fill("4")
            for cls in range(1, len(SHAPE_CLASSES)):
                editor.locator("button[aria-label=Color]").click()
                editor.locator("menu.swatch button.color").nth(cls - 1).click()
                _draw(page, origin, _strokes(mask, cls))
            _draw(page, origin, [[(4, 64), (10, 64)]])  # a stray stroke on the background...
            editor.locator("button[aria-label=Erase]").click()
            _draw(page, origin, [[(1, 64), (14, 64)]])  # ...erased again
            shot(page, "02-painted")
            page.locator("#add_example").click()
            page.wait_for_function("document.querySelector('#examples_info').innerText.includes('1 example')")
            info = page.locator("#examples_info").inner_text()
            assert "Not painted" not in info, info
            page.wait_for_selector("#examples_gallery img")
            # few-shot: a second example, this one with a ready mask instead of paint
            image2, mask2 = shapes_scene(5, size)
            Image.fromarray(image2).save(tmp_path / "example2.png")
            Image.fromarray(mask2).save(tmp_path / "example2_mask.png")
            page.locator("#example_editor input[type=file]").set_input_files(tmp_path / "example2.png")
            page.locator("#mask_upload input[type=file]").set_input_files(tmp_path / "example2_mask.png")
            page.wait_for_selector("#mask_upload a")  # the upload finished
            page.locator("#add_example").click()
            page.wait_for_function("document.querySelector('#examples_info').innerText.includes('2 example')")
            assert page.locator("#examples_gallery img").count() == 2
            shot(page, "03-examples-added")

            # 2. train (image size 64), watch progress, stop early and keep the result
            page.locator("#steps input").fill("300")
            size_box = page.locator("#image_size input[type=number]")
            size_box.fill("64")
            size_box.press("Enter")
            # an instant preview by matching the examples, before any training
            page.locator("#segment_files input[type=file]").set_input_files(tmp_path / "scene1.png")
            page.locator("#preview").click()
            page.wait_for_function("document.querySelector('#result_legend').innerText"
                                   ".includes('previewed by matching')", timeout=60_000)
            page.wait_for_function("document.querySelectorAll('#results img').length >= 3")
            page.wait_for_function("document.querySelector('#result_legend').innerText"
                                   ".includes('example check: 1 previewed image')", timeout=60_000)
            shot(page, "03b-preview")
            page.locator("#train").click()
            page.wait_for_function(
                "Number(document.querySelector('#train_progress .slime-progress')?.dataset.step) >= 3",
                timeout=60_000)
            page.wait_for_selector("#loss_plot canvas, #loss_plot svg")
            shot(page, "04-training")
            # a second user meanwhile loads embeddings, asks to segment, waits in the queue
            other = context.new_page()
            _open(other, app_server)
            other.locator("#artifact_upload input[type=file]").set_input_files(premade)
            other.wait_for_function(
                "document.querySelector('#result_legend').innerText.includes('Loaded')")
            other.locator("#segment_files input[type=file]").set_input_files(tmp_path / "scene2.png")
            other.wait_for_selector("#segment_files a")
            other.locator("#segment").click()
            other.wait_for_function(
                "document.querySelector('#results').innerText.toLowerCase().includes('queue')")
            shot(other, "04b-second-user-queued")
            page.locator("#stop").click()
            page.wait_for_selector("#train_progress [data-state='stopped early']", timeout=60_000)
            steps_done = int(page.locator("#train_progress .slime-progress").get_attribute("data-step"))
            assert 3 <= steps_done < 300
            page.wait_for_selector("#artifact_download a")
            shot(page, "05-trained-stopped-early")
            artifact = tmp_path / "learned.safetensors"
            learned = _download_artifact(page, artifact)
            assert learned.classes == SHAPE_CLASSES
            assert learned.history["steps_done"] == steps_done
            assert learned.config["image_size"] == 64
            assert len(learned.image_hashes) == 2  # both examples were trained on
            # once the model is free the queued job runs
            other.wait_for_function("document.querySelectorAll('#results img').length >= 2")
            other.close()

            # the downloaded artifact works outside the app
            labels = segmenter.predict(tmp_path / "scene1.png", learned)
            assert labels.shape == (size, size) and labels.max() < len(SHAPE_CLASSES)

            # 3. segment two images with the result just trained
            page.locator("#segment_files input[type=file]").set_input_files(
                [tmp_path / "scene1.png", tmp_path / "scene2.png"])
            page.locator("#segment").click()
            page.wait_for_function("document.querySelectorAll('#results img').length >= 4",
                                   timeout=60_000)
            legend = page.locator("#result_legend").inner_text()
            assert all(f"{k}: {c}" in legend for k, c in enumerate(SHAPE_CLASSES)), legend
            assert "2 image(s) segmented" in legend
            page.wait_for_selector("#labels_zip a")
            shot(page, "06-segmented")
            with page.expect_download() as dl:
                page.locator("#labels_zip a").first.click()
            zpath = tmp_path / "labels.zip"
            dl.value.save_as(zpath)
            with zipfile.ZipFile(zpath) as zf:
                names = set(zf.namelist())
                assert {"scene1.png", "scene2.png", "scene1.overlay.png", "classes.json"} <= names
                with zf.open("scene1.png") as fh:
                    lab = np.asarray(Image.open(fh))
            assert (lab == labels).mean() > 0.99  # the app's labels are the library's

            # 3b. a correction round: pick a result, fix its label map with a stroke, refine
            page.locator("#results button.thumbnail-item").nth(2).click()  # scene1's label map
            page.wait_for_function(
                "document.querySelector('#correcting').innerText.includes('Correcting scene1.png')")
            editor = page.locator("#correction_editor")
            editor.wait_for()
            page.wait_for_timeout(1000)  # the fresh editor loads the overlay
            editor.scroll_into_view_if_needed()
            shot(page, "06b-result-opened-for-correction")
            scene1_mask = shapes_scene(1, size)[1]
            editor.locator("button[aria-label=Brush]").click()
            editor.locator("button[aria-label=Color]").click()
            editor.locator("menu.swatch button.color").nth(1).click()  # class 2: square
            _draw(page, _canvas_origin(editor, size), _strokes(scene1_mask, 2))
            page.wait_for_timeout(500)
            shot(page, "06c-corrected")
            page.locator("#add_correction").click()
            page.wait_for_function("document.querySelector('#examples_info').innerText.includes('3 example')")
            page.locator("#steps input").fill("5")
            page.locator("#refine").click()
            page.wait_for_function("document.querySelector('#before_after').innerText"  # (it held the
                                   ".includes('after (round 2)')", timeout=90_000)  # preview's before)
            ba = page.locator("#before_after").inner_text()
            assert "before (round 1)" in ba and "after (round 2)" in ba, ba
            page.locator("#before_after").scroll_into_view_if_needed()  # its images load lazily
            page.wait_for_function(  # both overlays decoded, not just their <img> elements present
                "[...document.querySelectorAll('#before_after img')].every(i => i.complete && i.naturalWidth > 0)")
            page.wait_for_function("document.querySelectorAll('#rounds_download a').length >= 2")
            shot(page, "06d-refined-before-after")
            refined = _download_artifact(page, tmp_path / "refined.safetensors")
            assert refined.lineage[-1]["parent"] == learned.digest()
            assert refined.history["steps_done"] == 5 and len(refined.image_hashes) == 3
            page.locator("#undo").click()
            page.wait_for_function(
                "document.querySelector('#result_legend').innerText.includes('Back to round 1')")
            shot(page, "06e-undone")

            # 4. a fresh page: load the downloaded artifact and segment with it
            _open(page, app_server)
            page.locator("#artifact_upload input[type=file]").set_input_files(artifact)
            page.wait_for_function(
                "document.querySelector('#result_legend').innerText.includes('Loaded')")
            page.locator("#segment_files input[type=file]").set_input_files(tmp_path / "scene2.png")
            page.locator("#segment").click()
            page.wait_for_function("document.querySelectorAll('#results img').length >= 2",
                                   timeout=60_000)
            assert "1 image(s) segmented" in page.locator("#result_legend").inner_text()
            shot(page, "07-loaded-artifact-segmented")

            # refused uploads say why: wrong type, too large
            (tmp_path / "notes.txt").write_text("not an image")
            page.locator("#segment_files input[type=file]").set_input_files(tmp_path / "notes.txt")
            page.get_by_text("Invalid file type").first.wait_for()
            (tmp_path / "huge.png").write_bytes(b"\0" * (26 * 1024 * 1024))
            page.locator("#segment_files input[type=file]").set_input_files(tmp_path / "huge.png")
            page.get_by_text("exceed the maximum allowed size").first.wait_for()
            shot(page, "08-refused-uploads")
        finally:
            browser.close()
    assert not outside, f"the page tried to reach the internet: {outside}"
