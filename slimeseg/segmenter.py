"""The Segmenter: set an example (fit), then segment new images like it (predict).

Data flows one way: validated arrays -> tensors at the model size -> frozen SD with attention
capture -> class maps -> label maps at each image's own size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from . import maps
from .artifact import Learned, image_hash
from .attention import AttentionStore, capture
from .augment import augment, resize_pair
from .config import DEFAULT_MODEL, SlimeConfig
from .errors import ArtifactError, InputError, TrainingError
from .io import MAX_CLASSES, as_image_array, as_mask_array, check_pair
from .losses import ce_loss, class_weights, ldm_loss, mse_loss
from .models import StableDiffusion, load_stable_diffusion

log = logging.getLogger(__name__)

ImageLike = np.ndarray | Image.Image | str | os.PathLike
# callback(step, total_steps, losses) -> False to stop early (keeping the result so far)
Callback = Callable[[int, int, dict[str, float]], bool | None]


def _name(item: Any, kind: str, index: int) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"{kind} #{index}"


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


@dataclass
class Example:
    """One validated training pair, as tensors at the image's own size."""

    image: torch.Tensor  # (3, H, W) float in [0, 1]
    mask: torch.Tensor  # (H, W) long
    name: str
    sha256: str


def prepare_examples(images: Sequence[ImageLike], masks: Sequence[ImageLike],
                     classes: Sequence[str]) -> list[Example]:
    """Read and check training pairs: matching sizes, class indices below K, K in 2..76."""
    classes = list(classes)
    if len(images) != len(masks):
        raise InputError(f"got {len(images)} images but {len(masks)} masks; give one mask per image")
    if not images:
        raise InputError("no training images given")
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise InputError(f"{len(classes)} classes named; need 2 to {MAX_CLASSES} (background first)")
    if len(set(classes)) != len(classes) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise InputError(f"class names must be distinct and non-empty, got {classes}")
    k = len(classes)
    examples, seen = [], np.zeros(k, dtype=bool)
    for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
        img_name, msk_name = _name(img, "image", i), _name(msk, "mask", i)
        arr = as_image_array(img, img_name)
        lab = as_mask_array(msk, msk_name)
        check_pair(arr, lab, img_name, msk_name)
        top = int(lab.max())
        if top >= k:
            raise InputError(f"{msk_name}: mask holds class {top} but only {k} classes are named "
                             f"({', '.join(classes)}), so values must be 0..{k - 1}")
        seen[np.unique(lab)] = True
        examples.append(Example(_to_tensor(arr), torch.from_numpy(lab.astype(np.int64)),
                                img_name, image_hash(arr)))
    absent = [c for c, s in zip(classes, seen, strict=True) if not s]
    if absent:
        warnings.warn(f"class(es) {', '.join(absent)} appear in no mask; they cannot be learned",
                      stacklevel=3)
    return examples


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise it when the block ends.

    Only in the main thread with Python's default handler; elsewhere the block runs as is.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class Segmenter:
    """SLiMe on a frozen Stable Diffusion: `fit` learns class embeddings, `predict` applies them."""

    def __init__(self, sd: StableDiffusion, learned: Learned | None = None):
        self.sd = sd
        self.learned: Learned | None = None
        self._installed: AttentionStore | None = None  # store whose processors are installed
        if learned is not None:
            self.set_learned(learned)

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, revision: str | None = None,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        local_files_only: bool | None = None) -> Segmenter:
        """Load SD from a preset name, hub id or diffusers folder (VAE decoder never kept)."""
        return cls(load_stable_diffusion(model, revision=revision, device=device, dtype=dtype,
                                         local_files_only=local_files_only))

    # ------------------------------------------------------------------ learned embeddings
    def set_learned(self, learned: Learned) -> None:
        """Use these embeddings for `predict`; refuses embeddings made for another model."""
        if learned.fingerprint != self.sd.fingerprint:
            raise ArtifactError(
                f"embeddings were learned with model '{learned.model_id}' but the loaded model is "
                f"'{self.sd.model_id}' (their configs differ); load '{learned.model_id}' instead")
        if learned.context.shape[-1] != self.sd.context_dim:
            raise ArtifactError(f"embeddings have width {learned.context.shape[-1]}, model "
                                f"'{self.sd.model_id}' needs {self.sd.context_dim}")
        if learned.model_id != self.sd.model_id:
            log.warning("embeddings were learned with '%s'; using them with '%s' (same architecture)",
                        learned.model_id, self.sd.model_id)
        self.learned = learned

    def load(self, path: str | os.PathLike) -> Learned:
        """Read an artifact and use it for `predict`."""
        learned = Learned.load(path)
        try:
            self.set_learned(learned)
        except ArtifactError as exc:
            raise ArtifactError(f"{path}: {exc}") from None
        return learned

    # ------------------------------------------------------------------ one UNet pass
    def _run_unet(self, latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                  context: torch.Tensor, store: AttentionStore) -> torch.Tensor:
        """Noise the latents at t and run the UNet once with capture on; returns its prediction."""
        sd = self.sd
        noisy = sd.add_noise(latents, noise.to(latents), t)
        store.reset()
        if self._installed is store:  # fit() installed the processors once for all its steps
            return sd.unet(noisy, t, encoder_hidden_states=context.to(sd.dtype)).sample
        with capture(sd.unet, sd.plan.roles(), store):
            return sd.unet(noisy, t, encoder_hidden_states=context.to(sd.dtype)).sample

    @contextlib.contextmanager
    def _installed_for(self, store: AttentionStore) -> Iterator[None]:
        """Keep the capture processors installed across many `_run_unet` calls.

        Installing and removing them once per fit instead of every step keeps per-step host
        work out of the loop (it matters on a fast GPU, where a step is tens of milliseconds).
        """
        outer = self._installed
        with capture(self.sd.unet, self.sd.plan.roles(), store):
            self._installed = store
            try:
                yield
            finally:
                self._installed = outer

    def _context(self, trainable: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """The (1, 77, D) sequence with rows 1..K-1 replaced by the trainable embeddings."""
        k = trainable.shape[0] + 1
        return torch.cat([base[:, :1], trainable[None], base[:, k:]], dim=1)

    # ------------------------------------------------------------------ fit
    def fit(self, images: Sequence[ImageLike], masks: Sequence[ImageLike], classes: Sequence[str],
            config: SlimeConfig | None = None, *, progress: bool = True,
            callback: Callback | None = None, checkpoint_path: str | os.PathLike | None = None,
            checkpoint_every: int = 0, resume: Learned | None = None, **overrides: Any) -> Learned:
        """Learn one embedding per foreground class from (image, mask) pairs; also sets it for predict.

        `overrides` change single settings of `config` (None means "not set"). With
        `checkpoint_path`, the state is saved atomically every `checkpoint_every` steps and on
        Ctrl-C; `resume` continues such a checkpoint to the same result as an uninterrupted run.
        """
        cfg = (config or SlimeConfig()).replace(**overrides)
        examples = prepare_examples(images, masks, classes)
        sd, k = self.sd, len(classes)
        total = cfg.total_steps(len(examples))
        hw = (cfg.image_size // 8, cfg.image_size // 8)

        # 0. the frozen prompt: "part" x K through CLIP once; rows 1..K-1 become trainable
        base = sd.encode_prompt(" ".join(["part"] * k)).to(sd.device)  # (1, 77, D)
        uncond = sd.encode_prompt("").to(sd.device) if cfg.ldm_guidance else None
        trainable = base[0, 1:k].clone().float().requires_grad_(True)  # (K-1, D)
        optimizer = torch.optim.Adam([trainable], lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        step, order = 0, []
        history: dict[str, Any] = {"loss": [], "steps_done": 0}
        if resume is not None:
            step, order = self._restore(resume, trainable, optimizer, gen, cfg, examples, classes)
            history = dict(resume.history)
            history.setdefault("loss", [])

        def snapshot(done: int) -> Learned:
            context = self._context(trainable.detach(), base)[0].float().cpu()
            hist = {**history, "steps_done": done, "total_steps": total}
            learned = Learned(context=context, classes=list(classes), model_id=sd.model_id,
                              fingerprint=sd.fingerprint, config=cfg.to_dict(), revision=sd.revision,
                              image_hashes=[e.sha256 for e in examples],
                              uncond=None if uncond is None else uncond[0].cpu(), history=hist)
            if done < total:
                learned.state = self._state(optimizer, gen, done, order)
            return learned

        # the RNG and pair order as of the last completed step: a Ctrl-C or error mid-step
        # rewinds to them, so a saved checkpoint is exactly that step's state
        committed = (gen.get_state(), list(order))

        def rewind() -> None:
            gen.set_state(committed[0])
            order[:] = committed[1]

        store = AttentionStore(k, hw, want_was=cfg.use_was and cfg.use_mse,
                               values_fn=maps.train_values)
        latent_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        bar = tqdm(total=total, initial=step, disable=not progress, desc="fit", unit="step",
                   dynamic_ncols=True)
        installed = contextlib.ExitStack()  # capture processors stay installed for all steps
        installed.enter_context(self._installed_for(store))
        try:
            while step < total:
                # 1. the next training pair: a fresh seeded permutation every epoch
                if not order:
                    order = torch.randperm(len(examples), generator=gen).tolist()
                idx = order.pop(0)
                ex = examples[idx]
                # 2. augment (or just resize) and encode to latents
                if cfg.augment:
                    present = [c for c in torch.unique(ex.mask).tolist() if c > 0]
                    focus = present[step % len(present)] if present else None
                    img, msk = augment(ex.image, ex.mask, cfg, gen, focus)
                    latents = sd.encode_image(img[None])
                elif idx in latent_cache:
                    latents, msk = latent_cache[idx]
                else:
                    img, msk = resize_pair(ex.image, ex.mask, cfg.image_size)
                    latents = sd.encode_image(img[None])
                    latent_cache[idx] = (latents, msk)
                mask_lo = F.interpolate(msk[None, None].float(), size=hw, mode="nearest")[0, 0].long()
                mask_lo = mask_lo.to(sd.device)  # (h, w)
                # 3. noise at a random t in [t_min, t_max] and run the UNet with capture
                t = torch.randint(cfg.t_min, cfg.t_max + 1, (1,), generator=gen)
                noise = torch.randn(latents.shape, generator=gen)
                context = self._context(trainable, base)  # (1, 77, D)
                t_dev = t.to(sd.device)
                if uncond is not None:
                    pred = self._run_unet(latents.repeat(2, 1, 1, 1), t_dev.repeat(2),
                                          noise.repeat(2, 1, 1, 1), torch.cat([uncond, context]), store)
                    pred = pred[:1] + cfg.ldm_guidance * (pred[1:] - pred[:1])
                else:
                    pred = self._run_unet(latents, t_dev, noise, context, store)
                # 4. the three losses on the conditional half
                losses: dict[str, torch.Tensor] = {}
                scores = maps.class_scores(store, hw)[-1]  # (K, h, w)
                if cfg.use_ce:
                    losses["ce"] = ce_loss(scores, mask_lo, class_weights(mask_lo, k))
                if store.want_was:
                    losses["mse"] = cfg.alpha * mse_loss(store.was()[-1], mask_lo)
                if cfg.use_ldm and cfg.beta:
                    target = sd.ldm_target(latents, noise.to(latents), t_dev)
                    losses["ldm"] = cfg.beta * ldm_loss(pred, target)
                if not losses:
                    raise TrainingError("every loss term is switched off; nothing to optimise")
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {loss.item()} at step {step + 1}; stopped, "
                                        "keeping the last good embeddings (try a lower --lr)")
                # 5. update the K-1 class embeddings (undone if it made them non-finite);
                # Ctrl-C waits until the step is whole
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                with _sigint_deferred():
                    before = trainable.detach().clone()
                    optimizer.step()
                    if not torch.isfinite(trainable).all():
                        with torch.no_grad():
                            trainable.copy_(before)
                        raise TrainingError(f"embeddings became non-finite at step {step + 1}; stopped, "
                                            "keeping the last good embeddings (try a lower --lr)")
                    step += 1
                    logged = {n: round(float(v.detach()), 5) for n, v in losses.items()}
                    logged["loss"] = round(float(loss.detach()), 5)
                    history["loss"].append(logged["loss"])
                    committed = (gen.get_state(), list(order))
                bar.set_postfix(loss=f"{logged['loss']:.4f}", refresh=False)
                bar.update(1)
                if checkpoint_path and checkpoint_every and step % checkpoint_every == 0 and step < total:
                    snapshot(step).save(checkpoint_path)
                if callback is not None and callback(step, total, logged) is False:
                    break
        except KeyboardInterrupt:
            if checkpoint_path:
                rewind()
                snapshot(step).save(checkpoint_path)
            raise
        except TrainingError:
            rewind()
            good = snapshot(step)  # the embeddings before the failing update
            if checkpoint_path:
                good.save(checkpoint_path)
            self.learned = good
            raise
        finally:
            bar.close()
            installed.close()
        learned = snapshot(step)
        self.learned = learned
        return learned

    @staticmethod
    def _state(optimizer: torch.optim.Optimizer, gen: torch.Generator, step: int,
               order: list[int]) -> dict[str, torch.Tensor]:
        """Everything besides the embeddings that a resumed run needs to continue identically."""
        st = next(iter(optimizer.state.values()), {})
        state = {"step": torch.tensor([step]), "rng": gen.get_state(),
                 "order": torch.tensor(order, dtype=torch.int64)}
        if st:
            state.update(adam_exp_avg=st["exp_avg"].cpu(), adam_exp_avg_sq=st["exp_avg_sq"].cpu(),
                         adam_step=torch.as_tensor(st["step"]).reshape(1).float().cpu())
        return state

    def _restore(self, resume: Learned, trainable: torch.Tensor, optimizer: torch.optim.Optimizer,
                 gen: torch.Generator, cfg: SlimeConfig, examples: list[Example],
                 classes: Sequence[str]) -> tuple[int, list[int]]:
        """Load a checkpoint's embeddings, optimiser and RNG state after checking it fits this run."""
        if list(resume.classes) != list(classes):
            raise InputError(f"checkpoint classes {resume.classes} differ from {list(classes)}")
        if resume.image_hashes and resume.image_hashes != [e.sha256 for e in examples]:
            raise InputError("checkpoint was made with other training images; cannot resume")
        if resume.fingerprint != self.sd.fingerprint:
            raise ArtifactError(f"checkpoint is for model '{resume.model_id}', not '{self.sd.model_id}'")
        if not resume.state:
            raise InputError("this file holds finished embeddings, not a resumable checkpoint")
        saved = SlimeConfig.from_dict(resume.config)
        if saved.replace(steps=cfg.steps, epochs=cfg.epochs) != cfg:
            raise InputError("checkpoint was made with other settings; resume with the same ones")
        k = len(classes)
        with torch.no_grad():
            trainable.copy_(resume.context[1:k].to(trainable))
        st = resume.state
        gen.set_state(st["rng"])
        if "adam_exp_avg" in st:
            optimizer.state[trainable] = {
                "step": st["adam_step"].reshape(()).clone(),
                "exp_avg": st["adam_exp_avg"].to(trainable), "exp_avg_sq": st["adam_exp_avg_sq"].to(trainable)}
        return int(st["step"][0]), st["order"].tolist()

    # ------------------------------------------------------------------ predict
    def _require_learned(self, learned: Learned | None) -> Learned:
        if learned is not None:
            if learned is not self.learned:
                self.set_learned(learned)
            return learned
        if self.learned is None:
            raise InputError("no learned embeddings: call fit() or load() first")
        return self.learned

    @torch.no_grad()
    def _score_batch(self, batch: torch.Tensor, learned: Learned, cfg: SlimeConfig) -> torch.Tensor:
        """Per-class score maps at the latent resolution for a (B, 3, S, S) batch: (B, K, h, w)."""
        sd, k = self.sd, learned.num_classes
        hw = (batch.shape[-2] // 8, batch.shape[-1] // 8)
        reference = cfg.normalization == "reference"
        store = AttentionStore(k, hw, want_was=cfg.use_was, want_probs=reference,
                               values_fn=maps.reference_values if reference else maps.train_values)
        latents = sd.encode_image(batch)
        gen = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(latents.shape[1:], generator=gen).expand_as(latents)
        t = torch.full((latents.shape[0],), cfg.t_test, dtype=torch.long, device=sd.device)
        context = learned.context[None].to(sd.device).expand(latents.shape[0], -1, -1)
        self._run_unet(latents, t, noise, context, store)
        if reference:
            probs = maps.class_probs(store, hw)
            return maps.reference_rescale(store.was(), probs) if cfg.use_was else probs
        return store.was() if cfg.use_was else maps.class_scores(store, hw).softmax(1)

    def _score_image(self, image: torch.Tensor, learned: Learned, cfg: SlimeConfig) -> torch.Tensor:
        """Scores (K, S, S) for one (3, S, S) image, over n x n overlapping crops if tiles > 1."""
        size = image.shape[-1]
        if cfg.tiles == 1:
            s = self._score_batch(image[None], learned, cfg)[0]
            return F.interpolate(s[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        side = int(round(size * cfg.tile_ratio))
        stride = (size - side) / (cfg.tiles - 1)
        boxes = [(round(i * stride), round(j * stride)) for i in range(cfg.tiles) for j in range(cfg.tiles)]
        crops = torch.stack([F.interpolate(image[None, :, y:y + side, x:x + side], size=(size, size),
                                           mode="bilinear", align_corners=False)[0] for y, x in boxes])
        scores = self._score_batch(crops, learned, cfg)  # (n*n, K, h, w)
        k = scores.shape[1]
        total = torch.zeros(k, size, size, device=scores.device)
        count = torch.full((k, size, size), 1e-7, device=scores.device)
        for (y, x), s in zip(boxes, scores, strict=True):
            keep = torch.ones(k, dtype=torch.bool, device=s.device)
            if cfg.normalization == "reference":  # the reference drops weak classes per crop
                keep = s.flatten(1).amax(1) >= cfg.tile_threshold
                keep[0] = True
            up = F.interpolate(s[None], size=(side, side), mode="bilinear", align_corners=False)[0]
            total[keep, y:y + side, x:x + side] += up[keep]
            count[keep, y:y + side, x:x + side] += 1
        return total / count

    def predict_scores(self, image: ImageLike, learned: Learned | None = None,
                       config: SlimeConfig | None = None, **overrides: Any) -> torch.Tensor:
        """Per-class scores (K, H, W) at the image's own size (argmax gives the labels)."""
        learned = self._require_learned(learned)
        cfg = self._predict_config(learned, config, overrides)
        arr = as_image_array(image, _name(image, "image", 0))
        h, w = arr.shape[:2]
        x = F.interpolate(_to_tensor(arr)[None], size=(cfg.image_size,) * 2, mode="bilinear",
                          align_corners=False, antialias=True)[0].clamp(0, 1)
        s = self._score_image(x, learned, cfg)
        return F.interpolate(s[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0].cpu()

    def predict(self, image: ImageLike, learned: Learned | None = None,
                config: SlimeConfig | None = None, **overrides: Any) -> np.ndarray:
        """Label map (H, W) uint8 of class indices at the input image's own size."""
        return self.predict_scores(image, learned, config, **overrides).argmax(0).numpy().astype(np.uint8)

    def predict_batch(self, images: Sequence[ImageLike], learned: Learned | None = None,
                      batch_size: int = 4, config: SlimeConfig | None = None,
                      **overrides: Any) -> list[np.ndarray]:
        """Label maps for many images, `batch_size` UNet passes at a time (whole-image mode)."""
        learned = self._require_learned(learned)
        cfg = self._predict_config(learned, config, overrides)
        if cfg.tiles > 1:
            return [self.predict(im, learned, cfg) for im in images]
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            arrs = [as_image_array(im, _name(im, "image", start + i))
                    for i, im in enumerate(images[start:start + batch_size])]
            x = torch.cat([F.interpolate(_to_tensor(a)[None], size=(cfg.image_size,) * 2, mode="bilinear",
                                         align_corners=False, antialias=True) for a in arrs]).clamp(0, 1)
            scores = self._score_batch(x, learned, cfg)
            for a, s in zip(arrs, scores, strict=True):
                up = F.interpolate(s[None].float(), size=a.shape[:2], mode="bilinear", align_corners=False)
                out.append(up[0].argmax(0).cpu().numpy().astype(np.uint8))
        return out

    @staticmethod
    def _predict_config(learned: Learned, config: SlimeConfig | None,
                        overrides: dict[str, Any]) -> SlimeConfig:
        """Inference settings: the artifact's own (image size, WAS on/off) unless overridden."""
        cfg = config or SlimeConfig.from_dict(learned.config)
        cfg = cfg.replace(**overrides)
        return cfg
