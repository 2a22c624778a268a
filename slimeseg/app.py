"""`slimeseg app`: a local web app to paint one example, train, and segment in the browser.

Built on Gradio (the optional extra `app`). Everything runs on this machine: no analytics, no
fonts or scripts from the internet, bound to 127.0.0.1 unless told otherwise. The model is loaded
once per server; training and segmenting share it, so they run one at a time and further jobs
wait in a queue whose position each user sees.

Painting: every foreground class gets a fixed brush colour (the same palette as the overlays);
unpainted pixels are background (class 0). Painted colours map back to class indices exactly by
nearest palette colour (`layers_to_mask`).
"""

import atexit
import html
import json
import os
import queue
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .artifact import Learned  # noqa: E402
from .errors import SlimeError  # noqa: E402
from .io import (  # noqa: E402
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    MAX_CLASSES,
    as_image_array,
    load_image,
    load_mask,
    overlay,
    palette,
    save_labels,
    save_png,
)

MAX_UPLOAD = "25mb"  # per file, enforced by the server before our code sees it
MAX_SIDE = 4096  # pixels per side of any uploaded image
MAX_SEGMENT_FILES = 50  # images per "Segment" click
CONCURRENCY_ID = "model"  # train and segment share one model: one job at a time, others queue
MAX_STEPS = 20000  # per training run
BRUSH_CLASSES = 12  # classes that can be painted with the brush (more: upload a mask)
_POLL_S = 0.4  # how often the progress display refreshes while training

_stop_flags: dict[str, threading.Event] = {}  # session -> "stop training" flag


# ---------------------------------------------------------------------------- pure helpers
def hex_color(rgb: np.ndarray | tuple[int, int, int]) -> str:
    """(r, g, b) -> '#rrggbb'."""
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def brush_colors() -> list[str]:
    """The fixed brush colours: class k (1..BRUSH_CLASSES) paints in palette colour k."""
    return [hex_color(c) for c in palette(BRUSH_CLASSES + 1)[1:]]


def layers_to_mask(layers: list[np.ndarray], num_classes: int, size: tuple[int, int]) -> np.ndarray:
    """Painted RGBA layers -> (H, W) uint8 class indices; unpainted pixels are background (0).

    Layers are laid over each other in order (later on top). A pixel counts as painted where its
    alpha is at least half; it takes the class whose palette colour is nearest, so brush
    antialiasing and lossy round trips cannot produce a wrong index. Paint in the colour of a
    class that was not added is refused (SlimeError), never silently dropped.
    """
    h, w = size
    mask = np.zeros((h, w), dtype=np.uint8)
    colors = palette(BRUSH_CLASSES + 1)[1:].astype(np.int32)  # (BRUSH_CLASSES, 3)
    for layer in layers:
        if layer is None:
            continue
        arr = np.asarray(layer)
        if arr.ndim != 3 or arr.shape[2] != 4:
            continue  # a layer without alpha holds no strokes we can tell apart from the canvas
        if arr.shape[:2] != (h, w):
            arr = np.asarray(Image.fromarray(arr.astype(np.uint8), "RGBA").resize((w, h), Image.NEAREST))
        painted = arr[..., 3] >= 128
        if not painted.any():
            continue
        rgb = arr[painted][:, :3].astype(np.int32)  # (N, 3)
        dist = ((rgb[:, None, :] - colors[None, :, :]) ** 2).sum(-1)  # (N, BRUSH_CLASSES)
        mask[painted] = (dist.argmin(1) + 1).astype(np.uint8)
    top = int(mask.max())
    if top >= num_classes:
        raise SlimeError(f"paint in colour {top} ({hex_color(palette(top + 1)[top])}) belongs to no "
                         f"class: only {num_classes - 1} classes are added; add more classes or "
                         "erase that paint")
    return mask


