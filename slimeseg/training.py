"""Learning the class embeddings (METHOD.md "What is optimized", "Losses").

- `TrainingJob`: what a fit is about and never changes during it (model, training and validation
  examples, classes, settings, the frozen prompt, the attention store).
- `TrainState`: everything a step changes (embeddings, Adam, RNG, pair order, step, history, loss
  scale, best validated embeddings), with `commit` / `rewind` (the RNG and order as of the last
  whole step), `snapshot` (an artifact), `save` and `restore` (resumable checkpoints, whose
  resume state `resume.ResumeState` captures, stores, checks and applies).
- `train_step`: one optimisation step (its speed settings, docs/speed.md: `view_pool` cached
  views, `gradients` local, `coarse_size` coarse-to-fine, `lr_schedule`); `validate`: the
  validation mIoU with the inference path;
  `fit`: the loop around them, with progress, checkpoints, Ctrl-C, best-step selection, early
  stopping, and the last good embeddings kept when the loss turns non-finite.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import inference, maps
from .artifact import Learned
from .attention import AttentionStore, capture
from .augment import augment, resize_pair
from .config import IGNORE, SlimeConfig
from .errors import InputError, TrainingError
from .examples import Example
from .losses import ce_loss, class_weights, ldm_loss, mse_loss
from .metrics import image_confusion, iou_from_confusion
from .models import LayerPlan, StableDiffusion
from .resume import ResumeState

# callback(step, total_steps, losses) -> False to stop early (keeping the result so far)
Callback = Callable[[int, int, dict[str, float]], bool | None]


def with_classes(trainable: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The (1, 77, D) sequence the UNet sees: `base` with rows 1..K-1 set to the class embeddings."""
    k = trainable.shape[0] + 1
    return torch.cat([base[:, :1], trainable[None], base[:, k:]], dim=1)


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


class LossScale:
    """Loss scaling for a float16 backward pass, where small gradients would flush to zero.

    The loss is multiplied by `scale` before backward and the gradient divided by it after; an
    update whose gradient overflowed is skipped. Dynamic: the scale halves on an overflow and
    doubles after `growth_interval` clean steps; static: it stays fixed.
    """

    def __init__(self, scale: float, dynamic: bool, growth_interval: int = 200) -> None:
        self.scale, self.dynamic, self.growth_interval = float(scale), dynamic, growth_interval
        self.clean = 0  # steps since the last overflow or growth

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.scale).backward()

    def unscale(self, param: torch.Tensor) -> bool:
        """Unscale `param.grad` in place; False (and, dynamic, a smaller scale) on an overflow."""
        if param.grad is None:
            return True
        param.grad.div_(self.scale)
        finite = bool(torch.isfinite(param.grad).all())
        if not finite:
            self.clean = 0
            if self.dynamic:
                self.scale = max(self.scale / 2, 1.0)
        else:
            self.clean += 1
            if self.dynamic and self.clean >= self.growth_interval:
                self.scale, self.clean = self.scale * 2, 0
        return finite

    @classmethod
    def for_run(cls, cfg: SlimeConfig, dtype: torch.dtype) -> LossScale | None:
        """The scaler a run needs: `auto` scales dynamically in float16 only."""
        mode = cfg.loss_scale
        if mode == "auto":
            mode = "dynamic" if dtype == torch.float16 else "off"
        return None if mode == "off" else cls(cfg.loss_scale_init, dynamic=mode == "dynamic")


def split_validation(examples: list[Example], cfg: SlimeConfig,
                     validation: list[Example] | None = None) -> tuple[list[Example], list[Example]]:
    """(training, validation) examples for a fit, by `cfg.validation` unless pairs are given.

    Validation runs only when it is used (`select_best` or `patience`). "auto" is the reference's
    rule: one example validates on itself; with k >= 2, the last one is held out of training.
    """
    if validation is not None:
        return examples, validation
    if not cfg.select_best and cfg.patience is None:
        return examples, []
    rule = cfg.validation
    if rule == "auto":
        rule = "train" if len(examples) == 1 else "holdout"
    if rule == "train":
        return examples, examples
    if len(examples) < 2:
        raise InputError("validation 'holdout' needs at least 2 examples (one is held out); "
                         "use validation 'train' for a single example")
    return examples[:-1], examples[-1:]


