"""`slimeseg app`: a local web app to paint one example, train, and segment in the browser.

Built on Gradio (the optional extra `app`). Everything runs on this machine: no analytics, no
fonts or scripts from the internet, bound to 127.0.0.1 unless told otherwise. The model is loaded
once per server; training and segmenting share it, so they run one at a time and further jobs
wait in a queue whose position each user sees.

`SlimeApp` holds the behaviour (what each button does to a `Session`) and knows nothing of
Gradio, so it is tested without a browser. `build_app` only lays out the page, one builder per
panel returning its components by name, and wires events to `SlimeApp`'s methods through
handlers that return page updates keyed by component. Images are segmented by the one segment
job (`job.SegmentJob`), as by the CLI.

Painting: every foreground class gets a fixed brush colour (the same palette as the overlays);
unpainted pixels are background (class 0). Painted colours map back to class indices exactly by
nearest palette colour (`layers_to_mask`).
"""

import atexit
import functools
import html
import math
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .artifact import Learned  # noqa: E402
from .config import MAX_CLASSES, SlimeConfig, fast_fit  # noqa: E402
from .errors import InputError, SlimeError  # noqa: E402
from .inference import CYCLE_IMAGES, POOR_CYCLE, POOR_EXAMPLE  # noqa: E402
from .io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, as_image_array, load_mask  # noqa: E402
from .job import SegmentJob  # noqa: E402
from .video import OVERLAY_VIDEO_SUFFIX, VIDEO_EXTENSIONS, FrameRange, is_video  # noqa: E402
from .writers import colour_labels, overlay, palette  # noqa: E402

if TYPE_CHECKING:  # the app extra; imported where the page is built
    import gradio as gr

MAX_UPLOAD = "25mb"  # per file, enforced by the server before our code sees it
MAX_SIDE = 4096  # pixels per side of any uploaded image
MAX_SEGMENT_FILES = 50  # images per "Segment" click
MAX_CLIP_FRAMES = 300  # an uploaded clip's first frames segmented (longer ones: the CLI)
CONCURRENCY_ID = "model"  # train and segment share one model: one job at a time, others queue
MAX_STEPS = 20000  # per training run
BRUSH_CLASSES = 12  # classes that can be painted with the brush (more: upload a mask)
IMAGE_SIZES = (64, 1024)  # the image-size slider's range, in steps of 64 (SD needs multiples of 64)
# the segment step's resolution choices -> the `resolution` setting (None: the embeddings' own)
RESOLUTIONS: dict[str, str | None] = {"as trained (one pass, aspect kept)": None,
                                      "native (windows over the full image, slower)": "native",
                                      "half (windows over the image at 1/2)": "0.5"}
BACKGROUND_BRUSH = (0, 0, 0)  # the last brush colour paints background (to correct a prediction)
GALLERY_PER_IMAGE = 3  # results gallery items per segmented image: original, overlay, label map
_POLL_S = 0.4  # how often the progress display refreshes while training
STEPS_RULE = f"Steps must be a whole number from 1 to {MAX_STEPS}."


# ---------------------------------------------------------------------------- pure helpers
def hex_color(rgb: np.ndarray | tuple[int, int, int]) -> str:
    """(r, g, b) -> '#rrggbb'."""
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def brush_colors() -> list[str]:
    """The fixed brush colours: class k (1..BRUSH_CLASSES) paints in palette colour k; the last
    one, black, paints background over what lies below (a predicted region being corrected)."""
    return [hex_color(c) for c in palette(BRUSH_CLASSES + 1)[1:]] + [hex_color(BACKGROUND_BRUSH)]