def legend_html(classes: list[str], note: str = "") -> str:
    """Class name + colour swatch for each class (background: as is, unpainted)."""
    if not classes:
        return f"<div class='slime-legend'><em>{html.escape(note or 'no classes yet')}</em></div>"
    colors = palette(max(len(classes), 2))
    items = []
    for k, name in enumerate(classes):
        swatch = ("background: repeating-linear-gradient(45deg,#ddd 0 4px,#fff 4px 8px)" if k == 0
                  else f"background:{hex_color(colors[k])}")
        items.append(f"<span class='slime-legend-item' data-class='{k}'><span class='slime-swatch' "
                     f"style='{swatch}'></span>{k}: {html.escape(name)}</span>")
    extra = f"<div class='slime-note'>{html.escape(note)}</div>" if note else ""
    return f"<div class='slime-legend'>{''.join(items)}</div>{extra}"


def progress_html(step: int, total: int, loss: float | None, state: str = "training") -> str:
    """A progress bar with step count and last loss."""
    pct = 100.0 * step / max(total, 1)
    loss_txt = "" if loss is None else f" · loss {loss:.4f}"
    return (f"<div class='slime-progress' data-state='{state}' data-step='{step}' data-total='{total}'>"
            f"<div class='slime-bar'><div style='width:{pct:.1f}%'></div></div>"
            f"<span>{html.escape(state)}: step {step} / {total}{loss_txt}</span></div>")


def _check_size(arr: np.ndarray, name: str) -> np.ndarray:
    if max(arr.shape[:2]) > MAX_SIDE:
        raise SlimeError(f"{name}: image is {arr.shape[1]}x{arr.shape[0]}; the app takes at most "
                         f"{MAX_SIDE} pixels per side")
    return arr


def _upload_path(item: Any) -> Path:
    """The local path of a gr.File value (str path or file object)."""
    return Path(item if isinstance(item, (str, os.PathLike)) else item.name)


# ---------------------------------------------------------------------------- session state
@dataclass
class Session:
    """What one browser tab has built so far (kept by Gradio per session)."""

    classes: list[str] = field(default_factory=lambda: ["background"])
    images: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8
    masks: list[np.ndarray] = field(default_factory=list)  # (H, W) uint8
    learned_path: str | None = None  # the artifact in use (trained here or loaded)

    def workdir(self) -> Path:
        """A fresh folder for outputs served back as downloads (removed when the server exits)."""
        return Path(tempfile.mkdtemp(dir=_scratch_root()))


_SCRATCH: list[Path] = []


def _scratch_root() -> Path:
    """One temporary folder per server process for all outputs; deleted at exit."""
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="slimeseg-app-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], ignore_errors=True)
    return _SCRATCH[0]


# ---------------------------------------------------------------------------- the app
CSS = """
.slime-legend {display:flex; flex-wrap:wrap; gap:.4em .9em; align-items:center; padding:.3em 0}
.slime-legend-item {display:inline-flex; align-items:center; gap:.35em}
.slime-swatch {display:inline-block; width:1.1em; height:1.1em; border:1px solid #888; border-radius:3px}
.slime-note {font-size:.9em; opacity:.8}
.slime-progress .slime-bar {height:14px; background:#e5e7eb; border-radius:7px; overflow:hidden; margin:.3em 0}
.slime-progress .slime-bar > div {height:100%; background:#f97316; transition:width .3s}
/* keep thumbnails at a fixed column count: Gradio stretches a lone image to the full width */
#examples_gallery .grid-container {grid-template-columns: repeat(4, minmax(0, 1fr)) !important}
#results .grid-container {grid-template-columns: repeat(4, minmax(0, 1fr)) !important}
"""


