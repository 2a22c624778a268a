"""The Segmenter: set an example (`fit`), then segment new images like it (`predict`).

A thin façade, like segment-anything's predictor: it holds the frozen SD and the embeddings in
use, checks inputs, and hands the work to `training` (fit) and `inference` (predict). Data flows
one way: user inputs -> validated arrays/tensors (`io`, `examples`) -> engine -> label maps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from . import inference, selftrain, training
from .artifact import Learned
from .config import DEFAULT_MODEL, SlimeConfig
from .errors import InputError, TrainingError
from .examples import Example, ImageLike, input_name, prepare_examples
from .io import as_image_array
from .models import StableDiffusion, load_stable_diffusion
from .training import Callback

log = logging.getLogger(__name__)

__all__ = ["Callback", "ImageLike", "Segmenter"]


class Segmenter:
    """SLiMe on a frozen Stable Diffusion: `fit` learns class embeddings, `predict` applies them."""

    def __init__(self, sd: StableDiffusion, learned: Learned | None = None):
        self.sd = sd
        self.learned: Learned | None = None
        if learned is not None:
            self.set_learned(learned)

    # ------------------------------------------------------------------ building one
    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, revision: str | None = None,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        local_files_only: bool | None = None,
                        model_config: str | None = None) -> Segmenter:
        """Load SD from a preset name, hub id, diffusers folder or single `.safetensors` checkpoint
        (original layout; `model_config`: a diffusers folder with its configs); no VAE decoder."""
        return cls(load_stable_diffusion(model, revision=revision, device=device, dtype=dtype,
                                         local_files_only=local_files_only, model_config=model_config))

    @classmethod
    def from_learned(cls, learned: Learned | str | os.PathLike, model: str | None = None,
                     revision: str | None = None, device: str | torch.device | None = None,
                     dtype: str | torch.dtype | None = None,
                     name: str | os.PathLike | None = None,
                     model_config: str | None = None) -> Segmenter:
        """A segmenter ready to apply an artifact (a file, or a hub id `USER/REPO[@REV]`): the
        model it was made with unless `model` says otherwise; refuses embeddings that do not fit
        the model, naming their file (`name`)."""
        if name is None:
            name = str(learned) if isinstance(learned, (str, os.PathLike)) else "embeddings"
        if isinstance(learned, (str, os.PathLike)):
            learned = Learned.load(learned)
        if model is None:  # the artifact's own model, with the configs it was loaded with
            model_config = model_config or learned.model_config
        seg = cls.from_pretrained(model or learned.model_id, revision=revision or learned.revision,
                                  device=device, dtype=dtype, model_config=model_config)
        seg.use(learned, name)
        return seg

    # ------------------------------------------------------------------ learned embeddings
    def set_learned(self, learned: Learned, name: str | os.PathLike = "embeddings") -> None:
        """Use these embeddings for `predict`; refuses (naming `name`) embeddings that do not fit
        the model (`Learned.check_fits`)."""
        learned.check_fits(self.sd, name)
        if learned.model_id != self.sd.model_id:
            log.warning("embeddings were learned with '%s'; using them with '%s' (same architecture)",
                        learned.model_id, self.sd.model_id)
        self.learned = learned

    def use(self, learned: Learned, name: str | os.PathLike = "embeddings") -> Learned:
        """`set_learned`, returning the embeddings."""
        self.set_learned(learned, name)
        return learned

    def load(self, path: str | os.PathLike) -> Learned:
        """Read an artifact and use it for `predict` (refused, naming the file, if it does not fit)."""
        return self.use(Learned.load(path), path)

    def _require_learned(self, learned: Learned | None) -> Learned:
        if learned is not None:
            if learned is not self.learned:
                self.set_learned(learned)
            return learned
        if self.learned is None:
            raise InputError("no learned embeddings: call fit() or load() first")
        return self.learned

    # ------------------------------------------------------------------ fit
    def fit(self, images: Sequence[ImageLike], masks: Sequence[ImageLike], classes: Sequence[str],
            config: SlimeConfig | None = None, *, progress: bool = True,
            callback: Callback | None = None, checkpoint_path: str | os.PathLike | None = None,
            checkpoint_every: int = 0, resume: Learned | None = None,
            val_images: Sequence[ImageLike] | None = None, val_masks: Sequence[ImageLike] | None = None,
            init: Learned | str | os.PathLike | None = None,
            unlabelled: Sequence[ImageLike] | None = None, **overrides: Any) -> Learned:
        """Learn one embedding per foreground class from (image, mask) pairs; also sets it for predict.

        `overrides` change single settings of `config` (None means "not set"). With
        `checkpoint_every` N, the state is saved atomically to `checkpoint_path` every N steps and
        on Ctrl-C; `resume` continues such a checkpoint to the same result as an uninterrupted
        run. If training fails (non-finite loss), the last good embeddings become `self.learned`
        and are saved to `checkpoint_path` when one is given. `val_images`/`val_masks` are the
        pairs that validate with `select_best` / `patience` (default: `training.split_validation`).
        `init` (an artifact or its file) continues its embeddings instead of starting from the
        prompt: refining with corrected examples takes `refine_steps` steps, not 200 epochs.
        `unlabelled`: images like those to segment, for self-training (fusion (c), `selftrain`):
        matching labels them from the examples, and the fit also trains on their confident cells.
        """
        if init is not None:
            name = str(init) if isinstance(init, (str, os.PathLike)) else "the embeddings to continue"
            if isinstance(init, (str, os.PathLike)):
                init = Learned.load(init)
            training.check_init(init, classes, self.sd, name)
        cfg = (config or SlimeConfig()).replace(**overrides)
        examples = prepare_examples(images, masks, classes)
        validation = None
        if val_images is not None or val_masks is not None:
            validation = prepare_examples(val_images or [], val_masks or [], classes)
            cfg = cfg.replace(select_best=True) if cfg.patience is None else cfg
        pseudo = None
        if unlabelled is not None and (isinstance(unlabelled, (str, os.PathLike, np.ndarray))
                                       or not isinstance(unlabelled, Sequence)):
            raise InputError("unlabelled must be a list of images (paths, arrays or PIL images)")
        if unlabelled and cfg.self_train_share > 0:  # labelled by the examples that train (not a held-out one)
            train, _ = training.split_validation(examples, cfg, validation)
            pseudo = selftrain.pseudo_examples(self.sd, self._matcher(train, classes, cfg), unlabelled, cfg)
        try:
            learned = training.fit(self.sd, examples, classes, cfg, progress=progress,
                                   callback=callback, checkpoint_path=checkpoint_path,
                                   checkpoint_every=checkpoint_every, resume=resume,
                                   validation=validation, init=init, pseudo=pseudo)
        except TrainingError as exc:
            if exc.learned is not None:
                self.learned = exc.learned
            raise
        learned.examples = inference.example_views(examples, cfg)  # for matching and fusion
        if learned.uncond is None:  # the empty prompt: what matching reads features under
            learned.uncond = self.sd.encode_prompt("")[0].float().cpu()
        self.learned = learned
        return learned

    # ------------------------------------------------------------------ match
    def match(self, images: Sequence[ImageLike], masks: Sequence[ImageLike], classes: Sequence[str],
              config: SlimeConfig | None = None, **overrides: Any) -> Learned:
        """A matching-only artifact in seconds, no training: the examples (at the model input's
        size) whose UNet features label new images by nearest cells (`method="match"`); also
        sets it for predict. `fit` artifacts carry the same data, so they can match or fuse."""
        cfg = (config or SlimeConfig()).replace(**overrides)
        self.learned = self._matcher(prepare_examples(images, masks, classes), classes, cfg)
        return self.learned

    def _matcher(self, examples: list[Example], classes: Sequence[str], cfg: SlimeConfig) -> Learned:
        """The matching artifact of validated examples (`match`, and self-training's labeller)."""
        cfg = cfg.replace(method="match")
        empty = self.sd.encode_prompt("")[0].float().cpu()  # (77, D)
        return Learned(context=empty, uncond=empty.clone(), classes=list(classes),
                       model_id=self.sd.model_id, fingerprint=self.sd.fingerprint,
                       config=cfg.to_dict(), revision=self.sd.revision,
                       model_config=self.sd.model_config,
                       image_hashes=[e.sha256 for e in examples], history={"steps_done": 0},
                       layers=self.sd.plan.to_dict(), trained=False,
                       examples=inference.example_views(examples, cfg))

    def check_examples(self, learned: Learned | None = None, views: int = 4,
                       images: Sequence[ImageLike] | None = None,
                       labels: Sequence[np.ndarray] | None = None) -> float:
        """The example check, an mIoU in [0, 1]. Without `images`, from the examples alone
        (`inference.example_check`): how well matching re-finds their parts in augmented copies
        (warn under `inference.POOR_EXAMPLE`). With images like those to segment (unlabelled; the
        first `inference.CYCLE_IMAGES` are used) the cycle check: matching labels each (or takes
        its `labels`, e.g. a preview's), then each image with those labels alone segments the
        examples back, scored against their masks; on the lab it ranks examples by their
        held-out mIoU better (docs/methods.md)."""
        learned = self._require_learned(learned)
        cfg = SlimeConfig.from_dict(learned.config)
        if not images:
            return inference.example_check(self.sd, learned, cfg, views)
        if not learned.examples:
            raise InputError("these embeddings hold no examples to check (made by an older slimeseg)")
        cfg = cfg.replace(method="match")
        images = list(images)[:inference.CYCLE_IMAGES]
        arrs = [as_image_array(im, input_name(im, "image", i)) for i, im in enumerate(images)]
        if labels is None:
            labels = inference.predict_labels(self.sd, arrs, learned, cfg, 4)
        labels = list(labels)[:len(arrs)]
        if len(labels) != len(arrs):
            raise InputError(f"the cycle check got {len(arrs)} images but {len(labels)} label maps")
        return inference.cycle_check(self.sd, learned, cfg, arrs, labels)

    # ------------------------------------------------------------------ predict
    def _predict_config(self, learned: Learned, config: SlimeConfig | None,
                        overrides: dict[str, Any]) -> SlimeConfig:
        """Inference settings: the artifact's own (image size, WAS on/off, ...) unless overridden."""
        return (config or SlimeConfig.from_dict(learned.config)).replace(**overrides)

    def _one_image(self, image: ImageLike, learned: Learned | None, config: SlimeConfig | None,
                   overrides: dict[str, Any]) -> tuple[Learned, SlimeConfig, np.ndarray]:
        """The embeddings, settings and (H, W, 3) uint8 array a single-image prediction uses."""
        learned = self._require_learned(learned)
        return (learned, self._predict_config(learned, config, overrides),
                as_image_array(image, input_name(image, "image", 0)))

    def predict_scores(self, image: ImageLike, learned: Learned | None = None,
                       config: SlimeConfig | None = None, **overrides: Any) -> torch.Tensor:
        """Per-class scores (K, H, W) at the image's own size, for users who want them (argmax
        gives `predict`'s labels; K x H x W floats: `predict` never holds them)."""
        learned, cfg, arr = self._one_image(image, learned, config, overrides)
        return inference.predict_scores(self.sd, arr, learned, cfg)

    def predict(self, image: ImageLike, learned: Learned | None = None,
                config: SlimeConfig | None = None, **overrides: Any) -> np.ndarray:
        """Label map (H, W) uint8 of class indices at the input image's own size.

        The scores are upsampled and argmax-ed in bands of rows (`inference.labels_for`), so the
        full (K, H, W) scores of a large image are never held (guided upsampling holds them at
        up to `upsample.WORK_PIXELS`, ~0.5 M pixels).
        """
        learned, cfg, arr = self._one_image(image, learned, config, overrides)
        return inference.labels_for(inference.low_res_scores(self.sd, arr, learned, cfg), arr, cfg)

    def predict_batch(self, images: Sequence[ImageLike], learned: Learned | None = None,
                      batch_size: int = 4, config: SlimeConfig | None = None,
                      **overrides: Any) -> list[np.ndarray]:
        """Label maps for many images, `batch_size` UNet passes at a time."""
        learned = self._require_learned(learned)
        cfg = self._predict_config(learned, config, overrides)
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):  # read images one batch at a time
            arrs = [as_image_array(im, input_name(im, "image", start + i))
                    for i, im in enumerate(images[start:start + batch_size])]
            out += inference.predict_labels(self.sd, arrs, learned, cfg, batch_size)
        return out

    def predict_video(self, path: str | os.PathLike, learned: Learned | None = None,
                      frames: str | None = None, batch_size: int = 4,
                      config: SlimeConfig | None = None, **overrides: Any) -> Iterator[np.ndarray]:
        """Label maps (H, W) uint8 of a clip's frames, in order, as they are decoded: the clip is
        streamed (`video.read_frames`), `batch_size` frames per UNet batch, and with `temporal`
        "flow" (the default) scores are carried along the motion (`temporal`). `frames`:
        "START:STOP:STEP" (default: all)."""
        from .video import FrameRange, label_frames

        learned = self._require_learned(learned)
        cfg = self._predict_config(learned, config, overrides)
        for _, _, labels in label_frames(self.sd, path, learned, cfg, FrameRange.parse(frames),
                                         batch_size):
            yield labels
