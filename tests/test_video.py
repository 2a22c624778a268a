"""Clips through the segment job: frames in, a label map per frame and an overlay video out,
resumable, consistent over time, and bad clips refused in one line with nothing partial left."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from test_app import CHROMIUM, CHROMIUM_ARGS, _open, app_server  # noqa: F401  (the app's browser rig)

from slimeseg import SlimeConfig, writers
from slimeseg.cli import main
from slimeseg.errors import InputError
from slimeseg.job import SegmentJob, list_inputs, segment
from slimeseg.synthetic.clips import flicker, lab_clip
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.temporal import FlowCarry
from slimeseg.video import FrameRange, is_video, probe, read_frames

H, W, N = 37, 45, 7  # an odd-sized clip


def moving_frames(n: int = N, h: int = H, w: int = W) -> list[np.ndarray]:
    """A shapes scene panned 2 px per frame: (h, w, 3) uint8 each."""
    scene = shapes_scene(0, 96)[0]
    return [np.ascontiguousarray(scene[10:10 + h, 4 + 2 * t:4 + 2 * t + w]) for t in range(n)]


def write_clip(path: Path, frames: list[np.ndarray], codec: str = "png", fps: int = 10) -> Path:
    """A clip of these frames (png in .mov: lossless, any size)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def learned_file(tmp_path_factory, segmenter) -> Path:
    image, mask = shapes_scene(0, 64)
    learned = segmenter.match([image], [mask], SHAPE_CLASSES, image_size=64)
    return learned.save(tmp_path_factory.mktemp("video") / "learned.safetensors")


@pytest.fixture()
def clip(tmp_path) -> Path:
    return write_clip(tmp_path / "clip.mov", moving_frames())


def labels_of(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_clip_gives_a_label_map_per_frame_and_an_overlay_video(learned_file, clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(learned_file), str(clip), "--out", str(out), "--quiet"]) == 0
    maps = labels_of(out / "clip")
    assert list(maps) == [f"{i:06d}.png" for i in range(N)]
    assert all(m.shape == (H, W) and m.dtype == np.uint8 and m.max() < len(SHAPE_CLASSES)
               for m in maps.values())
    assert json.loads((out / "classes.json").read_text())["classes"] == list(SHAPE_CLASSES)
    info = probe(out / "clip.overlay.mp4")
    assert info.fps == Fraction(10) and (info.width, info.height) == (W + 1, H + 1)  # padded even
    assert sum(1 for _ in read_frames(out / "clip.overlay.mp4")) == N
    assert not list(out.glob(".*"))  # no partial folder, no temp file
    assert "(7 clip frame(s))" in capsys.readouterr().out
    # a range, and no overlay
    out2 = tmp_path / "out2"
    assert main(["segment", str(learned_file), str(clip), "--out", str(out2), "--quiet",
                 "--frames", "1:6:2", "--no-overlays", "--temporal", "none"]) == 0
    assert list(labels_of(out2 / "clip")) == ["000001.png", "000003.png", "000005.png"]
    assert not (out2 / "clip.overlay.mp4").exists()
    # frame by frame: the still-image labels of the same frames in one batch
    from slimeseg import Learned, Segmenter

    learned = Learned.load(learned_file)
    still = Segmenter.from_learned(learned).predict_batch(moving_frames()[1:6:2], learned, batch_size=4)
    got = labels_of(out2 / "clip")
    assert all(np.array_equal(got[f"{i:06d}.png"], m) for i, m in zip((1, 3, 5), still, strict=True))


def test_predict_video_yields_each_frame_and_a_rerun_skips_a_finished_clip(segmenter, learned_file, clip,
                                                                            tmp_path):
    from slimeseg import Learned

    learned = Learned.load(learned_file)
    maps = list(segmenter.predict_video(clip, learned, batch_size=3))
    assert len(maps) == N and all(m.shape == (H, W) for m in maps)
    flow_maps = list(segmenter.predict_video(clip, learned, batch_size=2))  # batches do not matter
    assert all(np.array_equal(a, b) for a, b in zip(maps, flow_maps, strict=True))
    none = list(segmenter.predict_video(clip, learned, temporal="none", frames="2:4"))
    assert len(none) == 2
    first = segment(learned_file, clip, tmp_path / "o", progress=False, echo=None)
    again = segment(learned_file, clip, tmp_path / "o", progress=False, echo=None)
    assert (first.segmented, first.frames) == (1, N) and (again.skipped, again.frames) == (1, 0)
    (tmp_path / "o" / ".clip.frames").mkdir()  # an interrupted run's frames: not reused when overwriting
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "o" / ".clip.frames" / "000000.png")
    redone = segment(learned_file, clip, tmp_path / "o", overwrite=True, progress=False, echo=None)
    assert redone.frames == N and np.array_equal(labels_of(tmp_path / "o" / "clip")["000000.png"], maps[0])