def check_init(init: Learned, classes: Sequence[str], sd: StableDiffusion,
               name: str | os.PathLike = "the embeddings to continue") -> None:
    """Refuse a warm start that cannot work: another model, or classes that are not the
    artifact's own (optionally followed by new ones). Errors name `name` and both sides."""
    init.check_fits(sd, name, hint=f"continue it with --model {init.model_id}")
    old, classes = list(init.classes), list(classes)
    if classes[:len(old)] != old:
        raise InputError(f"{name}: has classes [{', '.join(old)}]; a warm start needs the same "
                         f"classes, or those followed by new ones, not [{', '.join(classes)}]")


def warm_start(init: Learned, classes: list[str], base: torch.Tensor, sd: StableDiffusion
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen sequence (1, 77, D) and first embeddings (K-1, D) of a run continuing `init`.

    Same model, and the same classes or the same ones with new classes appended: old classes
    keep their learned embeddings, new ones start from the prompt as in a fresh fit. With the
    same classes the whole sequence is the parent's, so zero steps give back its embeddings.
    """
    check_init(init, classes, sd)
    old = list(init.classes)
    if classes == old:
        base = init.context[None].to(base)  # (1, 77, D)
    k = len(classes)
    start = base[0, 1:k].clone()  # (K-1, D)
    start[:len(old) - 1] = init.context[1:len(old)].to(start)
    return base, start


@dataclass
class TrainingJob:
    """The fixed part of a fit: model, examples, classes, settings and the frozen prompt."""

    sd: StableDiffusion
    examples: list[Example]  # what trains
    classes: list[str]
    cfg: SlimeConfig
    base: torch.Tensor  # (1, 77, D): "part" x K through CLIP; rows 1..K-1 start the embeddings
    uncond: torch.Tensor | None  # (1, 77, D) empty prompt, only with LDM guidance
    store: AttentionStore
    validation: list[Example] = field(default_factory=list)  # what picks the best step
    start: torch.Tensor | None = None  # (K-1, D) first embeddings (default: the prompt's rows)
    parent: Learned | None = None  # the artifact a warm start continues
    plan: LayerPlan | None = None  # the captured layers: the parent's own, else the model's
    # (example, input side) -> latents (1, 4, h, w) and mask (h, w), without augmentation
    latent_cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # input side -> per example: latents (N, 4, h, w) and masks (N, h, w) of its cached views
    # (`view_pool`), made on first use
    views: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    # self-training (fusion (c), `selftrain`): unlabelled images labelled by matching, IGNORE
    # where it was not confident; `pseudo_index` says which steps take them
    pseudo: list[Example] = field(default_factory=list)

    @classmethod
    def create(cls, sd: StableDiffusion, examples: list[Example], classes: Sequence[str],
               cfg: SlimeConfig, validation: list[Example] | None = None,
               init: Learned | None = None, pseudo: list[Example] | None = None) -> TrainingJob:
        """Encode the prompt once and set up the attention store for `cfg`; with `init`, start
        from its embeddings (`warm_start`); `pseudo`: pseudo-labelled pairs (self-training)."""
        examples, val = split_validation(examples, cfg, validation)
        k = len(classes)
        base = sd.encode_prompt(" ".join(["part"] * k)).to(sd.device)  # (1, 77, D)
        start = None
        if init is not None:
            base, start = warm_start(init, list(classes), base, sd)
        uncond = sd.encode_prompt("").to(sd.device) if cfg.ldm_guidance else None
        store = AttentionStore(k, cls.latent_hw(cfg), want_was=cfg.use_was and cfg.use_mse,
                               values_fn=maps.train_values)
        plan = init.layer_plan(sd) if init is not None else sd.plan
        return cls(sd, examples, list(classes), cfg, base, uncond, store, val, start, init, plan,
                   pseudo=list(pseudo or []))

    @staticmethod
    def latent_hw(cfg: SlimeConfig, size: int | None = None) -> tuple[int, int]:
        """The latent grid (h, w) of an input side `size` (default: image_size)."""
        size = size or cfg.image_size
        return size // 8, size // 8

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def total(self) -> int:
        """The fit's steps: the examples' (`total_steps`) and the pseudo steps among them."""
        return self._with_pseudo(self.cfg.total_steps(len(self.examples), warm_start=self.parent is not None))

    def _with_pseudo(self, steps: int) -> int:
        """`steps` of the examples and, with self-training, as many more as make
        `self_train_share` of all of them the pseudo-labelled images'."""
        if not self.pseudo or not self.cfg.self_train_share:
            return steps
        return math.ceil(steps / (1 - self.cfg.self_train_share))

    def lineage(self, steps: int) -> list[dict[str, Any]]:
        """The rounds that made these embeddings: the parent's, then this one."""
        parent = self.parent
        entry = {"parent": None if parent is None else parent.digest(),
                 "examples": [e.sha256 for e in self.examples],
                 "validation": [e.sha256 for e in self.validation], "steps": steps,
                 "classes": list(self.classes), "seed": self.cfg.seed,
                 "new_classes": [] if parent is None else self.classes[len(parent.classes):]}
        if self.pseudo:
            entry["unlabelled"] = [e.sha256 for e in self.pseudo]
        return [*(parent.lineage if parent is not None else []), entry]

    @property
    def validate_every(self) -> int:
        """Steps between validations (default: one epoch of the examples, and with self-training
        the pseudo steps among them)."""
        return self.cfg.validate_every or self._with_pseudo(len(self.examples))

    def validation_due(self, step: int) -> bool:
        return bool(self.validation) and step > 0 and (step % self.validate_every == 0 or step == self.total)


class TrainState:
    """What one step changes, and how to save it and go back to its last whole step."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        k = job.num_classes
        first = job.base[0, 1:k] if job.start is None else job.start
        self.trainable = first.clone().float().requires_grad_(True)  # (K-1, D)
        self.optimizer = torch.optim.Adam([self.trainable], lr=job.cfg.lr)
        self.gen = torch.Generator().manual_seed(job.cfg.seed)
        self.scaler = LossScale.for_run(job.cfg, job.sd.dtype)
        self.order: list[int] = []  # what is left of this epoch's pair order
        self.step = 0
        self.history: dict[str, Any] = {"loss": [], "steps_done": 0}
        if job.validation:
            self.history["validation"] = []  # [step, mIoU] pairs
        self.best: torch.Tensor | None = None  # (K-1, D): embeddings of the best validation so far
        self.best_score, self.best_step, self.since_best = -1.0, 0, 0
        self.commit()

    def commit(self) -> None:
        """Record the RNG and pair order as of now (a whole step): what `rewind` returns to."""
        self._committed = (self.gen.get_state(), list(self.order))

    def rewind(self) -> None:
        """Back to the last commit, so a step cut short (Ctrl-C, error) leaves no trace in them."""
        self.gen.set_state(self._committed[0])
        self.order[:] = self._committed[1]

    def record_validation(self, score: float) -> None:
        """Note a validation mIoU; the best so far (ties: the later, as the reference) is kept."""
        score = round(score, 6)
        self.history["validation"].append([self.step, score])
        improved = score > self.best_score
        if score >= self.best_score:
            self.best = self.trainable.detach().clone()
            self.best_score, self.best_step = score, self.step
        self.since_best = 0 if improved else self.since_best + 1

    def embeddings(self, final: bool = False) -> torch.Tensor:
        """The (K-1, D) embeddings to hand out: the best validated ones when selecting and final."""
        if final and self.job.cfg.select_best and self.best is not None:
            return self.best
        return self.trainable.detach()

    def snapshot(self, final: bool = False) -> Learned:
        """The embeddings as an artifact (`final`: the best validated ones when selecting), with
        resume state while steps remain, unless early stopping ended the run."""
        job = self.job
        context = with_classes(self.embeddings(final), job.base)[0].float().cpu()  # (77, D)
        history = {**self.history, "steps_done": self.step, "total_steps": job.total}
        if job.validation:
            history.update(best_step=self.best_step, best_validation=self.best_score,
                           validation_hashes=[e.sha256 for e in job.validation])
        learned = Learned(context=context, classes=list(job.classes), model_id=job.sd.model_id,
                          model_config=job.sd.model_config,
                          fingerprint=job.sd.fingerprint, config=job.cfg.to_dict(),
                          revision=job.sd.revision, image_hashes=[e.sha256 for e in job.examples],
                          uncond=None if job.uncond is None else job.uncond[0].cpu(), history=history,
                          lineage=job.lineage(self.step), layers=job.plan.to_dict())
        if self.step < job.total and not (final and "stopped_early_at" in self.history):
            learned.state = ResumeState.capture(self).to_tensors()  # steps remain: resumable
        return learned

    def save(self, path: str | os.PathLike) -> None:
        """Write `snapshot()` atomically (a resumable checkpoint while steps remain)."""
        self.snapshot().save(path)

    def restore(self, checkpoint: Learned) -> None:
        """Continue a checkpoint: its embeddings, Adam, RNG, order, loss scale, best step and
        history, after checking it was made by this same job (classes, images, model, settings)."""
        job = self.job
        if list(checkpoint.classes) != job.classes:
            raise InputError(f"checkpoint classes {checkpoint.classes} differ from {job.classes}")
        if checkpoint.image_hashes and checkpoint.image_hashes != [e.sha256 for e in job.examples]:
            raise InputError("checkpoint was made with other training images; cannot resume")
        checkpoint.check_fits(job.sd, "checkpoint", hint=f"resume it with --model {checkpoint.model_id}")
        if not checkpoint.state:
            raise InputError("this file holds finished embeddings, not a resumable checkpoint")
        unlabelled = checkpoint.lineage[-1].get("unlabelled", []) if checkpoint.lineage else []
        if unlabelled != [e.sha256 for e in job.pseudo]:
            raise InputError("checkpoint was made with other unlabelled images (self-training); "
                             "resume with the same --unlabelled as the interrupted run")
        parent = checkpoint.lineage[-1].get("parent") if checkpoint.lineage else None
        if parent != (None if job.parent is None else job.parent.digest()):
            raise InputError("checkpoint continues other learned embeddings (--init) than this run; "
                             "resume with the same --init as the interrupted run")
        saved = SlimeConfig.from_dict(checkpoint.config)
        if saved.replace(steps=job.cfg.steps, epochs=job.cfg.epochs) != job.cfg:
            raise InputError("checkpoint was made with other settings; resume with the same ones")
        k = job.num_classes
        resume = ResumeState.from_tensors(checkpoint.state, k, checkpoint.context.shape[-1])
        resume.apply(self, embeddings=checkpoint.context[1:k])
        self.history = copy.deepcopy(checkpoint.history)  # the checkpoint stays as it was
        self.history.setdefault("loss", [])
        if job.validation:
            self.history.setdefault("validation", [])
        self.commit()


VIEW_BATCH = 4  # cached views per VAE encode (fixed: the batch size could change the last bits)


def _low_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A mask (S, S) at the latent resolution, nearest: (h, w) long."""
    return F.interpolate(mask[None, None].float(), size=hw, mode="nearest")[0, 0].long()


def _present(ex: Example) -> list[int]:
    """The foreground classes of an example's mask (what the crops' focus cycles through)."""
    return [c for c in torch.unique(ex.mask).tolist() if 0 < c != IGNORE]


def step_size(cfg: SlimeConfig, step: int, total: int) -> int:
    """The input side of step `step` (0-based) of `total`: coarse_size for the first
    round(coarse_share x total) steps when coarse-to-fine is on, image_size otherwise."""
    if cfg.coarse_size and step < round(cfg.coarse_share * total):
        return cfg.coarse_size
    return cfg.image_size


def view_pool(job: TrainingJob, size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The cached views at input side `size` (default: image_size) of every example
    (`SlimeConfig.view_pool` of each): latents (N, 4, h, w) and masks (N, h, w), made once per job.

    The views are drawn with their own generator seeded by `cfg.seed` and the side (not the
    fit's), so the pool is a function of the examples and the settings alone: a resumed fit
    rebuilds the same one, and the fit's random stream stays the per-step picks, noise and
    timesteps.
    """
    size = size or job.cfg.image_size
    if size not in job.views:
        sd, hw = job.sd, job.latent_hw(job.cfg, size)
        cfg = job.cfg.replace(image_size=size, coarse_size=0)  # augment() draws at image_size
        gen = torch.Generator().manual_seed(cfg.seed + 0x5EED + size)
        views = job.views[size] = []
        for ex in job.examples:
            # 1. draw the views (the crop's focus class cycles, as per step) and their masks
            present = _present(ex)
            drawn = [augment(ex.image, ex.mask, cfg, gen, present[j % len(present)] if present else None)
                     for j in range(cfg.view_pool)]
            masks = torch.stack([_low_mask(m, hw) for _, m in drawn])  # (N, h, w)
            # 2. encode them VIEW_BATCH at a time
            latents = torch.cat([sd.encode_image(torch.stack([img for img, _ in drawn[i:i + VIEW_BATCH]]))
                                 for i in range(0, len(drawn), VIEW_BATCH)])  # (N, 4, h, w)
            views.append((latents, masks))
    return job.views[size]


def _at_side(job: TrainingJob, size: int) -> SlimeConfig:
    """The settings a pair is drawn with at input side `size` (augment() draws at image_size)."""
    return job.cfg if size == job.cfg.image_size else job.cfg.replace(image_size=size, coarse_size=0)


def _view(job: TrainingJob, state: TrainState, ex: Example, key: int, size: int,
          focus: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (1, 4, h, w) and mask (h, w) of `ex` at input side `size`: a fresh augmented view
    (its crop keeping class `focus`), or, with augmentation off, resized once and cached under
    (`key`, size)."""
    sd, cfg = job.sd, _at_side(job, size)
    hw = job.latent_hw(cfg)
    if cfg.augment:
        img, msk = augment(ex.image, ex.mask, cfg, state.gen, focus)
        return sd.encode_image(img[None]), _low_mask(msk, hw)
    if (key, size) not in job.latent_cache:
        img, msk = resize_pair(ex.image, ex.mask, size)
        job.latent_cache[key, size] = (sd.encode_image(img[None]), _low_mask(msk, hw))
    return job.latent_cache[key, size]


def _training_pair(job: TrainingJob, state: TrainState, idx: int, size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (1, 4, h, w) and mask (h, w) of example `idx` at input side `size` for this step:
    augmented (one of the cached `view_pool` picked by the fit's generator, or a fresh view whose
    crop's focus cycles with the step), or resized once and cached when augmentation is off."""
    cfg, ex = _at_side(job, size), job.examples[idx]
    if cfg.augment and cfg.view_pool:
        latents, masks = view_pool(job, size)[idx]
        j = int(torch.randint(cfg.view_pool, (), generator=state.gen))
        return latents[j:j + 1], masks[j]
    present = _present(ex) if cfg.augment else []
    return _view(job, state, ex, idx, size, present[state.step % len(present)] if present else None)


def pseudo_index(job: TrainingJob, step: int) -> int | None:
    """Which pseudo-labelled pair step `step` (0-based) trains on, or None for an example's step.
    The pseudo steps are spread evenly (`self_train_share` of them) and go through the pairs in a
    fresh seeded order each round: a function of the step alone, so a resumed fit repeats it.
    (With local gradients and an even `full_every` at share 0.5 every full step is a pseudo one.)"""
    share = job.cfg.self_train_share
    if not job.pseudo or not share or math.floor((step + 1) * share) == math.floor(step * share):
        return None
    rnd, pos = divmod(math.floor(step * share), len(job.pseudo))  # pseudo steps before this one
    order = torch.randperm(len(job.pseudo), generator=torch.Generator().manual_seed(job.cfg.seed + 0xC0DE + rnd))
    return int(order[pos])


def _pseudo_pair(job: TrainingJob, state: TrainState, j: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (1, 4, h, w) and mask (h, w) of pseudo-labelled pair `j` at input side `size`: a
    fresh augmented view, its crop's focus drawn by the fit's generator (each pair is seen a few
    times, so no view pool), or resized once and cached (under key -1 - j)."""
    ex = job.pseudo[j]
    present = _present(ex) if job.cfg.augment else []
    focus = present[int(torch.randint(len(present), (), generator=state.gen))] if present else None
    return _view(job, state, ex, -1 - j, size, focus)


def step_lr(cfg: SlimeConfig, step: int, total: int) -> float:
    """The learning rate of step `step` (0-based) of `total` (`lr_schedule`; a function of the
    step alone, so a resumed fit continues the schedule exactly)."""
    if cfg.lr_schedule == "cosine" and total > 0:
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    return cfg.lr


def full_step(cfg: SlimeConfig, step: int) -> bool:
    """Whether step `step` (0-based) backpropagates through the whole UNet: always with
    `gradients` full; with local ones, every `full_every`-th step (the N-th, 2N-th, ...)."""
    return cfg.gradients == "full" or (cfg.full_every > 0 and (step + 1) % cfg.full_every == 0)


def train_step(job: TrainingJob, state: TrainState) -> dict[str, float]:
    """One optimisation step on one training pair; returns the logged losses.

    Expects the capture processors of `job.store` installed on the UNet (`fit` does that once).
    Raises TrainingError, with the embeddings untouched, if the loss or the update is not finite.
    """
    sd, cfg, store, k = job.sd, job.cfg, job.store, job.num_classes
    size = step_size(cfg, state.step, job.total)  # coarse-to-fine: the first steps smaller
    hw = store.latent_hw = job.latent_hw(cfg, size)
    # 1. the next training pair: a fresh seeded permutation every epoch (or, self-training, a
    # pseudo-labelled image on its steps)
    pseudo = pseudo_index(job, state.step)
    if pseudo is None and not state.order:
        state.order = torch.randperm(len(job.examples), generator=state.gen).tolist()
    # 2. augment (or just resize) and encode to latents (cached views: pick one)
    if pseudo is None:
        latents, mask_lo = _training_pair(job, state, state.order.pop(0), size)
    else:
        latents, mask_lo = _pseudo_pair(job, state, pseudo, size)
    mask_lo = mask_lo.to(sd.device)  # (h, w)
    # 3. noise at a random t in [t_min, t_max] and run the UNet with capture (local gradients:
    # without a graph but for the captured layers' class-token parts; no diffusion loss, so no
    # unconditional half either)
    t = torch.randint(cfg.t_min, cfg.t_max + 1, (1,), generator=state.gen).to(sd.device)
    noise = torch.randn(latents.shape, generator=state.gen)
    full = full_step(cfg, state.step)
    context = with_classes(state.trainable, job.base).to(sd.dtype)  # (1, 77, D)
    store.reset()
    store.grad_mode = "full" if full else "local"
    with contextlib.nullcontext() if full else torch.no_grad():
        if job.uncond is not None and full:  # guidance inside L_LDM: uncond + cond in one batch
            pred = sd.denoise(latents.repeat(2, 1, 1, 1), noise.repeat(2, 1, 1, 1), t.repeat(2),
                              torch.cat([job.uncond.to(sd.dtype), context]))
            pred = pred[:1] + cfg.ldm_guidance * (pred[1:] - pred[:1])
        else:
            pred = sd.denoise(latents, noise, t, context)
    # 4. the three losses on the conditional half
    losses: dict[str, torch.Tensor] = {}
    scores = maps.class_scores(store, hw)[-1]  # (K, h, w)
    if cfg.use_ce:
        losses["ce"] = ce_loss(scores, mask_lo, class_weights(mask_lo, k))
    if store.want_was:
        losses["mse"] = cfg.alpha * mse_loss(store.was()[-1], mask_lo)
    if cfg.use_ldm and cfg.beta and full:
        target = sd.ldm_target(latents, noise.to(latents), t)
        losses["ldm"] = cfg.beta * ldm_loss(pred, target)
    if not losses:
        raise TrainingError("every loss term is switched off; nothing to optimise")
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise TrainingError(f"loss became {loss.item()} at step {state.step + 1}; stopped, "
                            "keeping the last good embeddings (try a lower --lr)")
    # 5. backward (loss-scaled in float16), then update the K-1 class embeddings (undone if it
    # made them non-finite; skipped if a scaled gradient overflowed); Ctrl-C waits until the step
    # is whole
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.backward(loss)
    else:
        loss.backward()
    with _sigint_deferred():
        update = state.scaler is None or state.scaler.unscale(state.trainable)
        if update:
            before = state.trainable.detach().clone()
            for group in state.optimizer.param_groups:
                group["lr"] = step_lr(cfg, state.step, job.total)
            state.optimizer.step()
            if not torch.isfinite(state.trainable).all():
                with torch.no_grad():
                    state.trainable.copy_(before)
                raise TrainingError(f"embeddings became non-finite at step {state.step + 1}; stopped, "
                                    "keeping the last good embeddings (try a lower --lr)")
        else:
            state.history["skipped_steps"] = state.history.get("skipped_steps", 0) + 1
        state.step += 1
        logged = {n: round(float(v.detach()), 5) for n, v in losses.items()}
        logged["loss"] = round(float(loss.detach()), 5)
        state.history["loss"].append(logged["loss"])
        state.commit()
    return logged


def validate(job: TrainingJob, state: TrainState) -> float:
    """The reference's validation mIoU of the current embeddings: per validation image, the mean
    IoU over the classes of its mask, averaged over images (predicted with the inference path)."""
    k = job.num_classes
    learned = Learned(context=with_classes(state.trainable.detach(), job.base)[0].float().cpu(),
                      classes=list(job.classes), model_id=job.sd.model_id,
                      model_config=job.sd.model_config,
                      fingerprint=job.sd.fingerprint, config=job.cfg.to_dict(),
                      layers=job.plan.to_dict())
    images = [(ex.image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for ex in job.validation]
    # what the steps change: the embeddings' own maps, read as the paper reads them
    cfg = job.cfg.replace(method="slime", upsample="bilinear")
    preds = inference.predict_labels(job.sd, images, learned, cfg, batch_size=4)
    scores = []
    for pred, ex in zip(preds, job.validation, strict=True):
        matrix = image_confusion(pred, ex.mask.numpy().astype(np.uint8), k, None)
        present = matrix.sum(axis=1) > 0
        scores.append(float(iou_from_confusion(matrix)[present].mean()))
    return float(np.mean(scores))


def _validate_if_due(job: TrainingJob, state: TrainState) -> None:
    """Run the validation the current step is due for, once (Ctrl-C waits until it is recorded)."""
    done = state.history.get("validation") or [[-1, 0.0]]
    if job.validation_due(state.step) and done[-1][0] != state.step:
        with _sigint_deferred():
            state.record_validation(validate(job, state))


def fit(sd: StableDiffusion, examples: list[Example], classes: Sequence[str], cfg: SlimeConfig, *,
        progress: bool = True, callback: Callback | None = None,
        checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int = 0,
        resume: Learned | None = None, validation: list[Example] | None = None,
        init: Learned | None = None, pseudo: list[Example] | None = None) -> Learned:
    """Learn one embedding per foreground class from validated examples; returns the artifact.
    `pseudo`: pseudo-labelled pairs for self-training (`selftrain.pseudo_examples`).

    With `select_best` (or `patience`), the embeddings are validated every `validate_every` steps
    on `validation` (default: `split_validation`'s rule) and the best ones are returned (early
    stopping after `patience` validations without improvement). With `checkpoint_every` N > 0, a
    resumable checkpoint is written atomically to `checkpoint_path` every N steps and on Ctrl-C;
    `resume` continues one to the same result as an uninterrupted run. If the loss or embeddings
    turn non-finite, the last good embeddings are saved to `checkpoint_path` (when given) and
    carried by the TrainingError. `init` continues learned embeddings (a warm start: same model,
    the same classes or more; `refine_steps` steps unless `steps` is set); the artifact's lineage
    names its parent and the examples of every round.
    """
    # 0. the frozen prompt, the attention store and the starting state
    job = TrainingJob.create(sd, examples, classes, cfg, validation, init, pseudo)
    state = TrainState(job)
    if resume is not None:
        state.restore(resume)
    bar = tqdm(total=job.total, initial=state.step, disable=not progress, desc="fit", unit="step",
               dynamic_ncols=True)
    try:
        # the capture processors stay installed for all steps (per-step installs cost host time)
        with capture(sd.unet, job.plan.roles(), job.store):
            _validate_if_due(job, state)  # a resumed run may stop right before its validation
            while state.step < job.total:
                # 1.-5. one step
                logged = train_step(job, state)
                bar.set_postfix(loss=f"{logged['loss']:.4f}", refresh=False)
                bar.update(1)
                # 6. validation: the best embeddings so far, and early stopping
                _validate_if_due(job, state)
                if cfg.patience is not None and state.since_best >= cfg.patience:
                    state.history["stopped_early_at"] = state.step
                    break
                # 7. periodic checkpoint, then let the caller stop us
                if checkpoint_path and checkpoint_every and state.step % checkpoint_every == 0 \
                        and state.step < job.total:
                    state.save(checkpoint_path)
                if callback is not None and callback(state.step, job.total, logged) is False:
                    break
    except KeyboardInterrupt:
        if checkpoint_path and checkpoint_every:
            state.rewind()
            state.save(checkpoint_path)
        raise
    except TrainingError as exc:
        state.rewind()
        good = state.snapshot()  # the embeddings from before the failing update
        message = str(exc)
        if checkpoint_path and state.step:
            good.save(checkpoint_path)
            message += f"; the last good embeddings ({state.step} steps) are saved in {checkpoint_path}"
        raise TrainingError(message, learned=good) from None
    finally:
        bar.close()
    return state.snapshot(final=True)