def layers_to_mask(layers: list[np.ndarray], num_classes: int, size: tuple[int, int],
                   base: np.ndarray | None = None) -> np.ndarray:
    """Painted RGBA layers -> (H, W) uint8 class indices; unpainted pixels keep `base` (a label map
    being corrected; default: background, 0).

    Layers are laid over each other in order (later on top). A pixel counts as painted where its
    alpha is at least half; it takes the class whose brush colour is nearest (black: background),
    so brush antialiasing and lossy round trips cannot produce a wrong index. Paint in the colour
    of a class that was not added is refused (InputError), never silently dropped.
    """
    h, w = size
    mask = np.zeros((h, w), dtype=np.uint8) if base is None else base.astype(np.uint8).copy()
    colors = np.concatenate([np.array([BACKGROUND_BRUSH]), palette(BRUSH_CLASSES + 1)[1:]]).astype(np.int32)
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
        dist = ((rgb[:, None, :] - colors[None, :, :]) ** 2).sum(-1)  # (N, BRUSH_CLASSES + 1)
        mask[painted] = dist.argmin(1).astype(np.uint8)  # index 0 is the background brush
    top = int(mask.max())
    if top >= num_classes:
        raise InputError(f"paint in colour {top} ({hex_color(palette(top + 1)[top])}) belongs to no "
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


def steps_field(text: str | float | None) -> float | None:
    """The Steps box's text as a number; None when empty (the default steps). Its range is
    checked by `SlimeApp.train_settings`."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        steps = float(text)
    except ValueError:
        raise InputError(STEPS_RULE) from None
    if not math.isfinite(steps):
        raise InputError(STEPS_RULE)
    return steps


def loss_frame(losses: list[tuple[int, float]]) -> Any:
    """The loss curve so far as the table gr.LinePlot plots."""
    # pandas: gr.LinePlot takes a DataFrame (its postprocess calls DataFrame.to_json and reads the
    # column dtypes), so the `app` extra declares pandas instead of leaning on Gradio's own deps.
    import pandas as pd

    return pd.DataFrame(losses or [(0, float("nan"))], columns=["step", "loss"]).dropna()


def _check_size(arr: np.ndarray, name: str) -> np.ndarray:
    """`arr`, refused when larger than the app takes."""
    if max(arr.shape[:2]) > MAX_SIDE:
        raise InputError(f"{name}: image is {arr.shape[1]}x{arr.shape[0]}; the app takes at most "
                         f"{MAX_SIDE} pixels per side")
    return arr


def upload_path(item: Any) -> Path:
    """The local path of a gr.File value (str path or file object)."""
    return Path(item if isinstance(item, (str, os.PathLike)) else item.name)


# ---------------------------------------------------------------------------- session state
@dataclass
class Session:
    """What one browser tab has built so far (kept by Gradio per session)."""

    classes: list[str] = field(default_factory=lambda: ["background"])
    images: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8
    masks: list[np.ndarray] = field(default_factory=list)  # (H, W) uint8
    rounds: list[str] = field(default_factory=list)  # artifact of every round (trained, loaded, refined)
    results: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)  # last segmented:
    # (name, image, labels)
    picked: int | None = None  # the result opened in the correction editor
    previewed: dict[str, np.ndarray] = field(default_factory=dict)  # name -> labels by matching alone
    preview_learned: Learned | None = None  # the last preview's matching artifact (the example check)
    preview_note: str = ""  # and its note

    @property
    def learned_path(self) -> str | None:
        """The artifact in use: the latest round."""
        return self.rounds[-1] if self.rounds else None

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


@dataclass
class TrainUpdate:
    """One refresh of the training display; the last one carries the result."""

    step: int
    total: int
    loss: float | None
    state: str  # starting | training | stopping | done | stopped early
    losses: list[tuple[int, float]]  # (step, loss) so far, for the curve
    learned: Learned | None = None
    learned_path: str | None = None


@dataclass
class SegmentResult:
    """What one "Segment" click produced."""

    gallery: list[tuple[np.ndarray, str]]  # per image: original, overlay, label map in colour
    classes: list[str]
    note: str
    zip_path: str
    problems: list[str]  # one line per refused input
    compared: list[tuple[np.ndarray, str]] = field(default_factory=list)  # preview vs trained overlays
    videos: list[str] = field(default_factory=list)  # the uploaded clips' overlay videos


# ---------------------------------------------------------------------------- behaviour
class SlimeApp:
    """Everything the app does, on one loaded `Segmenter`, without any Gradio.

    Methods take and return plain values and raise an error with a message for the user:
    InputError for what the user can put right (input, order of steps), SlimeError otherwise.
    Defaults (steps, image size, seed) are SlimeConfig's.
    """

    def __init__(self, segmenter: Any, model_label: str = "") -> None:
        self.segmenter = segmenter
        self.model_label = model_label
        self.defaults = SlimeConfig()
        self._stop_flags: dict[str, threading.Event] = {}  # session key -> "stop training"

    # ------------------------------------------------------------ classes and examples
    @staticmethod
    def add_class(name: str | None, sess: Session) -> Session:
        """Add a class (background is class 0 and always there)."""
        name = (name or "").strip()
        if not name:
            raise InputError("Type a class name first.")
        if name in sess.classes:
            raise InputError(f"There is already a class named '{name}'.")
        if len(sess.classes) >= MAX_CLASSES:
            raise InputError(f"At most {MAX_CLASSES} classes.")
        sess.classes = [*sess.classes, name]
        return sess

    @staticmethod
    def paint_note(sess: Session) -> str:
        """What the user should do next with the brush."""
        if len(sess.classes) < 2:
            return "Add the classes you want (background is everything you leave unpainted)."
        return ("Paint each class with its brush colour (the first colours of the brush palette); "
                "unpainted pixels are background.")

    @staticmethod
    def add_example(image: Any, layers: Sequence[np.ndarray] | None, mask_file: Any,
                    sess: Session) -> Session:
        """Add one (image, mask) pair: the mask from the painted layers, or an uploaded file."""
        if image is None:
            raise InputError("Upload an example image first.")
        if len(sess.classes) < 2:
            raise InputError("Add at least one class (besides background) before adding examples.")
        image = _check_size(as_image_array(image, "example image"), "example image")
        h, w = image.shape[:2]
        if mask_file is not None:
            path = upload_path(mask_file)
            if path.suffix.lower() not in MASK_EXTENSIONS:
                raise InputError(f"{path.name}: masks must be {', '.join(MASK_EXTENSIONS)}")
            mask = load_mask(path)
            if mask.shape != (h, w):
                raise InputError(f"{path.name}: mask is {mask.shape[1]}x{mask.shape[0]} but the "
                                 f"image is {w}x{h}")
            if int(mask.max()) >= len(sess.classes):
                raise InputError(f"{path.name}: mask holds class {int(mask.max())} but only "
                                 f"{len(sess.classes)} classes are named")
        else:
            mask = layers_to_mask(list(layers or []), len(sess.classes), (h, w))
            if not mask.any():
                raise InputError("Nothing painted: paint the classes over the image (or upload a "
                                 "mask) before adding the example.")
        sess.images = [*sess.images, image]
        sess.masks = [*sess.masks, mask]
        return sess

    @staticmethod
    def example_gallery(sess: Session) -> list[tuple[np.ndarray, str]]:
        """The examples as overlays, for the examples gallery."""
        return [(overlay(img, msk), f"example {i + 1}")
                for i, (img, msk) in enumerate(zip(sess.images, sess.masks, strict=True))]

    @staticmethod
    def examples_text(sess: Session) -> str:
        """How many examples, and which classes no example paints yet."""
        if not sess.images:
            return "No examples yet."
        counts = np.bincount(np.concatenate([m.ravel() for m in sess.masks]),
                             minlength=len(sess.classes))
        missing = [c for c, n in zip(sess.classes, counts, strict=False) if n == 0]
        text = f"{len(sess.images)} example(s)."
        return text + (f" Not painted yet: {', '.join(missing)}." if missing else "")

    @staticmethod
    def clear_examples(sess: Session) -> Session:
        sess.images, sess.masks = [], []
        return sess

    # ------------------------------------------------------------ training
    def train_settings(self, steps: float | None, image_size: float | None, seed: float | None,
                       sess: Session, fast: bool = False) -> dict[str, Any]:
        """The fit settings for these fields, refusing a job that cannot run (before it queues).

        Empty fields take SlimeConfig's defaults (steps: its epochs over the examples); `fast`
        adds `fast_fit`'s (a fit in minutes on a CPU; its 100 epochs when steps are empty)."""
        if not sess.images:
            raise InputError("Add at least one painted example first.")
        if steps is not None and (steps != int(steps) or not 1 <= int(steps) <= MAX_STEPS):
            raise InputError(STEPS_RULE)
        size = self.defaults.image_size if image_size is None else int(image_size)
        quick = fast_fit(size) if fast else {}
        defaults = self.defaults.replace(epochs=quick["epochs"]) if fast else self.defaults
        total = defaults.total_steps(len(sess.images)) if steps is None else int(steps)
        if total > MAX_STEPS:
            raise InputError(f"{total} steps ({defaults.epochs} per example) exceed the app's "
                             f"limit of {MAX_STEPS}; set fewer steps.")
        if size % 64 or not IMAGE_SIZES[0] <= size <= IMAGE_SIZES[1]:
            raise InputError(f"Image size must be a multiple of 64 from {IMAGE_SIZES[0]} to "
                             f"{IMAGE_SIZES[1]}.")
        return {**{k: v for k, v in quick.items() if k != "epochs"}, "steps": total, "image_size": size,
                "seed": self.defaults.seed if seed is None else int(seed)}

    def refine_settings(self, steps: float | None, seed: float | None, sess: Session) -> dict[str, Any]:
        """The settings of a refinement: continue the current embeddings on all examples for
        `steps` (default: SlimeConfig's refine_steps), at the image size they were learned at."""
        if not sess.learned_path:
            raise InputError("Train or load learned embeddings first, then correct a result.")
        learned = Learned.load(sess.learned_path)
        if learned.classes != sess.classes:
            raise InputError(f"The examples' classes [{', '.join(sess.classes)}] differ from the "
                             f"embeddings' [{', '.join(learned.classes)}]; start over to refine these.")
        settings = self.train_settings(self.defaults.refine_steps if steps is None else steps,
                                       learned.config.get("image_size"), seed, sess)
        return {**settings, "init": learned}

    def train(self, steps: float | None, image_size: float | None, seed: float | None,
              sess: Session, key: str = "default", refine: bool = False,
              fast: bool = False) -> Iterator[TrainUpdate]:
        """Fit on the session's examples in a worker thread, yielding progress; the last update
        carries the artifact (saved for download, a new round). `refine` continues the current
        embeddings instead of starting afresh; `fast` fits with `fast_fit`'s settings. `stop(key)`
        ends it early, keeping the result."""
        settings = (self.refine_settings(steps, seed, sess) if refine
                    else self.train_settings(steps, image_size, seed, sess, fast))
        total = settings["steps"]
        flag = threading.Event()
        self._stop_flags[key] = flag
        updates: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}

        def callback(step: int, total: int, losses: dict[str, float]) -> bool:
            updates.put((step, losses["loss"]))
            return not flag.is_set()

        def run() -> None:
            try:
                result["learned"] = self.segmenter.fit(sess.images, sess.masks, sess.classes,
                                                       progress=False, callback=callback, **settings)
            except Exception as exc:  # reported to the user below
                result["error"] = exc

        worker = threading.Thread(target=run, name="slimeseg-fit", daemon=True)
        losses: list[tuple[int, float]] = []
        step, loss = 0, None
        worker.start()
        try:
            yield TrainUpdate(0, total, None, "starting", [])
            while worker.is_alive() or not updates.empty():
                worker.join(_POLL_S)
                fresh = False
                while not updates.empty():
                    step, loss = updates.get()
                    losses.append((step, loss))
                    fresh = True
                if fresh:
                    yield TrainUpdate(step, total, loss, "stopping" if flag.is_set() else "training",
                                      list(losses))
        finally:  # the tab went away or the run ended: never leave a fit running on the model
            flag.set()
            worker.join()
            self._stop_flags.pop(key, None)
        if "error" in result:
            exc = result["error"]
            raise SlimeError(str(exc) if isinstance(exc, SlimeError) else f"training failed: {exc}")
        learned: Learned = result["learned"]
        out = sess.workdir() / f"learned-round{len(sess.rounds) + 1}.safetensors"
        learned.save(out)
        sess.rounds = [*sess.rounds, str(out)]
        done = learned.history.get("steps_done", step)
        yield TrainUpdate(done, total, loss, "stopped early" if done < total else "done", list(losses),
                          learned, str(out))

    def stop(self, key: str = "default") -> bool:
        """Ask the training of session `key` to stop, keeping its result; False if none runs."""
        flag = self._stop_flags.get(key)
        if flag is None:
            return False
        flag.set()
        return True

    def load_artifact(self, file: Any, sess: Session) -> Learned:
        """Use an uploaded artifact, or one shared on the Hub (`USER/REPO[@REV]`, through the
        hub cache); a copy is kept for download; refused if made for another model."""
        from .hub import fetch_learned, parse_hub_id

        if isinstance(file, str) and parse_hub_id(file.strip()) is not None:
            name = file.strip()
            path = fetch_learned(name)
            dest_name = name.replace("/", "--").replace("@", "--") + ".safetensors"
        else:
            path = upload_path(file)
            name, dest_name = path.name, path.name
            if path.suffix.lower() != ".safetensors":
                raise InputError(f"{path.name}: not a .safetensors file made by slimeseg")
        learned = Learned.load(path)
        learned.check_fits(self.segmenter.sd, name, hint=f"start the app with --model {learned.model_id}")
        dest = sess.workdir() / dest_name
        shutil.copyfile(path, dest)
        sess.rounds = [*sess.rounds, str(dest)]
        if not sess.images:  # corrections of its results will be examples in its classes
            sess.classes = list(learned.classes)
        return learned

    def undo(self, sess: Session) -> Learned:
        """Back to the previous round's embeddings (the undone round's file stays listed until then)."""
        if len(sess.rounds) < 2:
            raise InputError("Nothing to undo: there is no earlier round.")
        sess.rounds = sess.rounds[:-1]
        return Learned.load(sess.learned_path)

    # ------------------------------------------------------------ correcting a result
    def pick_result(self, index: int, sess: Session) -> np.ndarray:
        """Open the segmented image behind gallery item `index` for correcting: returns its overlay,
        the picture the correction editor paints on. Strokes in a class colour (black: background)
        replace the prediction under them; `add_correction` adds the image with the fixed map."""
        if not sess.results:
            raise InputError("Segment some images first, then pick one to correct.")
        if not sess.learned_path:
            raise InputError("That was a preview: train first, then correct what it segments.")
        learned = Learned.load(sess.learned_path)
        if sess.classes != learned.classes:
            if sess.images:
                raise InputError(f"The examples' classes [{', '.join(sess.classes)}] differ from the "
                                 f"embeddings' [{', '.join(learned.classes)}]; start over first.")
            sess.classes = list(learned.classes)
        if learned.num_classes - 1 > BRUSH_CLASSES:
            raise InputError(f"{learned.num_classes - 1} classes: the brush paints at most "
                             f"{BRUSH_CLASSES}; correct this one in a paint program and upload the mask.")
        sess.picked = min(index // GALLERY_PER_IMAGE, len(sess.results) - 1)
        _, image, labels = sess.results[sess.picked]
        # The prediction is the editor's picture (its overlay), not an editable layer: Gradio's
        # ImageEditor (6.31) does not show layers set from the server.
        return overlay(image, labels)

    @staticmethod
    def add_correction(layers: Sequence[np.ndarray] | None, sess: Session) -> Session:
        """Add the picked result as an example: its original image, and its predicted label map
        with the painted strokes laid over it (unpainted pixels keep the prediction)."""
        if sess.picked is None:
            raise InputError("Pick a segmented image to correct first (click it in the results).")
        _, image, labels = sess.results[sess.picked]
        mask = layers_to_mask(list(layers or []), len(sess.classes), labels.shape, labels)
        if not mask.any():
            raise InputError("The corrected map is all background: paint the classes that are there.")
        sess.images = [*sess.images, image]
        sess.masks = [*sess.masks, mask]
        return sess

    def before_after(self, sess: Session) -> list[tuple[np.ndarray, str]]:
        """The picked image segmented by the previous round and by the current one."""
        if sess.picked is None or len(sess.rounds) < 2:
            return []
        name, image, before = sess.results[sess.picked]
        after = self.segmenter.predict(image, Learned.load(sess.learned_path))
        sess.results[sess.picked] = (name, image, after)
        return [(overlay(image, before), f"{name} · before (round {len(sess.rounds) - 1})"),
                (overlay(image, after), f"{name} · after (round {len(sess.rounds)})")]

    # ------------------------------------------------------------ segmenting
    @staticmethod
    def check_segment(files: Sequence[Any] | None, sess: Session) -> None:
        """Refuse a segmentation job at once (before it waits in the queue) if it cannot run."""
        if not sess.learned_path:
            raise InputError("Train or load learned embeddings first.")
        _check_files(files)

    def segment(self, files: Sequence[Any] | None, sess: Session,
                resolution: str | None = None) -> SegmentResult:
        """Segment uploaded images with the session's embeddings (at `resolution`: "model",
        "native" or a scale; default: the embeddings' setting) through the one segment job
        (safe names, clashes and bad files refused one by one, atomic files) into a fresh
        folder and one zip; images also previewed before training come with both overlays."""
        self.check_segment(files, sess)
        result = self._segment_with(Learned.load(sess.learned_path), files, sess, resolution)
        for name, image, labels in sess.results:
            if name in sess.previewed:
                result.compared += [(overlay(image, sess.previewed[name]), f"{name} · preview (matching)"),
                                    (overlay(image, labels), f"{name} · trained (round {len(sess.rounds)})")]
        return result

    def preview(self, files: Sequence[Any] | None, sess: Session, image_size: float | None = None,
                resolution: str | None = None) -> SegmentResult:
        """Segment uploaded images at once by matching them to the examples added so far (no
        training: seconds); Train then learns embeddings, which `segment` uses (with the method
        their settings name)."""
        if not sess.images:
            raise InputError("Add an example first: the preview matches new images to it.")
        _check_files(files)
        size = int(image_size or self.defaults.image_size)
        learned = self.segmenter.match(sess.images, sess.masks, sess.classes, image_size=size)
        result = self._segment_with(learned, files, sess, resolution, "previewed by matching "
                                    "(no training yet; Train to improve)")
        sess.previewed = {name: labels for name, _, labels in sess.results}
        sess.preview_learned, sess.preview_note = learned, result.note
        return result

    def check_example(self, sess: Session) -> str:
        """The poor-example warning after a preview (docs/methods.md), its note: the previewed
        images, labelled by matching, sent back to label the examples (the cycle check, on up to
        `CYCLE_IMAGES` of them), or, without still images, matching re-finding the examples in
        augmented copies of them. Run after the preview is shown, so the preview stays instant."""
        learned = sess.preview_learned
        if learned is None:
            raise InputError("Preview first: the example check uses the previewed images.")
        stills = [(image, labels) for name, image, labels in sess.results
                  if Path(name).suffix.lower() in IMAGE_EXTENSIONS and name in sess.previewed]
        stills = stills[:CYCLE_IMAGES]
        if stills:
            check = self.segmenter.check_examples(learned, images=[i for i, _ in stills],
                                                  labels=[lab for _, lab in stills])
            poor, what = POOR_CYCLE, (f"{len(stills)} previewed image(s) label the example(s) back at "
                                      f"{100 * check:.0f} %")
        else:
            check, poor = self.segmenter.check_examples(learned), POOR_EXAMPLE
            what = f"matching re-finds the example(s) in copies at {100 * check:.0f} %"
        sess.preview_learned = None  # once per preview: its matching bank is not kept in the tab
        return f"{sess.preview_note}; example check: {what}" + (
            f" (below {100 * poor:.0f} %: new images may segment poorly; a clearer or another "
            "example may help)" if check < poor else "")

    def _segment_with(self, learned: Learned, files: Sequence[Any] | None, sess: Session,
                      resolution: str | None, what: str = "segmented") -> SegmentResult:
        paths = [upload_path(f) for f in files or []]
        known = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS  # uploads are images or clips, never lists
        problems = [f"{p.name}: not an image or a clip ({', '.join(dict.fromkeys(known))})"
                    for p in paths if p.suffix.lower() not in known]
        job = SegmentJob.plan(learned, [str(p) for p in paths if p.suffix.lower() in known],
                              sess.workdir(), each=True, frames=FrameRange(0, MAX_CLIP_FRAMES),
                              overrides={} if resolution is None else {"resolution": resolution})
        gallery: list[tuple[np.ndarray, str]] = []
        results: list[tuple[str, np.ndarray, np.ndarray]] = []

        def shown(path: Path, image: np.ndarray, labels: np.ndarray) -> None:
            results.append((path.name, image, labels))
            gallery.extend([(image, path.name), (overlay(image, labels), f"{path.name} · {what.split()[0]}"),
                            (colour_labels(labels, learned.num_classes), f"{path.name} · label map")])

        failed: set[str] = set()

        def refused(path: str, why: str) -> None:
            failed.add(path)
            problems.append(f"{Path(path).name}: {why}")

        job.run(self.segmenter, progress=False, read=_read_upload, on_result=shown, on_error=refused)
        videos = [str(job.writer.out_dir / (job.names[p] + OVERLAY_VIDEO_SUFFIX)) for p in job.inputs
                  if str(p) not in failed and is_video(p)]
        if not gallery and not videos:
            raise InputError("; ".join(problems) or "nothing segmented")
        sess.results, sess.picked = results, None
        note = (f"{len(results)} image(s)" + (f" and {len(videos)} clip(s) (first {MAX_CLIP_FRAMES} "
                                               "frames at most)" if videos else "") + f" {what}"
                + (f", {len(problems)} refused" if problems else ""))
        return SegmentResult(gallery, learned.classes, note, str(job.writer.zip()), problems,
                             videos=videos)


def _check_files(files: Sequence[Any] | None) -> None:
    """Refuse an empty drop or more images than one click may segment."""
    if not files:
        raise InputError("Drop one or more images to segment.")
    if len(files) > MAX_SEGMENT_FILES:
        raise InputError(f"{len(files)} images given; at most {MAX_SEGMENT_FILES} at a time.")


def _read_upload(path: Path) -> np.ndarray:
    """The job's read step with the app's size limit."""
    return _check_size(SegmentJob.read(path), str(path))


# ---------------------------------------------------------------------------- the page
CSS = """
.slime-legend {display:flex; flex-wrap:wrap; gap:.4em .9em; align-items:center; padding:.3em 0}
.slime-legend-item {display:inline-flex; align-items:center; gap:.35em}
.slime-swatch {display:inline-block; width:1.1em; height:1.1em; border:1px solid #888; border-radius:3px}
.slime-note {font-size:.9em; opacity:.8}
.slime-progress .slime-bar {height:14px; background:#e5e7eb; border-radius:7px; overflow:hidden; margin:.3em 0}
.slime-progress .slime-bar > div {height:100%; background:#f97316; transition:width .3s}
/* keep thumbnails at a fixed column count: Gradio stretches a lone image to the full width */
#examples_gallery .grid-container {grid-template-columns: repeat(4, minmax(0, 1fr)) !important}
#results .grid-container {grid-template-columns: repeat(3, minmax(0, 1fr)) !important}
"""


def _ui(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler so a SlimeError reaches the page as a message (also from generators)."""
    import inspect

    import gradio as gr

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except SlimeError as exc:
                raise gr.Error(str(exc)) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlimeError as exc:
            raise gr.Error(str(exc)) from None
    return wrapper


@dataclass
class ExamplePanel:
    """Step 1: the example editor, the classes, and the examples added so far."""

    editor: "gr.ImageEditor"
    class_name: "gr.Textbox"
    add_class: "gr.Button"
    reset: "gr.Button"
    legend: "gr.HTML"  # the classes with their brush colours
    mask_file: "gr.File"
    add_example: "gr.Button"
    clear: "gr.Button"
    info: "gr.Markdown"  # how many examples, which classes none paints
    gallery: "gr.Gallery"


@dataclass
class TrainPanel:
    """Step 2: the fit settings, the buttons that start, stop and undo rounds, the progress, and
    the learned embeddings out (download) and in (upload)."""

    steps: "gr.Textbox"
    seed: "gr.Number"
    image_size: "gr.Slider"
    fast: "gr.Checkbox"  # fast_fit's settings: a fit in minutes on a CPU
    train: "gr.Button"
    stop: "gr.Button"
    refine: "gr.Button"
    undo: "gr.Button"
    progress: "gr.HTML"
    loss_plot: "gr.LinePlot"
    artifact_out: "gr.File"
    rounds_out: "gr.File"
    artifact_in: "gr.File"
    hub_in: "gr.Textbox"


@dataclass
class SegmentPanel:
    """Step 3: the images to segment, the button, and what came out."""

    files: "gr.File"
    resolution: "gr.Dropdown"
    preview: "gr.Button"  # matching on the examples so far: a result before any training
    segment: "gr.Button"
    labels_zip: "gr.File"
    legend: "gr.HTML"  # the learned classes, and what the last action did
    results: "gr.Gallery"
    clip: "gr.Video"  # the first uploaded clip's overlay video


@dataclass
class CorrectionArea:
    """Below the results: the picked result's correction editor (rendered afresh per pick) and
    its before/after refining."""

    note: "gr.Markdown"
    picks: "gr.Number"  # hidden: picks so far; each change renders a new correction editor
    before_after: "gr.Gallery"


def _class_legend(sess: Session) -> str:
    """The session's classes with what to paint next."""
    return legend_html(sess.classes, SlimeApp.paint_note(sess))


def _examples_update(app: SlimeApp, state: "gr.State", ex: ExamplePanel,
                     sess: Session) -> dict[Any, Any]:
    """The page updates after the examples changed."""
    return {state: sess, ex.gallery: app.example_gallery(sess), ex.info: app.examples_text(sess)}


def _example_panel(app: SlimeApp, start: Session) -> ExamplePanel:
    """Lay out step 1 (the left column)."""
    import gradio as gr

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
            add_class = gr.Button("Add class", scale=1, elem_id="add_class")
            reset = gr.Button("Start over", scale=1, variant="secondary", elem_id="reset")
        legend = gr.HTML(_class_legend(start), elem_id="class_legend")
        mask_file = gr.File(label="…or upload a ready mask (PNG/.npy of class indices)",
                            height=120, file_types=list(MASK_EXTENSIONS), elem_id="mask_upload")
        with gr.Row():
            add_example = gr.Button("Add example", variant="primary", elem_id="add_example")
            clear = gr.Button("Clear examples", elem_id="clear_examples")
        info = gr.Markdown(app.examples_text(start), elem_id="examples_info")
        gallery = gr.Gallery(label="Examples", columns=4, height=180, preview=False,
                             object_fit="contain", elem_id="examples_gallery")
    return ExamplePanel(editor, class_name, add_class, reset, legend, mask_file, add_example,
                        clear, info, gallery)


def _train_panel(d: SlimeConfig) -> TrainPanel:
    """Lay out step 2 (the right column) with `d`'s defaults."""
    import gradio as gr

    with gr.Column(scale=2):
        gr.Markdown("### 2. Train")
        with gr.Row():
            # A text box, not gr.Number: Gradio 6's Number shows and sends 0 when its value is
            # None, so "empty" could not be typed out of the way. `steps_field` reads it.
            steps = gr.Textbox(label=f"Steps (empty: {d.epochs} per example)", value="",
                               max_lines=1, elem_id="steps")
            seed = gr.Number(label="Seed", value=d.seed, precision=0, elem_id="seed")
        image_size = gr.Slider(label="Image size (px, the model's input side)",
                               minimum=IMAGE_SIZES[0], maximum=IMAGE_SIZES[1], step=64,
                               value=d.image_size, elem_id="image_size")
        fast = gr.Checkbox(label="Fast fit: minutes on a CPU (cached views, local gradients, "
                                 "coarse-to-fine, 100 epochs; docs/speed.md)", value=False,
                           elem_id="fast_fit")
        with gr.Row():
            train = gr.Button("Train", variant="primary", elem_id="train")
            stop = gr.Button("Stop (keep result)", variant="stop", elem_id="stop")
        with gr.Row():
            refine = gr.Button(f"Refine (continue, {d.refine_steps} steps if empty)",
                               elem_id="refine")
            undo = gr.Button("Undo round", elem_id="undo")
        progress = gr.HTML(progress_html(0, 0, None, "idle"), elem_id="train_progress")
        loss_plot = gr.LinePlot(x="step", y="loss", label="Loss", height=220, elem_id="loss_plot")
        artifact_out = gr.File(label="Learned embeddings (download)", interactive=False,
                               height=90, elem_id="artifact_download")
        rounds_out = gr.File(label="Every round's embeddings", file_count="multiple",
                             interactive=False, height=90, elem_id="rounds_download")
        artifact_in = gr.File(label="…or load learned embeddings (.safetensors)", height=120,
                              file_types=[".safetensors"], elem_id="artifact_upload")
        hub_in = gr.Textbox(label="…or a hub id (USER/REPO, shared with `slimeseg push`; Enter)",
                            placeholder="USER/REPO[@REVISION]", elem_id="hub_id")
    return TrainPanel(steps, seed, image_size, fast, train, stop, refine, undo, progress, loss_plot,
                      artifact_out, rounds_out, artifact_in, hub_in)


def _segment_panel() -> SegmentPanel:
    """Lay out step 3 (full width, below steps 1 and 2)."""
    import gradio as gr

    gr.Markdown("### 3. Segment\nPreview matches the images to your examples at once, before any "
                "training; after Train, Segment uses the learned embeddings.")
    with gr.Row():
        files = gr.File(label="Images to segment", file_count="multiple", height=160,
                        file_types=list(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS), elem_id="segment_files",
                        scale=2)
        with gr.Column(scale=1):
            resolution = gr.Dropdown(list(RESOLUTIONS), value=next(iter(RESOLUTIONS)),
                                     label="Resolution", elem_id="resolution")
            with gr.Row():
                preview = gr.Button("Preview (instant, no training)", elem_id="preview")
                segment = gr.Button("Segment", variant="primary", elem_id="segment")
            labels_zip = gr.File(label="Label maps (zip)", interactive=False, height=90,
                                 elem_id="labels_zip")
    legend = gr.HTML(legend_html([], "Train or load learned embeddings, then segment."),
                     elem_id="result_legend")
    results = gr.Gallery(label="Each image: the original, the overlay, the label map "
                               "(click one to correct it in the example editor)",
                         columns=3, height=420, preview=False, object_fit="contain",
                         elem_id="results")
    clip = gr.Video(label="Clip: its overlay video (label maps of every frame in the zip)",
                    interactive=False, height=320, elem_id="clip_overlay")
    return SegmentPanel(files, resolution, preview, segment, labels_zip, legend, results, clip)


def _correction_area(app: SlimeApp, state: "gr.State", ex: ExamplePanel) -> CorrectionArea:
    """Lay out the correction area below the results. Its editor is rendered per pick, so its
    "Add corrected example" button (adding to `ex`'s examples) is wired here."""
    import gradio as gr

    note = gr.Markdown("", elem_id="correcting")
    # A hidden Number, not a State: a State's change does not trigger gr.render in Gradio 6.31.
    picks = gr.Number(0, visible=False, precision=0, elem_id="to_correct")

    def add_correction(value: dict | None, sess: Session) -> dict[Any, Any]:
        sess = app.add_correction((value or {}).get("layers"), sess)
        return _examples_update(app, state, ex, sess)

    @gr.render(inputs=[picks, state], triggers=[picks.change])
    def correction_editor(number: float | None, sess: Session) -> None:
        # A new editor per pick: Gradio's ImageEditor (6.31) goes blank at the first stroke
        # when the server replaces a picture it already shows, so it is never reused.
        if not number or sess.picked is None:
            return
        _, image, labels = sess.results[sess.picked]
        with gr.Row():
            editor = gr.ImageEditor(
                value={"background": overlay(image, labels), "layers": [], "composite": None},
                key=f"correct-{int(number)}",
                label="Correct it: paint the right class over wrong regions (black: background)",
                type="numpy", image_mode="RGBA", sources=(), format="png", interactive=True,
                brush=gr.Brush(colors=brush_colors(), color_mode="fixed"), eraser=gr.Eraser(),
                layers=gr.LayerOptions(layers=["corrections"], allow_additional_layers=False),
                transforms=(), canvas_size=(512, 512), elem_id="correction_editor", scale=3)
            add = gr.Button("Add corrected example", elem_id="add_correction", scale=1)
        add.click(_ui(add_correction), [editor, state], [state, ex.gallery, ex.info])

    # height "auto": a fixed height cut the two full-width thumbnails to their top part
    before_after = gr.Gallery(label="Before and after: the preview and the trained result, or a "
                                    "corrected image before and after refining", columns=2,
                              height="auto", preview=False, object_fit="contain",
                              elem_id="before_after")
    return CorrectionArea(note, picks, before_after)


def _wire_examples(app: SlimeApp, state: "gr.State", ex: ExamplePanel) -> None:
    """Step 1's events: classes and examples (quick, in the default queue)."""

    def add_class(name: str, sess: Session) -> dict[Any, Any]:
        sess = app.add_class(name, sess)
        return {state: sess, ex.class_name: "", ex.legend: _class_legend(sess)}

    def reset_classes(sess: Session) -> dict[Any, Any]:
        sess = Session()
        return {**_examples_update(app, state, ex, sess), ex.legend: _class_legend(sess)}

    def add_example(editor: dict | None, mask_file: Any, sess: Session) -> dict[Any, Any]:
        editor = editor or {}
        sess = app.add_example(editor.get("background"), editor.get("layers"), mask_file, sess)
        return {**_examples_update(app, state, ex, sess), ex.mask_file: None}  # upload used up

    def clear_examples(sess: Session) -> dict[Any, Any]:
        return _examples_update(app, state, ex, app.clear_examples(sess))

    ex.add_class.click(_ui(add_class), [ex.class_name, state], [state, ex.class_name, ex.legend])
    ex.class_name.submit(_ui(add_class), [ex.class_name, state], [state, ex.class_name, ex.legend])
    ex.reset.click(reset_classes, [state], [state, ex.legend, ex.gallery, ex.info])
    ex.add_example.click(_ui(add_example), [ex.editor, ex.mask_file, state],
                         [state, ex.gallery, ex.info, ex.mask_file])
    ex.clear.click(clear_examples, [state], [state, ex.gallery, ex.info])


def _wire_training(app: SlimeApp, state: "gr.State", tr: TrainPanel, seg: SegmentPanel,
                   fix: CorrectionArea) -> None:
    """Train, refine and stop. Train and refine are checked at once (queue=False), then run one
    at a time with segmenting on the one model (CONCURRENCY_ID); stop never waits in the queue."""
    import gradio as gr

    def run_training(steps: str | None, image_size: float | None, seed: float | None,
                     sess: Session, key: str, refine: bool, fast: bool = False) -> Iterator[dict[Any, Any]]:
        for u in app.train(steps_field(steps), image_size, seed, sess, key=key, refine=refine, fast=fast):
            update = {tr.progress: progress_html(u.step, u.total, u.loss, u.state),
                      tr.loss_plot: loss_frame(u.losses)}
            if u.learned is not None:
                what = (f"Refined {u.step} steps (round {len(sess.rounds)})" if refine
                        else f"Trained {u.step} steps")
                update |= {tr.artifact_out: u.learned_path, state: sess,
                           seg.legend: legend_html(u.learned.classes, f"{what}; ready to segment."),
                           tr.rounds_out: list(sess.rounds)}
                if refine:
                    update[fix.before_after] = app.before_after(sess)
            yield update

    def check_train(steps: str | None, image_size: float, seed: float | None, fast: bool,
                    sess: Session) -> None:
        app.train_settings(steps_field(steps), image_size, seed, sess, fast)

    def train(steps: str | None, image_size: float, seed: float | None, fast: bool, sess: Session,
              request: gr.Request) -> Iterator[dict[Any, Any]]:
        yield from run_training(steps, image_size, seed, sess, request.session_hash or "default",
                                False, fast)

    def check_refine(steps: str | None, seed: float | None, sess: Session) -> None:
        app.refine_settings(steps_field(steps), seed, sess)

    def refine(steps: str | None, seed: float | None, sess: Session,
               request: gr.Request) -> Iterator[dict[Any, Any]]:
        yield from run_training(steps, None, seed, sess, request.session_hash or "default", True)

    def stop(request: gr.Request) -> None:
        if not app.stop(request.session_hash or "default"):
            gr.Info("No training is running.")

    trained = [tr.progress, tr.loss_plot, tr.artifact_out, seg.legend, state, tr.rounds_out,
               fix.before_after]
    tr.train.click(_ui(check_train), [tr.steps, tr.image_size, tr.seed, tr.fast, state], None,
                   queue=False).success(
                   _ui(train), [tr.steps, tr.image_size, tr.seed, tr.fast, state], trained,
                   concurrency_limit=1, concurrency_id=CONCURRENCY_ID, show_progress="minimal")
    tr.refine.click(_ui(check_refine), [tr.steps, tr.seed, state], None, queue=False).success(
                    _ui(refine), [tr.steps, tr.seed, state], trained,
                    concurrency_limit=1, concurrency_id=CONCURRENCY_ID, show_progress="minimal")
    tr.stop.click(stop, None, None, queue=False)


def _wire_rounds(app: SlimeApp, state: "gr.State", ex: ExamplePanel, tr: TrainPanel,
                 seg: SegmentPanel) -> None:
    """Undo a round (never queued) and load learned embeddings (queued apart from the model)."""
    import gradio as gr

    def undo(sess: Session) -> dict[Any, Any]:
        learned = app.undo(sess)
        return {state: sess, tr.artifact_out: sess.learned_path, tr.rounds_out: list(sess.rounds),
                seg.legend: legend_html(learned.classes,
                                        f"Back to round {len(sess.rounds)}; ready to segment.")}

    def load_artifact(file: Any, sess: Session) -> Any:
        from .hub import parse_hub_id

        if file is None or (isinstance(file, str) and not file.strip()):  # cleared or empty
            return gr.skip()
        learned = app.load_artifact(file, sess)
        hub_id = isinstance(file, str) and parse_hub_id(file.strip()) is not None
        note = f"Loaded {file.strip() if hub_id else upload_path(file).name}; ready to segment."
        return {state: sess, seg.legend: legend_html(learned.classes, note),
                tr.artifact_out: sess.learned_path, tr.rounds_out: list(sess.rounds),
                ex.legend: _class_legend(sess)}

    tr.undo.click(_ui(undo), [state], [state, seg.legend, tr.artifact_out, tr.rounds_out],
                  queue=False)
    tr.artifact_in.upload(_ui(load_artifact), [tr.artifact_in, state],
                          [state, seg.legend, tr.artifact_out, tr.rounds_out, ex.legend],
                          concurrency_limit=1, concurrency_id="load")
    tr.hub_in.submit(_ui(load_artifact), [tr.hub_in, state],
                     [state, seg.legend, tr.artifact_out, tr.rounds_out, ex.legend],
                     concurrency_limit=1, concurrency_id="load")


def _wire_segmenting(app: SlimeApp, state: "gr.State", ex: ExamplePanel, seg: SegmentPanel,
                     fix: CorrectionArea, image_size: "gr.Slider") -> None:
    """Step 3's events: segment (checked at once, then queued on the one model) and picking a
    result to correct."""
    import gradio as gr

    def check_segment(files: list[Any] | None, sess: Session) -> None:
        app.check_segment(files, sess)

    def shown(result: SegmentResult) -> dict[Any, Any]:
        for msg in result.problems:
            gr.Warning(msg)
        out = {seg.results: result.gallery, seg.legend: legend_html(result.classes, result.note),
               seg.labels_zip: result.zip_path, seg.clip: result.videos[0] if result.videos else None}
        return out | ({fix.before_after: result.compared} if result.compared else {})

    def segment(files: list[Any] | None, resolution: str, sess: Session) -> dict[Any, Any]:
        return shown(app.segment(files, sess, RESOLUTIONS.get(resolution)))

    def preview(files: list[Any] | None, resolution: str, image_size: float, sess: Session) -> dict[Any, Any]:
        return shown(app.preview(files, sess, image_size, RESOLUTIONS.get(resolution)))

    def check(sess: Session) -> dict[Any, Any]:  # after the preview is shown: the example check
        learned = sess.preview_learned
        return {seg.legend: legend_html(learned.classes if learned else [], app.check_example(sess))}

    def pick(sess: Session, number: float | None, evt: gr.SelectData) -> dict[Any, Any]:
        app.pick_result(int(evt.index), sess)
        name = sess.results[sess.picked][0]
        note = (f"Correcting {name}: paint the right class over what is wrong (black: "
                "background), press Add corrected example, then Refine.")
        return {fix.picks: int(number or 0) + 1, state: sess, ex.legend: _class_legend(sess),
                fix.note: note}

    shows = [seg.results, seg.legend, seg.labels_zip, seg.clip, fix.before_after]
    seg.segment.click(_ui(check_segment), [seg.files, state], None, queue=False).success(
                      _ui(segment), [seg.files, seg.resolution, state], shows,
                      concurrency_limit=1, concurrency_id=CONCURRENCY_ID)
    seg.preview.click(_ui(preview), [seg.files, seg.resolution, image_size, state], shows,
                      concurrency_limit=1, concurrency_id=CONCURRENCY_ID).success(
                      _ui(check), [state], [seg.legend], concurrency_limit=1, concurrency_id=CONCURRENCY_ID)
    seg.results.select(_ui(pick), [state, fix.picks], [fix.picks, state, ex.legend, fix.note],
                       queue=False)


def build_app(segmenter: Any, model_label: str = "") -> Any:
    """The Gradio Blocks of the app around a loaded `Segmenter` (not launched): the panels, then
    their events; every handler is a `SlimeApp` method with its values turned into page updates
    keyed by component."""
    import gradio as gr

    app = SlimeApp(segmenter, model_label)
    start = Session()
    # delete_cache: Gradio's copies of uploads and downloads older than a day, checked hourly
    with gr.Blocks(title="slimeseg", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        state = gr.State(start)
        gr.Markdown("## slimeseg: segment images like one example\n"
                    "1. Upload an example image, add your classes, paint them. "
                    "2. Train. 3. Drop new images to segment them the same way."
                    + (f"  \nModel: `{model_label}`" if model_label else ""))
        with gr.Row():
            ex = _example_panel(app, start)
            tr = _train_panel(app.defaults)
        seg = _segment_panel()
        fix = _correction_area(app, state, ex)
        _wire_examples(app, state, ex)
        _wire_training(app, state, tr, seg, fix)
        _wire_rounds(app, state, ex, tr, seg)
        _wire_segmenting(app, state, ex, seg, fix, tr.image_size)
    demo.queue(default_concurrency_limit=1)
    return demo


def theme() -> Any:
    """Gradio's default look with system fonts only (nothing fetched from font services)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(model: str, host: str = "127.0.0.1", port: int | None = None, *,
           device: str | None = None, dtype: str | None = None, revision: str | None = None,
           block: bool = True, model_config: str | None = None) -> Any:
    """Load the model, build the app and serve it; returns the Blocks (when `block` is False)."""
    import sys

    from .segmenter import Segmenter

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this address can use the app "
              "(there is no login)", file=sys.stderr)
    segmenter = Segmenter.from_pretrained(model, revision=revision, device=device, dtype=dtype,
                                          model_config=model_config)
    demo = build_app(segmenter, model_label=model)
    demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_UPLOAD,
                prevent_thread_lock=not block, show_error=True, ssr_mode=False, mcp_server=False,
                inbrowser=False, theme=theme(), css=CSS, footer_links=[], quiet=not block)
    return demo