def test_a_killed_run_resumes_where_it_stopped(learned_file, clip, tmp_path, monkeypatch):
    whole = segment(learned_file, clip, tmp_path / "whole", progress=False, echo=None)
    assert whole.frames == N
    real, calls = writers.save_labels, []

    def dies_after_three(path, labels, k):
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill
        calls.append(path)
        real(path, labels, k)

    monkeypatch.setattr(writers, "save_labels", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        segment(learned_file, clip, tmp_path / "cut", progress=False, echo=None)
    partial = tmp_path / "cut" / ".clip.frames"
    assert sorted(p.name for p in partial.glob("*.png")) == [f"{i:06d}.png" for i in range(3)]
    assert not (tmp_path / "cut" / "clip").exists() and not (tmp_path / "cut" / "clip.overlay.mp4").exists()
    (partial / ".000003.png.abcd.tmp").write_bytes(b"half")  # a write the kill interrupted
    monkeypatch.setattr(writers, "save_labels", real)
    resumed = segment(learned_file, clip, tmp_path / "cut", progress=False, echo=None)
    assert resumed.frames == N - 3 and not partial.exists()
    # the frames before the first missing one were run again for the carry, so nothing differs
    a, b = labels_of(tmp_path / "whole" / "clip"), labels_of(tmp_path / "cut" / "clip")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_flicker_metric_on_known_motion():
    zeros = np.zeros((4, 4), np.uint8)
    ys, xs = np.mgrid[0:4, 0:4].astype(np.float32)
    still = np.stack([xs, ys], -1)  # each pixel was where it is
    pred1 = zeros.copy()
    pred1[0, :] = 1  # 4 of 16 pixels change label while the truth does not
    assert flicker([zeros, pred1], [zeros, zeros], [None, still]) == (0.25, 16)
    shifted = np.stack([xs - 1, ys], -1)  # the scene moved 1 px right: column 0 came from outside
    moved_pred = np.tile(np.array([0, 1, 2, 3], np.uint8), (4, 1))
    followed = np.tile(np.array([9, 0, 1, 2], np.uint8), (4, 1))  # the labels moved with it
    assert flicker([moved_pred, followed], [zeros, zeros], [None, shifted]) == (0.0, 12)
    assert flicker([moved_pred, moved_pred], [zeros, zeros], [None, shifted]) == (1.0, 12)
    truth = np.tile(np.array([0, 0, 1, 1], np.uint8), (4, 1))  # where the truth changes: not counted
    assert flicker([truth, truth], [truth, truth], [None, shifted])[1] == 8
    # a lab clip: its own masks never flicker; its motion explains the next frame
    c = lab_clip("car", 0, size=64, frames=6)
    assert len(c.frames) == len(c.masks) == 6 and c.motion[0] is None and c.motion[c.cut] is None
    assert flicker(c.masks, c.masks, c.motion)[0] == 0.0
    t = 1
    sx = np.rint(c.motion[t][..., 0]).astype(int).clip(0, 63)
    sy = np.rint(c.motion[t][..., 1]).astype(int).clip(0, 63)
    moved = np.abs(c.frames[t - 1][sy, sx].astype(int) - c.frames[t]).mean()
    assert moved < 0.6 * np.abs(c.frames[t - 1].astype(int) - c.frames[t]).mean()
    assert flicker(c.masks[::-1], c.masks, c.motion)[0] > 0.02  # labels from other frames do


def test_flow_carry_follows_a_moving_square_and_restarts_at_a_cut():
    rng = np.random.default_rng(0)
    texture = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    carry = FlowCarry(SlimeConfig(temporal="flow", temporal_weight=0.3))
    for t in range(6):
        frame = np.ascontiguousarray(texture[:, 2 * t:2 * t + 64])  # the camera pans 2 px a frame
        truth = np.zeros((64, 64), bool)
        truth[20:40, 30 - 2 * t:50 - 2 * t] = True  # a square painted on the scene moves with it
        frame[truth] = 255
        scores = torch.stack([torch.from_numpy(~truth), torch.from_numpy(truth)]).float()  # (2, 64, 64)
        out = carry.step(frame, scores)  # (2, 64, 64)
        label = out.argmax(0).numpy().astype(bool)
        assert (label & truth).sum() / (label | truth).sum() > 0.9  # no lag behind the motion
        assert t == 0 or carry.trusted > 0.8
    carry.step(255 - texture[:, :64], torch.rand(2, 64, 64))  # a cut: nothing lines up
    assert carry.trusted == 0.0
    # the margin: a still frame whose class 0 now leads by less than it keeps the carried class 1
    still = np.ascontiguousarray(texture[:, :64])
    held = FlowCarry(SlimeConfig(temporal_weight=0.9, temporal_margin=0.2))
    held.step(still, torch.tensor([0.2, 0.8])[:, None, None].expand(2, 8, 8))
    out = held.step(still, torch.tensor([0.6, 0.4])[:, None, None].expand(2, 8, 8))
    assert (out.argmax(0) == 1).all() and (held.carried.argmax(0) == 0).all()


def test_bad_clips_are_one_line_errors_and_leave_nothing(learned_file, tmp_path, capsys):
    good = write_clip(tmp_path / "good.mp4", moving_frames(n=12, h=36, w=48), codec="libx264")
    data = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really a clip" * 10)
    with av.open(str(tmp_path / "empty.avi"), "w") as c:  # a video stream without frames
        s = c.add_stream("png", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "rgb24"
        c.start_encoding()
    with av.open(str(tmp_path / "sound.mkv"), "w") as c:  # audio only
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    out = tmp_path / "out"
    bad = ["truncated.mp4", "garbage.webm", "empty.avi", "sound.mkv"]
    code = main(["segment", str(learned_file), *(str(tmp_path / b) for b in bad), "--out", str(out), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    rows = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == bad
    why = {Path(r["path"]).name: r["error"] for r in rows}
    assert "truncated" in why["truncated.mp4"] or "corrupt" in why["truncated.mp4"]
    assert "not a readable video" in why["garbage.webm"]
    assert "no frames" in why["empty.avi"]
    assert "no video stream" in why["sound.mkv"]
    assert len(err) == len(bad) and all(line.startswith("error: ") and "\n" not in line for line in err)
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "errors.jsonl"]  # nothing partial
    with pytest.raises(InputError, match="no frame in --frames 50:"):
        list(read_frames(good, FrameRange.parse("50:")))


def test_listing_and_ranges():
    assert FrameRange.parse("10:") == FrameRange(10, None, 1)
    assert FrameRange.parse("::3") == FrameRange(0, None, 3)
    assert [i for i in range(10) if FrameRange.parse("2:8:3").wants(i)] == [2, 5]
    for bad in ("a:b", "1:2:0", "-1:", "1:2:3:4"):
        with pytest.raises(InputError, match="--frames"):
            FrameRange.parse(bad)
    assert is_video("x.MP4") and not is_video("x.png")


def test_clips_list_beside_images_and_an_animated_gif_is_a_clip(learned_file, tmp_path):
    frames = moving_frames(n=3)
    Image.fromarray(frames[0]).save(tmp_path / "still.gif")
    Image.fromarray(frames[0]).save(tmp_path / "anim.gif", save_all=True,
                                    append_images=[Image.fromarray(f) for f in frames[1:]], duration=100)
    write_clip(tmp_path / "a.mov", frames)
    got = list_inputs([str(tmp_path / "*.gif"), str(tmp_path / "a.mov")])
    assert [p.name for p in got] == ["anim.gif", "still.gif", "a.mov"]
    assert is_video(tmp_path / "anim.gif") and not is_video(tmp_path / "still.gif")
    job = SegmentJob.plan(learned_file, got, tmp_path / "out", overlays=False)
    result = job.run(job.segmenter(), progress=False)
    assert result.segmented == 3 and result.frames == 6 and not result.failed
    assert len(list((tmp_path / "out" / "anim").glob("*.png"))) == 3
    assert (tmp_path / "out" / "still.png").is_file()


def test_app_segments_a_clip_plays_its_overlay_and_zips_its_label_maps(segmenter, learned_file, clip,
                                                                       tmp_path):
    import zipfile

    from slimeseg.app import Session, SlimeApp

    app, sess = SlimeApp(segmenter), Session()
    app.load_artifact(str(learned_file), sess)
    still = tmp_path / "still.png"
    Image.fromarray(moving_frames(n=1)[0]).save(still)
    (tmp_path / "notes.txt").write_text("no")
    result = app.segment([str(clip), str(still), str(tmp_path / "notes.txt")], sess)
    assert [Path(v).name for v in result.videos] == ["clip.overlay.mp4"]
    assert sum(1 for _ in read_frames(result.videos[0])) == N
    assert result.note.startswith("1 image(s) and 1 clip(s)") and len(result.problems) == 1
    names = zipfile.ZipFile(result.zip_path).namelist()
    assert {f"clip/{i:06d}.png" for i in range(N)} <= set(names)
    assert {"clip.overlay.mp4", "still.png", "classes.json"} <= set(names)
    only_clip = app.segment([str(clip)], sess)  # a clip alone: no gallery, still a result
    assert only_clip.gallery == [] and len(only_clip.videos) == 1


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_browser_segments_a_clip_and_plays_its_overlay(learned_file, clip, tmp_path, request):
    """In the browser: load embeddings, upload a clip, segment; the overlay video plays (the
    browser decodes it: its duration is known) and the zip holds the clip's label maps."""
    import zipfile

    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
    url = request.getfixturevalue("app_server")  # test_app's: `slimeseg app` on the tiny model
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"), lambda route: route.abort())
            page = context.new_page()
            page.set_default_timeout(60_000)
            _open(page, url)
            page.locator("#artifact_upload input[type=file]").set_input_files(learned_file)
            page.wait_for_function("document.querySelector('#result_legend').innerText.includes('Loaded')")
            page.locator("#segment_files input[type=file]").set_input_files(clip)
            page.wait_for_selector("#segment_files a")
            page.locator("#segment").click()
            page.wait_for_selector("#clip_overlay video", timeout=120_000)
            assert "1 clip(s)" in page.locator("#result_legend").inner_text()
            page.wait_for_function("(() => { const v = document.querySelector('#clip_overlay video');"
                                   " return v && v.readyState >= 1 && v.duration > 0; })()")
            duration = page.evaluate("document.querySelector('#clip_overlay video').duration")
            assert abs(duration - N / 10) < 0.2  # 7 frames at 10 frames/s
            page.screenshot(path=tmp_path / "clip.png", full_page=True)
            with page.expect_download() as dl:
                page.locator("#labels_zip a").first.click()
            dl.value.save_as(tmp_path / "labels.zip")
        finally:
            browser.close()
    names = zipfile.ZipFile(tmp_path / "labels.zip").namelist()
    assert {f"clip/{i:06d}.png" for i in range(N)} | {"clip.overlay.mp4"} <= set(names)


def test_a_variable_frame_rate_clip_gives_every_frame(learned_file, tmp_path):
    """Frames at irregular times: each is segmented once, numbered in decoding order; the
    overlay video has them all (at the stream's average rate)."""
    path = tmp_path / "vfr.mkv"
    frames = moving_frames(n=6, h=32, w=32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=30)
        s.width, s.height, s.pix_fmt, s.time_base = 32, 32, "yuv444p", Fraction(1, 1000)
        for f, pts in zip(frames, (0, 33, 66, 200, 500, 533), strict=True):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    result = segment(learned_file, path, tmp_path / "out", progress=False, echo=None)
    assert result.frames == 6 and not result.failed
    assert list(labels_of(tmp_path / "out" / "vfr")) == [f"{i:06d}.png" for i in range(6)]
    assert sum(1 for _ in read_frames(tmp_path / "out" / "vfr.overlay.mp4")) == 6


def test_a_4k_clip_gives_label_maps_at_its_full_size(learned_file, tmp_path):
    """A 3840 x 2160 clip: each frame is segmented at the model's input size and its labels come
    back at the frame's own size (the final upsampling bounded by upsample.WORK_PIXELS); the first
    frame (nothing carried yet) is labelled exactly as the still image would be."""
    scene = np.asarray(Image.fromarray(shapes_scene(0, 96)[0]).resize((3840, 2160), Image.NEAREST))
    path = write_clip(tmp_path / "uhd.mov", [scene, np.ascontiguousarray(scene[:, ::-1])])
    result = segment(learned_file, path, tmp_path / "out", progress=False, echo=None)
    assert result.frames == 2 and not result.failed
    maps = labels_of(tmp_path / "out" / "uhd")
    assert [m.shape for m in maps.values()] == [(2160, 3840)] * 2
    _, first = next(iter(read_frames(path)))  # the decoded frame, as the job saw it, as a still image
    Image.fromarray(first).save(tmp_path / "still.png")
    segment(learned_file, tmp_path / "still.png", tmp_path / "still", progress=False, echo=None)
    np.testing.assert_array_equal(maps["000000.png"], np.asarray(Image.open(tmp_path / "still" / "still.png")))
    assert sum(1 for _ in read_frames(tmp_path / "out" / "uhd.overlay.mp4")) == 2


@pytest.mark.slow
def test_ray_segments_each_clip_whole_as_the_single_process_does(learned_file, clip, tmp_path):
    """`--ray`: a clip is one row, streamed whole by one worker: the same files and label maps
    as without Ray; into a Parquet dataset a clip is refused by name."""
    ray = pytest.importorskip("ray", reason="needs ray (the test extra)")
    import os

    from slimeseg import distributed

    other = write_clip(tmp_path / "other.mov", moving_frames(n=4)[::-1])
    Image.fromarray(moving_frames(n=1)[0]).save(tmp_path / "still.png")
    inputs = [str(clip), str(other), str(tmp_path / "still.png")]
    single = segment(learned_file, inputs, tmp_path / "single", progress=False, echo=None)
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    try:
        on_ray = distributed.segment(str(learned_file), inputs, tmp_path / "ray", workers=1,
                                     progress=False, echo=None)
        parquet = distributed.segment(str(learned_file), [str(clip)], tmp_path / "pq", workers=1,
                                      format="parquet", progress=False, echo=None)
    finally:
        ray.shutdown()
    assert (single.segmented, on_ray.segmented, on_ray.failed) == (3, 3, []), on_ray.failed
    for name in ("clip", "other"):
        a, b = labels_of(tmp_path / "single" / name), labels_of(tmp_path / "ray" / name)
        assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
        assert (tmp_path / "ray" / f"{name}.overlay.mp4").is_file()
    assert "use --format png" in parquet.failed[0][1]


@pytest.mark.slow
def test_video_benchmark_measures_each_mode_on_the_same_scores_and_resumes(tmp_path):
    """benchmarks/video.py on the lab SD: one row per temporal mode, frame by frame's flicker
    ratio 1, the labelling time reported; a re-run with --resume measures nothing again."""
    from lab import video

    written = tmp_path / "video.json"
    args = ["--kinds", "car", "--seeds", "0", "--clips", "1", "--frames", "4", "--modes", "none,flow-w0.1",
            "--json", str(written)]
    report = video.main(args)
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == {"none", "flow-w0.1"} and list(report["units"]) == ["car/1/0/0"]
    assert rows["none"]["flicker_ratio"][0] == 1.0 and rows["none"]["step_ms"] > 0
    assert rows["flow-w0.1"]["step_ms"] > 0 and 0 <= rows["flow-w0.1"]["flicker"][0] <= 1
    assert 0 < rows["none"]["miou"][0] < 1
    again = video.main([*args, "--resume"])
    assert again["units"] == report["units"]  # read back, not measured again


@pytest.mark.parametrize("where, settings", [
    ("after", {}), ("before", {}), ("recursive", {}), ("after", {"temporal_hysteresis": 0.0}),
    ("recursive", {"temporal_hysteresis": 0.0}), ("after", {"temporal_hysteresis": 0.5}),
    ("recursive", {"temporal_hysteresis": 0.1}), ("after", {"flow_method": "dis-fine"}),
    ("after", {"flow_method": "dis-medium"}),
    ("after", {"flow_method": "farneback"}), ("after", {"flow_method": "dis-ultrafast"}),
    ("after", {"upsample": "bilinear", "temporal_hysteresis": 0.1})])
def test_frame_labels_filter_before_or_after_the_carry(where, settings):
    """Every order (and the hysteresis, and each flow) labels a frame like a still image when
    nothing moves: the first frame has no past, and a repeated frame's carry brings the same
    scores back (recursive: filtered again each time, its labels settle to a fixed point)."""
    from slimeseg import inference
    from slimeseg.video import frame_labels

    frame = shapes_scene(2, 96)[0]  # (96, 96, 3) uint8, below flow_size: no resizing
    scores = torch.rand(len(SHAPE_CLASSES), 12, 12, generator=torch.Generator().manual_seed(0)).softmax(0)
    cfg = SlimeConfig(image_size=64, temporal_filter=where, **settings)  # guided upsampling (the default)
    still = inference.labels_for(scores, frame, cfg)  # (96, 96)
    assert np.array_equal(frame_labels(frame, scores, None, cfg), still)
    carry = FlowCarry(cfg)
    first = frame_labels(frame, scores, carry, cfg)
    again = frame_labels(frame, scores, carry, cfg)
    assert first.shape == (96, 96) and first.dtype == np.uint8
    assert np.array_equal(first, still)  # nothing carried yet: exactly the still image's labels
    if where == "recursive":  # the filter runs again on what it made: the labels settle
        for _ in range(5):
            again, before = frame_labels(frame, scores, carry, cfg), again
        assert (again == before).mean() > 0.995 and (again == first).mean() > 0.9
    else:
        assert (again == first).mean() > 0.995  # carried once, through the working resolution
    with pytest.raises(ValueError, match="temporal_filter"):
        SlimeConfig(temporal_filter="sideways")


def test_recursive_carry_and_hysteresis_on_the_final_scores():
    """`recursive` carries the final (filtered) scores; the hysteresis keeps a pixel's label
    unless another class beats it by its margin on them, and the warm-up frames feed both."""
    from slimeseg.video import frame_labels

    still = np.ascontiguousarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    rec = FlowCarry(SlimeConfig(temporal_filter="recursive", temporal_hysteresis=0.0))
    assert rec.wants_final and FlowCarry(SlimeConfig()).wants_final  # the default holds labels
    assert not FlowCarry(SlimeConfig(temporal_hysteresis=0.0)).wants_final
    rec.step(still, torch.rand(2, 8, 8))
    final = torch.rand(2, 64, 64)
    assert rec.finish(final) is final and torch.allclose(rec.carried, final)  # (2, 64, 64) carried
    held = FlowCarry(SlimeConfig(temporal_weight=1.0, temporal_hysteresis=0.3))
    first, second = torch.tensor([0.2, 0.8]), torch.tensor([0.6, 0.4])  # class 0 leads by 0.2 < 0.3
    held.step(still, first[:, None, None].expand(2, 8, 8))
    assert (held.finish(first[:, None, None].expand(2, 64, 64)).argmax(0) == 1).all()
    held.step(still, second[:, None, None].expand(2, 8, 8))
    out = held.finish(second[:, None, None].expand(2, 64, 64))  # (2, 64, 64)
    assert (out.argmax(0) == 1).all() and held.trusted > 0.9
    held.step(still, torch.tensor([0.9, 0.1])[:, None, None].expand(2, 8, 8))  # beaten by 0.8
    assert (held.finish(torch.tensor([0.9, 0.1])[:, None, None].expand(2, 64, 64)).argmax(0) == 0).all()
    # a warm-up frame (want=False) still sets the label the next frame holds
    cfg = SlimeConfig(image_size=64, temporal_weight=1.0, temporal_hysteresis=0.3)
    warm = FlowCarry(cfg)
    assert frame_labels(still, first[:, None, None].expand(2, 8, 8), warm, cfg, want=False) is None
    assert (frame_labels(still, second[:, None, None].expand(2, 8, 8), warm, cfg) == 1).all()
    for bad in ({"temporal_hysteresis": -0.1}, {"flow_method": "lucas-kanade"},
                {"temporal_filter": "sideways"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SlimeConfig(**bad)


@pytest.mark.parametrize("method", ["dis-ultrafast", "dis-fast", "dis-medium", "dis-balanced", "dis-balanced-v0",
                                    "dis-fine", "farneback"])
def test_each_optical_flow_follows_a_pan(method):
    from slimeseg.temporal import optical_flow

    texture = np.random.default_rng(1).random((48, 80)).astype(np.float32)
    smooth = (255 * np.clip(texture, 0, 1)).astype(np.uint8)
    import cv2

    smooth = cv2.GaussianBlur(smooth, (5, 5), 1.5)
    a, b = np.ascontiguousarray(smooth[:, 4:68]), np.ascontiguousarray(smooth[:, 6:70])  # b: 2 px left
    flow = optical_flow(a, b, method)  # (48, 64, 2)
    assert flow.shape == (48, 64, 2) and flow.dtype == np.float32
    inner = flow[8:-8, 8:-8]
    assert abs(np.median(inner[..., 0]) + 2) < 0.3 and abs(np.median(inner[..., 1])) < 0.3


def test_flows_computed_ahead_in_a_thread_give_the_same_labels_and_the_thread_ends(segmenter, learned_file,
                                                                                   tmp_path, monkeypatch):
    """`label_frames` computes each frame's flows in a background thread (`FlowAhead`) while the
    UNet runs; the labels are the ones the carry gets computing the flows itself, through a gap
    (skipped frames) and a resume's warm-up too, and the thread ends when the generator is
    closed early or fails."""
    import threading

    from slimeseg import Learned, temporal
    from slimeseg.video import frame_labels, frame_scores, label_frames

    learned = Learned.load(learned_file)
    frames = moving_frames(9)
    path = write_clip(tmp_path / "nine.mov", frames)
    where: list[str] = []  # the thread each flow was computed in
    real_flow = temporal.optical_flow

    def flow(a, b, method="dis-medium"):
        where.append(threading.current_thread().name)
        return real_flow(a, b, method)

    monkeypatch.setattr(temporal, "optical_flow", flow)

    def flow_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("slimeseg-flow") and t.is_alive()]

    for settings in ({}, {"flow_method": "dis-fine", "temporal_filter": "before"}):
        cfg = segmenter._predict_config(learned, None, settings)
        scores = frame_scores(segmenter.sd, frames, learned, cfg)
        for done, warmup in ((set(), 8), ({3, 4, 5}, 1), ({0, 1, 2, 3, 4}, 2)):  # all, a gap, a resume
            run = [i for i in range(9) if i not in done or any(j not in done for j in range(i + 1, i + 1 + warmup)
                                                                if j < 9)]
            carry, by_itself = FlowCarry(cfg), {}
            for i in run:  # the carry computing its own flows, the frames one by one
                if by_itself and i != max(by_itself) + 1:
                    carry.reset()
                by_itself[i] = frame_labels(frames[i], scores[i], carry, cfg, want=i not in done)
            where.clear()
            got = {i: lab for i, _, lab in label_frames(segmenter.sd, path, learned, cfg, batch_size=2,
                                                        done=done, warmup=warmup)}
            assert sorted(got) == sorted(i for i in run if i not in done)
            assert all(np.array_equal(got[i], by_itself[i]) for i in got)
            gaps = sum(1 for a, b in zip(run, run[1:], strict=False) if b != a + 1)
            assert len(where) == 2 * (len(run) - 1 - gaps)  # each pair's two flows, computed once
            assert where and all(name.startswith("slimeseg-flow") for name in where)  # ahead
            assert not flow_threads()
    # closed early, or failing in the UNet: the thread is shut down
    gen = label_frames(segmenter.sd, path, learned, cfg, batch_size=2)
    next(gen)
    assert flow_threads()
    gen.close()
    assert not flow_threads()
    import slimeseg.video as video

    def fails(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(video, "frame_scores", fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(label_frames(segmenter.sd, path, learned, cfg, batch_size=2))
    assert not flow_threads()