def build_app(segmenter: Any, model_label: str = "") -> Any:
    """The Gradio Blocks of the app around a loaded `Segmenter` (not launched)."""
    import gradio as gr
    import pandas as pd

    # ------------------------------------------------------------ handlers
    def add_class(name: str, sess: Session) -> tuple[Any, ...]:
        name = (name or "").strip()
        if not name:
            raise gr.Error("Type a class name first.")
        if name in sess.classes:
            raise gr.Error(f"There is already a class named '{name}'.")
        if len(sess.classes) >= MAX_CLASSES:
            raise gr.Error(f"At most {MAX_CLASSES} classes.")
        sess.classes = [*sess.classes, name]
        return sess, "", legend_html(sess.classes, _paint_note(sess))

    def _paint_note(sess: Session) -> str:
        if len(sess.classes) < 2:
            return "Add the classes you want (background is everything you leave unpainted)."
        return ("Paint each class with its brush colour (the first colours of the brush palette); "
                "unpainted pixels are background.")

    def reset_classes(sess: Session) -> tuple[Any, ...]:
        sess = Session()
        return sess, legend_html(sess.classes, _paint_note(sess)), [], "No examples yet."

    def add_example(editor: dict | None, mask_file: Any, sess: Session) -> tuple[Any, ...]:
        if not editor or editor.get("background") is None:
            raise gr.Error("Upload an example image first.")
        if len(sess.classes) < 2:
            raise gr.Error("Add at least one class (besides background) before adding examples.")
        try:
            image = _check_size(as_image_array(editor["background"], "example image"), "example image")
            h, w = image.shape[:2]
            if mask_file is not None:
                path = _upload_path(mask_file)
                if path.suffix.lower() not in MASK_EXTENSIONS:
                    raise SlimeError(f"{path.name}: masks must be {', '.join(MASK_EXTENSIONS)}")
                mask = load_mask(path)
                if mask.shape != (h, w):
                    raise SlimeError(f"{path.name}: mask is {mask.shape[1]}x{mask.shape[0]} but the "
                                     f"image is {w}x{h}")
                if int(mask.max()) >= len(sess.classes):
                    raise SlimeError(f"{path.name}: mask holds class {int(mask.max())} but only "
                                     f"{len(sess.classes)} classes are named")
            else:
                mask = layers_to_mask(list(editor.get("layers") or []), len(sess.classes), (h, w))
                if not mask.any():
                    raise SlimeError("Nothing painted: paint the classes over the image (or upload a "
                                     "mask) before adding the example.")
        except SlimeError as exc:
            raise gr.Error(str(exc)) from None
        sess.images = [*sess.images, image]
        sess.masks = [*sess.masks, mask]
        return sess, _example_gallery(sess), _examples_text(sess), None  # mask upload: used up

    def _example_gallery(sess: Session) -> list[tuple[np.ndarray, str]]:
        return [(overlay(img, msk, alpha=0.6), f"example {i + 1}")
                for i, (img, msk) in enumerate(zip(sess.images, sess.masks, strict=True))]

    def _examples_text(sess: Session) -> str:
        if not sess.images:
            return "No examples yet."
        counts = np.bincount(np.concatenate([m.ravel() for m in sess.masks]),
                             minlength=len(sess.classes))
        missing = [c for c, n in zip(sess.classes, counts, strict=False) if n == 0]
        text = f"{len(sess.images)} example(s)."
        return text + (f" Not painted yet: {', '.join(missing)}." if missing else "")

    def clear_examples(sess: Session) -> tuple[Any, ...]:
        sess.images, sess.masks = [], []
        return sess, [], _examples_text(sess)

    def check_train(steps: float | None, image_size: float, seed: float | None,
                    sess: Session) -> None:
        """Refuse a training job at once (before it waits in the queue) if it cannot run."""
        if not sess.images:
            raise gr.Error("Add at least one painted example first.")
        if steps is None or not 1 <= int(steps) <= MAX_STEPS:
            raise gr.Error(f"Steps must be a whole number from 1 to {MAX_STEPS}.")

    def train(steps: float, image_size: float, seed: float | None, sess: Session,
              request: gr.Request) -> Any:
        check_train(steps, image_size, seed, sess)
        seed = 0 if seed is None else seed
        flag = threading.Event()
        key = request.session_hash or "default"
        _stop_flags[key] = flag
        updates: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}
        total_steps = int(steps)

        def callback(step: int, total: int, losses: dict[str, float]) -> bool:
            updates.put((step, total, losses["loss"]))
            return not flag.is_set()

        def run() -> None:
            try:
                result["learned"] = segmenter.fit(
                    sess.images, sess.masks, sess.classes, progress=False, callback=callback,
                    steps=total_steps, image_size=int(image_size), seed=int(seed))
            except Exception as exc:  # reported to the user below
                result["error"] = exc

        worker = threading.Thread(target=run, name="slimeseg-fit", daemon=True)
        losses: list[tuple[int, float]] = []
        step, loss = 0, None
        worker.start()
        try:
            yield (progress_html(0, total_steps, None, "starting"), _loss_frame(losses), gr.skip(),
                   gr.skip(), gr.skip())
            while worker.is_alive() or not updates.empty():
                worker.join(_POLL_S)
                fresh = False
                while not updates.empty():
                    step, _, loss = updates.get()
                    losses.append((step, loss))
                    fresh = True
                if fresh:
                    state = "stopping" if flag.is_set() else "training"
                    yield (progress_html(step, total_steps, loss, state), _loss_frame(losses),
                           gr.skip(), gr.skip(), gr.skip())
        finally:  # the tab went away or the run ended: never leave a fit running on the model
            flag.set()
            worker.join()
            _stop_flags.pop(key, None)
        if "error" in result:
            exc = result["error"]
            raise gr.Error(str(exc) if isinstance(exc, SlimeError) else f"training failed: {exc}")
        learned: Learned = result["learned"]
        out = sess.workdir() / "learned.safetensors"
        learned.save(out)
        sess.learned_path = str(out)
        done = learned.history.get("steps_done", step)
        state = "stopped early" if done < total_steps else "done"
        yield (progress_html(done, total_steps, loss, state), _loss_frame(losses), str(out),
               legend_html(learned.classes, f"Trained {done} steps; ready to segment."), sess)

    def _loss_frame(losses: list[tuple[int, float]]) -> Any:
        return pd.DataFrame(losses or [(0, float("nan"))], columns=["step", "loss"]).dropna()

    def stop(request: gr.Request) -> None:
        flag = _stop_flags.get(request.session_hash or "default")
        if flag is None:
            gr.Info("No training is running.")
        else:
            flag.set()

    def load_artifact(file: Any, sess: Session) -> tuple[Any, ...]:
        if file is None:
            return sess, gr.skip(), gr.skip()
        path = _upload_path(file)
        try:
            if path.suffix.lower() != ".safetensors":
                raise SlimeError(f"{path.name}: not a .safetensors file made by slimeseg")
            learned = Learned.load(path)
            if learned.fingerprint != segmenter.sd.fingerprint:
                raise SlimeError(f"{path.name}: made with model '{learned.model_id}', which differs "
                                 f"from the model this app runs ('{segmenter.sd.model_id}'); start "
                                 f"the app with --model {learned.model_id}")
        except SlimeError as exc:
            raise gr.Error(str(exc)) from None
        dest = sess.workdir() / "learned.safetensors"
        shutil.copyfile(path, dest)
        sess.learned_path = str(dest)
        return (sess, legend_html(learned.classes, f"Loaded {path.name}; ready to segment."),
                str(dest))

    def check_segment(files: list[Any] | None, sess: Session) -> None:
        """Refuse a segmentation job at once (before it waits in the queue) if it cannot run."""
        if not sess.learned_path:
            raise gr.Error("Train or load learned embeddings first.")
        if not files:
            raise gr.Error("Drop one or more images to segment.")
        if len(files) > MAX_SEGMENT_FILES:
            raise gr.Error(f"{len(files)} images given; at most {MAX_SEGMENT_FILES} at a time.")

    def segment(files: list[Any] | None, sess: Session) -> tuple[Any, ...]:
        check_segment(files, sess)
        learned = Learned.load(sess.learned_path)
        out_dir = sess.workdir()
        gallery: list[tuple[np.ndarray, str]] = []
        problems: list[str] = []
        used: set[str] = set()
        for item in files:
            path = _upload_path(item)
            name = path.stem
            while name in used:
                name += "_"
            used.add(name)
            try:
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    raise SlimeError(f"{path.name}: not an image ({', '.join(IMAGE_EXTENSIONS)})")
                image = _check_size(load_image(path), path.name)
                labels = segmenter.predict(image, learned)
            except SlimeError as exc:
                problems.append(str(exc))
                continue
            over = overlay(image, labels)
            save_labels(out_dir / f"{name}.png", labels, learned.num_classes)
            save_png(out_dir / f"{name}.overlay.png", Image.fromarray(over))
            gallery += [(image, f"{path.name}"), (over, f"{path.name} · segmented")]
        if not gallery:
            raise gr.Error("; ".join(problems) or "nothing segmented")
        (out_dir / "classes.json").write_text(json.dumps(
            {"classes": learned.classes, "palette": palette(learned.num_classes).tolist(),
             "model": learned.model_id}, indent=2))
        zip_path = out_dir / "labels.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(out_dir.iterdir()):
                if p.suffix in (".png", ".json"):
                    zf.write(p, p.name)
        for msg in problems:
            gr.Warning(msg)
        note = f"{len(gallery) // 2} image(s) segmented" + (f", {len(problems)} refused" if problems else "")
        return gallery, legend_html(learned.classes, note), str(zip_path)

    # ------------------------------------------------------------ layout
    start = Session()
    # delete_cache: Gradio's copies of uploads and downloads older than a day, checked hourly
    with gr.Blocks(title="slimeseg", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        sess = gr.State(start)
        gr.Markdown("## slimeseg: segment images like one example\n"
                    "1. Upload an example image, add your classes, paint them. "
                    "2. Train. 3. Drop new images to segment them the same way."
                    + (f"  \nModel: `{model_label}`" if model_label else ""))
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown("### 1. Example")
                editor = gr.ImageEditor(
                    label="Example image: upload, then paint each class", type="numpy",
                    image_mode="RGBA", sources=("upload", "clipboard"), format="png",
                    brush=gr.Brush(colors=brush_colors(), color_mode="fixed"),
                    eraser=gr.Eraser(), layers=gr.LayerOptions(layers=["classes"]),
                    transforms=(), canvas_size=(512, 512), elem_id="example_editor")
                with gr.Row():
                    class_name = gr.Textbox(label="New class", placeholder="e.g. wheel", scale=3,
                                            elem_id="class_name")
                    add_class_btn = gr.Button("Add class", scale=1, elem_id="add_class")
                    reset_btn = gr.Button("Start over", scale=1, variant="secondary", elem_id="reset")
                classes_legend = gr.HTML(legend_html(start.classes, _paint_note(start)),
                                         elem_id="class_legend")
                mask_file = gr.File(label="…or upload a ready mask (PNG/.npy of class indices)", height=120,
                                    file_types=list(MASK_EXTENSIONS), elem_id="mask_upload")
                with gr.Row():
                    add_example_btn = gr.Button("Add example", variant="primary", elem_id="add_example")
                    clear_btn = gr.Button("Clear examples", elem_id="clear_examples")
                examples_info = gr.Markdown("No examples yet.", elem_id="examples_info")
                examples_gallery = gr.Gallery(label="Examples", columns=4, height=180, preview=False,
                                              object_fit="contain",
                                              elem_id="examples_gallery")
            with gr.Column(scale=2):
                gr.Markdown("### 2. Train")
                with gr.Row():
                    steps = gr.Number(label="Steps", value=200, minimum=1, maximum=MAX_STEPS,
                                      precision=0, elem_id="steps")
                    image_size = gr.Radio(label="Image size", choices=[64, 128, 256, 384, 512, 768],
                                          value=512, elem_id="image_size")
                    seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
                with gr.Row():
                    train_btn = gr.Button("Train", variant="primary", elem_id="train")
                    stop_btn = gr.Button("Stop (keep result)", variant="stop", elem_id="stop")
                progress = gr.HTML(progress_html(0, 0, None, "idle"), elem_id="train_progress")
                loss_plot = gr.LinePlot(x="step", y="loss", label="Loss", height=220,
                                        elem_id="loss_plot")
                artifact_out = gr.File(label="Learned embeddings (download)", interactive=False, height=90,
                                       elem_id="artifact_download")
                artifact_in = gr.File(label="…or load learned embeddings (.safetensors)", height=120,
                                      file_types=[".safetensors"], elem_id="artifact_upload")
        gr.Markdown("### 3. Segment")
        with gr.Row():
            seg_files = gr.File(label="Images to segment", file_count="multiple", height=160,
                                file_types=list(IMAGE_EXTENSIONS), elem_id="segment_files", scale=2)
            with gr.Column(scale=1):
                segment_btn = gr.Button("Segment", variant="primary", elem_id="segment")
                labels_zip = gr.File(label="Label maps (zip)", interactive=False, height=90, elem_id="labels_zip")
        result_legend = gr.HTML(legend_html([], "Train or load learned embeddings, then segment."),
                                elem_id="result_legend")
        results = gr.Gallery(label="Originals and overlays (each original, then its overlay)",
                             columns=4, height=420, preview=False,
                             object_fit="contain",
                             elem_id="results")

        # ------------------------------------------------------------ events
        add_class_btn.click(add_class, [class_name, sess], [sess, class_name, classes_legend])
        class_name.submit(add_class, [class_name, sess], [sess, class_name, classes_legend])
        reset_btn.click(reset_classes, [sess], [sess, classes_legend, examples_gallery, examples_info])
        add_example_btn.click(add_example, [editor, mask_file, sess],
                              [sess, examples_gallery, examples_info, mask_file])
        clear_btn.click(clear_examples, [sess], [sess, examples_gallery, examples_info])
        train_btn.click(check_train, [steps, image_size, seed, sess], None, queue=False).success(
                        train, [steps, image_size, seed, sess],
                        [progress, loss_plot, artifact_out, result_legend, sess],
                        concurrency_limit=1, concurrency_id=CONCURRENCY_ID, show_progress="minimal")
        stop_btn.click(stop, None, None, queue=False)
        artifact_in.upload(load_artifact, [artifact_in, sess], [sess, result_legend, artifact_out],
                           concurrency_limit=1, concurrency_id="load")
        segment_btn.click(check_segment, [seg_files, sess], None, queue=False).success(
                          segment, [seg_files, sess], [results, result_legend, labels_zip],
                          concurrency_limit=1, concurrency_id=CONCURRENCY_ID)
    demo.queue(default_concurrency_limit=1)
    return demo


def theme() -> Any:
    """Gradio's default look with system fonts only (nothing fetched from font services)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(model: str, host: str = "127.0.0.1", port: int | None = None, *,
           device: str | None = None, dtype: str | None = None, revision: str | None = None,
           block: bool = True) -> Any:
    """Load the model, build the app and serve it; returns the Blocks (when `block` is False)."""
    import sys

    from .segmenter import Segmenter

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this address can use the app "
              "(there is no login)", file=sys.stderr)
    segmenter = Segmenter.from_pretrained(model, revision=revision, device=device, dtype=dtype)
    demo = build_app(segmenter, model_label=model)
    demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_UPLOAD,
                prevent_thread_lock=not block, show_error=True, ssr_mode=False, mcp_server=False,
                inbrowser=False, theme=theme(), css=CSS, footer_links=[], quiet=not block)
    return demo
