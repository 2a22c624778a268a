"""Applying learned embeddings to images (METHOD.md "Inference").

An image is resized to the model's input (its aspect ratio kept, about image_size^2 pixels, or
squashed to the square: `input_hw`), encoded, noised at t_test and run once through the UNet with
attention capture; the captured maps give per-class scores at the latent resolution
(`score_batch`), optionally over overlapping tiles (`score_image`), which are upsampled to the
image's own size, bilinearly or along its edges (`upsampled`, `predict_scores`), and argmax-ed
into a label map (`labels_for`, `predict_labels`).

At native resolution (`resolution` "native" or a scale) overlapping image_size windows run over
the image at that scale (`score_windows`), their scores blended with smooth weights at the latent
resolution and combined with the whole-image pass (`combine`); the per-pixel argmax is taken in
bands of rows (`labels_at`), so memory stays bounded whatever the image's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from . import maps, matching, upsample
from .artifact import Learned
from .attention import AttentionStore, capture
from .augment import bank_view
from .config import SlimeConfig
from .errors import InputError
from .examples import Example, image_tensor
from .matching import FeatureCapture, MatchBank, soft_targets
from .models import StableDiffusion, native_bfloat16

MAX_ASPECT = 4  # the model input's long side is at most 4x its short side (longer strips are squeezed)
BAND_ELEMENTS = 1 << 24  # the final upsampling + argmax handles at most ~16 M scores (64 MB) at once


def input_hw(hw: tuple[int, int], cfg: SlimeConfig) -> tuple[int, int]:
    """The model input's (height, width) for an image of size `hw`: image_size square (squash), or
    the image's aspect ratio at about image_size^2 pixels, each side a multiple of 64 (keep)."""
    s = cfg.image_size
    if cfg.aspect == "squash" or hw[0] == hw[1]:
        return s, s
    ratio = min(max(hw[0] / hw[1], 1 / MAX_ASPECT), MAX_ASPECT)
    h = max(64, round(s * math.sqrt(ratio) / 64) * 64)
    w = max(64, round(s / math.sqrt(ratio) / 64) * 64)
    return h, w


def model_input(image: np.ndarray, cfg: SlimeConfig) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) in [0, 1] at the model's input size (`input_hw`, antialiased)."""
    x = F.interpolate(image_tensor(image)[None], size=input_hw(image.shape[:2], cfg), mode="bilinear",
                      align_corners=False, antialias=True)
    return x[0].clamp(0, 1)


def precision(sd: StableDiffusion, cfg: SlimeConfig) -> tuple[torch.dtype | None, bool]:
    """The inference pass's (encoder dtype or None for the model's, UNet under bfloat16 autocast),
    `cfg.encoder_dtype` and `cfg.autocast` with "auto" resolved: bfloat16 for a float32 model on a
    device with bfloat16 units (`models.native_bfloat16`), the model's own precision elsewhere."""
    auto = sd.dtype == torch.float32 and native_bfloat16(sd.device)
    encoder = cfg.encoder_dtype == "bfloat16" or (cfg.encoder_dtype == "auto" and auto)
    cast = sd.dtype != torch.bfloat16 and (cfg.autocast == "bfloat16" or (cfg.autocast == "auto" and auto))
    return (torch.bfloat16 if encoder else None), cast


def _capture(sd: StableDiffusion, batch: torch.Tensor, learned: Learned, cfg: SlimeConfig,
             store: AttentionStore | None, features: FeatureCapture | None = None,
             context: torch.Tensor | None = None, repeat: int = 1, draw: int = 0,
             latents: torch.Tensor | None = None, times: Sequence[int] | None = None) -> AttentionStore | None:
    """Encode a (B, 3, h, w) batch, noise it at its timestep (one noise for all) and run the UNet once
    with attention capture into `store` and, given `features`, the up blocks' outputs kept.
    `repeat`: the UNet runs on the batch `repeat` times over (R*B; each image encoded once).
    `context`: the text conditioning per image (R*B, 77, D) (default: the artifact's, for all).
    `draw`: which noise draw (0: the seed's own; `noise_draws`); `latents`: the batch already
    encoded (B, 4, h/8, w/8), so further draws skip the VAE; `times`: the timestep of each of
    the R runs (default: t_test for all)."""
    encoder, cast = precision(sd, cfg)
    if latents is None:
        latents = sd.encode_image(batch, encoder)  # (B, 4, h/8, w/8)
    if repeat > 1:
        latents = latents.repeat(repeat, 1, 1, 1)  # (R*B, 4, h/8, w/8)
    gen = torch.Generator().manual_seed(cfg.seed + DRAW_SEED_STEP * draw)
    noise = torch.randn(latents.shape[1:], generator=gen).expand_as(latents)  # one noise for all
    b = latents.shape[0] // repeat
    t = torch.tensor(list(times or [cfg.t_test] * repeat), dtype=torch.long).repeat_interleave(b).to(sd.device)
    if context is None:
        context = learned.context[None].expand(latents.shape[0], -1, -1)  # (B, 77, D)
    with contextlib.ExitStack() as stack:
        if store is not None:
            stack.enter_context(capture(sd.unet, learned.layer_plan(sd).roles(), store))
        if features is not None:
            stack.enter_context(features.hooked(sd.unet))
        if cast:  # a float32 model's products and convolutions in bfloat16 (`precision`)
            stack.enter_context(torch.autocast(sd.device.type, dtype=torch.bfloat16))
        sd.denoise(latents, noise, t, context.to(sd.device))
    return store


# seeds of the noise draws after the first: cfg.seed + DRAW_SEED_STEP * draw
DRAW_SEED_STEP = 7919


def match_context(sd: StableDiffusion, learned: Learned) -> torch.Tensor:
    """The conditioning matching reads features under: the empty prompt (77, D), kept in the
    artifact (`uncond`; a matching-only artifact's context is it). Under learned embeddings the
    features fused worse than matching alone did (lab, 1-shot: -6.3 car, -4.2 face; methods.md)."""
    if not learned.trained:
        return learned.context
    if learned.uncond is None:  # an artifact from before matching: encode it once
        learned.uncond = sd.encode_prompt("")[0].float().cpu()
    return learned.uncond


def _slime_store(learned: Learned, cfg: SlimeConfig, hw: tuple[int, int]) -> AttentionStore:
    reference = cfg.normalization in ("reference", "reference_exact")  # (exact: per crop, not here)
    return AttentionStore(learned.num_classes, hw, want_was=cfg.use_was, want_probs=reference,
                          values_fn=maps.reference_values if reference else maps.train_values)


def _slime_scores(store: AttentionStore, cfg: SlimeConfig, hw: tuple[int, int]) -> torch.Tensor:
    """SLiMe's class maps from a captured pass: (B, K, h, w)."""
    if cfg.normalization in ("reference", "reference_exact"):
        probs = maps.class_probs(store, hw)  # (B, K, h, w)
        return maps.reference_rescale(store.was(), probs) if cfg.use_was else probs
    return store.was() if cfg.use_was else maps.class_scores(store, hw).softmax(1)


def _one_pass(sd: StableDiffusion, batch: torch.Tensor, learned: Learned, cfg: SlimeConfig
              ) -> tuple[torch.Tensor | None, torch.Tensor | None, AttentionStore | None]:
    """One UNet pass of a (B, 3, h, w) batch: SLiMe's scores (B, K, h/8, w/8) unless the method is
    matching alone (the learned context), and the up blocks' features (B, C, h/8, w/8) unless it
    is SLiMe alone (the empty prompt: `match_context`). Fused, the batch runs twice in one UNet
    batch (2B), once under each context. With `match_spread` the store keeping the self-attention
    layers' queries and keys comes back too (`maps.self_spread`), else None."""
    b, hw = batch.shape[0], (batch.shape[-2] // 8, batch.shape[-1] // 8)
    slime, matched = cfg.method != "match", cfg.method != "slime"
    spread = matched and cfg.match_spread > 0
    contexts = ([learned.context] * b if slime else []) + ([match_context(sd, learned)] * b if matched else [])
    scores = features = store = None
    latents = (sd.encode_image(batch, precision(sd, cfg)[0])  # (B, 4, h/8, w/8), once for every draw
               if cfg.noise_draws > 1 else None)
    for draw in range(cfg.noise_draws):  # each draw its own noise; maps and features averaged
        store = (_slime_store(learned, cfg, hw) if slime
                 else AttentionStore(learned.num_classes, hw, want_was=False) if spread else None)
        if store is not None:
            store.keep_self = spread
        feats = FeatureCapture(cfg.feature_blocks()) if matched else None
        _capture(sd, batch, learned, cfg, store, feats, torch.stack(contexts),  # (B or 2B, 77, D)
                 repeat=slime + matched, draw=draw, latents=latents,  # fused: the batch runs twice
                 times=[cfg.t_test] * slime + [cfg.match_timestep()] * matched)
        s = _slime_scores(store, cfg, hw)[:b] / cfg.noise_draws if slime else None  # (B, K, h, w)
        f = feats.features(hw)[-b:] / cfg.noise_draws if feats is not None else None  # (B, C, h, w)
        scores = s if scores is None or s is None else scores + s
        features = f if features is None or f is None else features + f
    # the spread reads the last draw's self-attention (spread and draws were measured apart)
    return scores, features, store if spread else None


def match_bank(sd: StableDiffusion, learned: Learned, cfg: SlimeConfig) -> MatchBank:
    """The examples' cells for matching, from the artifact's stored examples (and their mirror
    images with `match_mirror`), through the matching pass (the empty prompt) as the images to
    segment. Built once per model and setting, and kept with the artifact in memory."""
    key = (sd.fingerprint, str(sd.device), str(sd.dtype), cfg.match_timestep(), cfg.seed, cfg.noise_draws, cfg.match_blocks, cfg.match_mirror,
           cfg.match_cells, cfg.match_views, cfg.match_hue, precision(sd, cfg))
    cache = learned.__dict__.setdefault("_match_banks", {})
    if key not in cache:
        if not learned.examples:
            raise InputError("these embeddings hold no examples to match (made by an older "
                             "slimeseg); use --method slime, or train them again")
        feats, targets = [], []
        gen = torch.Generator().manual_seed(cfg.seed)
        for image, mask in learned.examples:  # (3, h, w) and (h, w) uint8, the model input's size
            image = image.float().div(255)
            views = [(image, mask), (image.flip(-1), mask.flip(-1))][:2 if cfg.match_mirror else 1]
            views += [bank_view(image, mask, gen, BANK_ZOOM, cfg.match_hue) for _ in range(cfg.match_views)]
            for size in dict.fromkeys(tuple(v[1].shape) for v in views):  # one UNet batch per size
                group = [v for v in views if tuple(v[1].shape) == size]
                x = torch.stack([v[0] for v in group]).to(sd.device)  # (V, 3, h, w)
                _, f, _ = _one_pass(sd, x, learned, cfg.replace(method="match", match_spread=0.0))  # (V, C, h/8, w/8)
                feats += list(f.cpu())
                targets += [soft_targets(m, learned.num_classes, f.shape[-2:]) for _, m in group]
        cache[key] = MatchBank.build(feats, targets, cfg.match_cells, cfg.seed)
    return cache[key]


# the zoom range of the examples' rescaled copies in the matching bank (`match_views`)
BANK_ZOOM = (0.5, 2.0)


def example_views(examples: Sequence[Example], cfg: SlimeConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What an artifact keeps for matching: each example at its model input's size (`input_hw`),
    the image as (3, h, w) uint8 (antialiased), the mask as (h, w) uint8 (nearest), so its size
    is bounded by image_size whatever the photo's."""
    out = []
    for ex in examples:
        hw = input_hw(tuple(ex.image.shape[-2:]), cfg)
        image = F.interpolate(ex.image[None], size=hw, mode="bilinear", align_corners=False,
                              antialias=True)[0]  # (3, h, w)
        mask = F.interpolate(ex.mask[None, None].float(), size=hw, mode="nearest")[0, 0]  # (h, w)
        out.append((image.clamp(0, 1).mul(255).round().to(torch.uint8), mask.to(torch.uint8)))
    return out


# The example check below which `train` warns: on the lab (unseen worlds, 20 examples per kind)
# the 3 of 40 examples under it had the 3 lowest held-out mIoUs (docs/methods.md; chosen there).
POOR_EXAMPLE = 0.47
# The cycle check (`Segmenter.check_examples` with images): how many of the images it sends back,
# and the value below which `train --check-image` and the app warn. Chosen on the lab's examples
# 0-19 of each kind (unseen worlds) as the lowest value flagging the worst example of each kind
# there (6 of the 7 flagged are among the 5 lowest held-out mIoUs of their kind); on examples
# 20-39, not seen in choosing it, 3 of the 4 it flags are among the 3 lowest (docs/methods.md)
CYCLE_IMAGES = 10
POOR_CYCLE = 0.46


def present_miou(pred: np.ndarray, mask: np.ndarray, k: int) -> float:
    """mIoU of a label map (h, w) over the classes present in the true mask (h, w)."""
    from .metrics import image_confusion, iou_from_confusion

    matrix = image_confusion(pred, mask.astype(np.uint8), k, None)
    return float(iou_from_confusion(matrix)[matrix.sum(axis=1) > 0].mean())


@torch.no_grad()
def example_check(sd: StableDiffusion, learned: Learned, cfg: SlimeConfig, views: int = 4,
                  copy: Callable[[torch.Tensor, torch.Tensor, torch.Generator],
                                 tuple[torch.Tensor, torch.Tensor]] | None = None) -> float:
    """How well the examples' own features re-find their parts: matching with the stored
    examples as the bank labels `views` augmented (mirrored, cropped, rotated) copies of each
    example, scored by mIoU over the classes in their masks. Computed from the examples alone,
    in `views` x examples UNet passes: a low value warns that new images may segment poorly.
    `copy(image (3, h, w) in [0, 1], mask (h, w), generator) -> (image, mask)` makes the copies
    another way (benchmarks/warning_variants.py ranks other kinds of copies)."""
    from .augment import augment

    # as measured when POOR_EXAMPLE was chosen: plain votes (no spread, no small-part boost)
    check = cfg.replace(method="match", tta_flip=False, match_mirror=False, match_spread=0.0,
                        match_small=0.0)
    k = learned.num_classes
    bank = match_bank(sd, learned, check)  # the examples alone: their mirror images are tested
    aug_cfg = check.replace(flip_p=1.0, crop_p=1.0, rotate_p=1.0, blur_p=0.0)

    def augmented(image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        side = max(64, min(image.shape[-2:]) // 64 * 64)
        return augment(image, mask, aug_cfg.replace(image_size=side), gen)

    copy = copy or augmented
    gen = torch.Generator().manual_seed(cfg.seed)
    scores = []
    for image, mask in learned.examples:
        for _ in range(views):
            x, m = copy(image.float().div(255), mask, gen)
            _, f, _ = _one_pass(sd, x[None].to(sd.device), learned, check)
            votes = matching.vote(bank, f.cpu(), check.match_k, check.match_temperature)[0]
            scores.append(present_miou(labels_at(votes, tuple(m.shape)), m.numpy(), k))
    return float(np.mean(scores))


@torch.no_grad()
def cycle_check(sd: StableDiffusion, learned: Learned, cfg: SlimeConfig, images: Sequence[np.ndarray],
                labels: Sequence[np.ndarray]) -> float:
    """The cycle check: each (H, W, 3) image with its (H, W) labels (matching's, from the
    examples) alone as the bank labels every stored example back by matching, scored by mIoU
    over the classes in the example's mask, averaged. The examples' own features are computed
    once; per image, one UNet batch (it and its mirror) builds its bank. Equal to segmenting the
    examples with `Segmenter.match([image], [labels])` (benchmarks/warning_variants.py)."""
    from .examples import prepare_examples

    cfg = cfg.replace(method="match", tta_flip=False, match_spread=0.0)  # as measured
    k = learned.num_classes
    targets = []  # the examples: (H, W, 3) uint8, (H, W) mask, (1, C, h, w) features
    for image, mask in learned.examples:
        arr = image.permute(1, 2, 0).numpy()  # (H, W, 3) uint8, the model input's size
        _, feats, _ = _one_pass(sd, model_input(arr, cfg)[None].to(sd.device), learned, cfg)
        targets.append((arr, mask.numpy(), feats))
    scores = []
    for image, lab in zip(images, labels, strict=True):  # 1. each image with its labels: a bank
        with warnings.catch_warnings():  # a class the image lacks is expected here, not news
            warnings.simplefilter("ignore", UserWarning)
            views = example_views(prepare_examples([image], [np.asarray(lab)], learned.classes), cfg)
        back = dataclasses.replace(learned, examples=views)
        bank = match_bank(sd, back, cfg)
        for arr, mask, feats in targets:  # 2. ... labels each example back, scored on its mask
            votes = small_part_boost(match_votes(bank, feats, cfg), back, cfg)  # (1, K, h, w)
            scores.append(present_miou(labels_for(votes[0], arr, cfg), mask, k))
    return float(np.mean(scores))


def match_votes(bank: MatchBank, features: torch.Tensor, cfg: SlimeConfig) -> torch.Tensor:
    """Matching's class distributions (B, K, h, w) for (B, C, h, w) features, by the settings'
    k, temperature and similarity dtype (`matching.vote`)."""
    return matching.vote(bank, features, cfg.match_k, cfg.match_temperature, getattr(torch, cfg.match_dtype))


def fuse(slime: torch.Tensor, votes: torch.Tensor, cfg: SlimeConfig) -> torch.Tensor:
    """SLiMe's class distributions and matching's, (B, K, h, w) each, in one: `mean` weighs
    matching by `fuse_weight`; `confidence` trusts each source, pixel by pixel, by how certain it
    is there (1 - its normalised entropy), `fuse_weight` scaling matching's side."""
    slime = slime.clamp_min(0)  # WAS sums to ~1 over K; the reference's rescaled maps do not
    slime = slime / slime.sum(1, keepdim=True).clamp_min(1e-8)
    if cfg.fuse_rule == "mean":
        return cfg.fuse_weight * votes + (1 - cfg.fuse_weight) * slime
    w_m = cfg.fuse_weight * matching.confidence(votes) + 1e-4  # (B, 1, h, w)
    w_s = (1 - cfg.fuse_weight) * matching.confidence(slime) + 1e-4  # (B, 1, h, w)
    return (w_m * votes + w_s * slime) / (w_m + w_s)


def class_cells(learned: Learned) -> torch.Tensor:
    """Each class's mean area in the stored examples, in latent cells (8 x 8 px of the model
    input): (K,) float32 (zeros without stored examples). Kept with the artifact in memory."""
    cells = learned.__dict__.get("_class_cells")
    if cells is None:
        counts = torch.zeros(learned.num_classes)
        for _, mask in learned.examples:  # (h, w) uint8 at the model input's size
            counts += torch.bincount(mask.flatten().long(), minlength=learned.num_classes)[:learned.num_classes]
        cells = counts / 64 / max(len(learned.examples), 1)  # (K,)
        learned.__dict__["_class_cells"] = cells
    return cells


def small_part_boost(scores: torch.Tensor, learned: Learned, cfg: SlimeConfig) -> torch.Tensor:
    """(B, K, h, w) class distributions with the small classes' raised (`match_small`): a class of
    c < match_small_cells cells in the examples is multiplied by (match_small_cells / c) ^
    match_small, then each cell renormalised. A class absent from the examples is left as it is.
    Why: a part smaller than a few latent cells never holds most of a cell, so the votes of its
    cells, class fractions, never make it lead (lab: face eye 0.4 % IoU, car light 0.0)."""
    if cfg.match_small <= 0:
        return scores
    cells = class_cells(learned).to(scores.device)  # (K,)
    gain = torch.where(cells > 0, (cfg.match_small_cells / cells.clamp_min(1e-6)).clamp_min(1.0),
                       torch.ones_like(cells)) ** cfg.match_small  # (K,)
    boosted = scores * gain[None, :, None, None]  # (B, K, h, w)
    return boosted / boosted.sum(1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def score_batch(sd: StableDiffusion, batch: torch.Tensor, learned: Learned,
                cfg: SlimeConfig) -> torch.Tensor:
    """Per-class scores at the latent resolution for a (B, 3, h, w) batch: (B, K, h/8, w/8).

    By `method`: SLiMe's maps, matching's votes, or the two fused (the last two with the small
    parts raised: `small_part_boost`); with `tta_flip` also of the mirrored batch (in the same
    UNet batch), mirrored back and averaged.
    """
    if not learned.trained and cfg.method != "match":
        raise InputError(f"these are matching data without learned embeddings: method "
                         f"{cfg.method!r} needs a trained artifact; use method 'match'")
    b = batch.shape[0]
    if cfg.tta_flip:
        batch = torch.cat([batch, batch.flip(-1)])  # (2B, 3, h, w)
    slime, feats, store = _one_pass(sd, batch, learned, cfg)
    if feats is None:
        scores = slime
    else:
        votes = match_votes(match_bank(sd, learned, cfg), feats, cfg)  # (B, K, h, w)
        if store is not None:  # (b): the votes spread by the pass's own self-attention, mixed in
            votes = (1 - cfg.match_spread) * votes + cfg.match_spread * maps.self_spread(votes, store)
        scores = votes if slime is None else fuse(slime.float(), votes.to(slime.device), cfg)
        scores = small_part_boost(scores, learned, cfg)
    if cfg.tta_flip:
        scores = (scores[:b] + scores[b:].flip(-1)) / 2
    return scores


@torch.no_grad()
def reference_crops(sd: StableDiffusion, crops: torch.Tensor, learned: Learned, cfg: SlimeConfig,
                    out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's test-time maps of (B, 3, h, w) crops (`normalization="reference_exact"`):
    classes below `tile_threshold` dropped (also with one crop), the first kept class zeroed below
    its mean, WAS upsampled to `out_hw` THEN min-max rescaled into the class's probability range.
    Returns the maps (B, K, *out_hw), 0 for dropped classes, and which classes were kept (B, K)."""
    hw = (crops.shape[-2] // 8, crops.shape[-1] // 8)
    values_fn = functools.partial(maps.reference_values, threshold=cfg.tile_threshold)
    store = _capture(sd, crops, learned, cfg, AttentionStore(
        learned.num_classes, hw, want_was=cfg.use_was, want_probs=True, values_fn=values_fn))
    probs = maps.class_probs(store, hw)  # (B, K, h/8, w/8)
    kept = maps.reference_passed(store, cfg.tile_threshold)  # (B, K)
    up = F.interpolate(store.was() if cfg.use_was else probs, size=out_hw, mode="bilinear",
                       align_corners=False)  # (B, K, *out_hw)
    return maps.reference_rescale(up, probs) * kept[..., None, None], kept


def tile_boxes(hw: tuple[int, int], cfg: SlimeConfig) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(height, width) and (y, x) corners of the n x n overlapping tiles of an input of size `hw`."""
    side = (int(round(hw[0] * cfg.tile_ratio)), int(round(hw[1] * cfg.tile_ratio)))
    sy, sx = ((n - t) / (cfg.tiles - 1) for n, t in zip(hw, side, strict=True))
    return side, [(round(i * sy), round(j * sx)) for i in range(cfg.tiles) for j in range(cfg.tiles)]


def score_image(sd: StableDiffusion, image: torch.Tensor, learned: Learned,
                cfg: SlimeConfig) -> torch.Tensor:
    """Scores for one (3, h, w) input: (K, h/8, w/8) from one pass, or (K, h, w) averaged over
    n x n overlapping tiles if tiles > 1 (either is resized to the image by the final step, so a
    single image takes the same path as a batch: `predict_labels`).

    Each tile is upsampled to the model input, scored, and its scores resized back into its box;
    with the reference normalisation a class whose maximum in a tile is below `tile_threshold` is
    left out of that tile's vote, as the reference code does; "reference_exact" is the reference's
    test step exactly (`reference_crops`), its threshold applied with one tile too.
    """
    hw = tuple(image.shape[-2:])
    exact = cfg.normalization == "reference_exact"
    if cfg.tiles == 1 and not exact:
        return score_batch(sd, image[None], learned, cfg)[0]  # (K, h/8, w/8)
    (th, tw), boxes = tile_boxes(hw, cfg) if cfg.tiles > 1 else (hw, [(0, 0)])
    crops = torch.stack([F.interpolate(image[None, :, y:y + th, x:x + tw], size=hw,
                                       mode="bilinear", align_corners=False)[0] for y, x in boxes])
    k = learned.num_classes
    if exact:  # the reference's test step: thresholds and rescaling per crop at the box's size
        ups, kept = reference_crops(sd, crops, learned, cfg, (th, tw))  # (n*n, K, th, tw), (n*n, K)
    else:
        scores = score_batch(sd, crops, learned, cfg)  # (n*n, K, h/8, w/8)
        ups = F.interpolate(scores, size=(th, tw), mode="bilinear", align_corners=False)
        kept = torch.ones(len(boxes), k, dtype=torch.bool, device=ups.device)
        if cfg.normalization == "reference":  # drop weak classes per tile (background always kept)
            kept = scores.flatten(2).amax(2) >= cfg.tile_threshold
            kept[:, 0] = True
    total = torch.zeros(k, *hw, device=ups.device)  # (K, h, w)
    count = torch.full((k, *hw), 1e-7, device=ups.device)  # (K, h, w)
    for (y, x), up, keep in zip(boxes, ups, kept, strict=True):
        total[keep, y:y + th, x:x + tw] += up[keep]
        count[keep, y:y + th, x:x + tw] += 1
    return total / count


# ---------------------------------------------------------------- native resolution: windows
def window_starts(length: int, side: int, overlap: float) -> list[int]:
    """Starts (multiples of 8) of windows of `side` covering `length`, neighbours overlapping by
    about `overlap` of a window; the first starts at 0 and the last ends at `length`."""
    if length <= side:
        return [0]
    n = math.ceil((length - side) / max(side * (1 - overlap), 8)) + 1
    return [round(i * (length - side) / (n - 1) / 8) * 8 for i in range(n)]


def ramp(n: int, taper: int, start: bool, end: bool) -> torch.Tensor:
    """1-D blending weights over a window's n latent cells: linear ramps of `taper` cells on the
    sides that overlap a neighbour (`start` / `end`), 1 elsewhere, never 0."""
    w = torch.ones(n)
    if taper > 0:
        up = (torch.arange(taper) + 0.5) / taper
        if start:
            w[:taper] = torch.minimum(w[:taper], up)
        if end:
            w[n - taper:] = torch.minimum(w[n - taper:], up.flip(0))
    return w


def scaled_image(image: np.ndarray, scale: float) -> np.ndarray:
    """The image at `scale`, each side rounded to a multiple of 8 (a latent cell), uint8."""
    h, w = (max(8, round(n * scale / 8) * 8) for n in image.shape[:2])
    if (h, w) == image.shape[:2]:
        return image
    return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None))


def score_windows(sd: StableDiffusion, image: np.ndarray, learned: Learned, cfg: SlimeConfig,
                  progress: bool | None = None) -> torch.Tensor:
    """Blended window scores (K, H'/8, W'/8) over the image at the scale of `cfg.resolution`.

    Windows of image_size (or the image's side where it is smaller) step over the scaled image with
    `window_overlap`; each is scored, `window_batch` at a time, and added into a latent-resolution
    canvas with weights that ramp linearly across the overlaps, so no seam shows.
    """
    big = scaled_image(image, cfg.window_scale() or 1.0)  # (H', W', 3)
    (h, w), s = big.shape[:2], cfg.image_size
    side = (min(s, h), min(s, w))
    boxes = [(y, x) for y in window_starts(h, side[0], cfg.window_overlap)
             for x in window_starts(w, side[1], cfg.window_overlap)]
    size = tuple(max(64, math.ceil(n / 64) * 64) for n in side)  # the UNet's input for a window
    k = learned.num_classes
    total = torch.zeros(k, h // 8, w // 8)  # (K, H'/8, W'/8)
    weight = torch.full((h // 8, w // 8), 1e-6)  # (H'/8, W'/8)
    taper = tuple(round(n * cfg.window_overlap / 8) for n in side)
    bar = tqdm(total=len(boxes), desc="windows", unit="window", leave=False,
               disable=(len(boxes) <= cfg.window_batch) if progress is None else not progress)
    for start in range(0, len(boxes), cfg.window_batch):
        chunk = boxes[start:start + cfg.window_batch]
        crops = torch.stack([image_tensor(big[y:y + side[0], x:x + side[1]]) for y, x in chunk])
        if crops.shape[-2:] != size:  # a side smaller than a multiple of 64: stretch a little
            crops = F.interpolate(crops, size=size, mode="bilinear", align_corners=False)
        scores = score_batch(sd, crops.clamp(0, 1), learned, cfg).float().cpu()  # (B, K, size/8)
        if scores.shape[-2:] != (side[0] // 8, side[1] // 8):
            scores = F.interpolate(scores, size=(side[0] // 8, side[1] // 8), mode="bilinear",
                                   align_corners=False)
        for (y, x), sc in zip(chunk, scores, strict=True):
            wy = ramp(side[0] // 8, taper[0], y > 0, y + side[0] < h)
            wx = ramp(side[1] // 8, taper[1], x > 0, x + side[1] < w)
            wt = wy[:, None] * wx[None]  # (s/8, s/8)
            ys, xs = slice(y // 8, y // 8 + side[0] // 8), slice(x // 8, x // 8 + side[1] // 8)
            total[:, ys, xs] += sc * wt
            weight[ys, xs] += wt
        bar.update(len(chunk))
    bar.close()
    return total / weight


def combine(windows: torch.Tensor, whole: torch.Tensor, rule: str) -> torch.Tensor:
    """Window scores (K, h, w) with the whole-image pass's (K, h', w') resized to them:
    none = windows alone; mean = their average; gate = background where the whole image says
    background, else the windows' best part (scores rescaled so the argmax says exactly that)."""
    if rule == "none":
        return windows
    whole = F.interpolate(whole[None].float(), size=windows.shape[-2:], mode="bilinear",
                          align_corners=False)[0].cpu()  # (K, h, w)
    if rule == "mean":
        return (windows + whole) / 2
    fg_whole = whole[1:].amax(0)  # (h, w) the whole pass's best part score
    fg_win = windows[1:].amax(0).clamp_min(1e-6)  # (h, w)
    parts = windows[1:] * (fg_whole / fg_win)[None]  # (K-1, h, w): windows' ranking, whole's level
    return torch.cat([whole[:1], parts])


def native_scores(sd: StableDiffusion, image: np.ndarray, learned: Learned, cfg: SlimeConfig,
                  progress: bool | None = None) -> torch.Tensor:
    """Scores (K, H'/8, W'/8) of windows at the chosen scale combined with the whole-image pass."""
    windows = score_windows(sd, image, learned, cfg, progress)
    if cfg.context == "none":
        return windows
    whole = score_batch(sd, model_input(image, cfg)[None], learned, cfg)[0]  # (K, h/8, w/8)
    return combine(windows, whole, cfg.context)


def labels_at(scores: torch.Tensor, hw: tuple[int, int], argmax: torch.Tensor | None = None
              ) -> np.ndarray:
    """Argmax of low-resolution (K, h, w) scores bilinearly upsampled to `hw`, in bands of rows so
    that at most BAND_ELEMENTS upsampled scores exist at once: (H, W) uint8. `argmax`: the
    scores' own argmax (h, w) where the caller took it already (`temporal.FlowCarry.finish`),
    used when the scores are at `hw` (resizing to their own size is exact: the same labels)."""
    k = scores.shape[0]
    if k * hw[0] * hw[1] <= BAND_ELEMENTS:
        if argmax is not None and tuple(argmax.shape) == tuple(scores.shape[1:]) == tuple(hw):
            return argmax.cpu().numpy().astype(np.uint8)
        return labels_of(to_image_size(scores, hw))
    scores = scores[None].float().cpu()
    out = np.empty(hw, np.uint8)
    band = max(1, BAND_ELEMENTS // (k * hw[1]))
    xs = (torch.arange(hw[1]) + 0.5) / hw[1] * 2 - 1  # grid_sample's coordinates, align_corners=False
    for y0 in range(0, hw[0], band):
        ys = (torch.arange(y0, min(hw[0], y0 + band)) + 0.5) / hw[0] * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]  # (1, b, W, 2)
        up = F.grid_sample(scores, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[y0:y0 + len(ys)] = class_argmax(up[0]).numpy()
    return out


def to_image_size(scores: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (K, h, w) scores to the image's (H, W), in float32 on the CPU."""
    return F.interpolate(scores[None].float(), size=hw, mode="bilinear", align_corners=False)[0].cpu()


def low_res_scores(sd: StableDiffusion, image: np.ndarray, learned: Learned, cfg: SlimeConfig,
                   progress: bool | None = None) -> torch.Tensor:
    """Scores (K, h, w) of one image before the final upsampling: the model pass (with tiles) or
    the native-resolution windows combined with the whole image."""
    if cfg.window_scale() is not None:
        return native_scores(sd, image, learned, cfg, progress)
    return score_image(sd, model_input(image, cfg), learned, cfg)


def predict_scores(sd: StableDiffusion, image: np.ndarray, learned: Learned,
                   cfg: SlimeConfig) -> torch.Tensor:
    """Per-class scores (K, H, W) at the image's own size (their argmax is the label map)."""
    return to_image_size(upsampled(low_res_scores(sd, image, learned, cfg), image, cfg), image.shape[:2])


def upsampled(scores: torch.Tensor, image: np.ndarray, cfg: SlimeConfig) -> torch.Tensor:
    """The scores (K, h, w) as the final step takes them: as they are (bilinear), or guided-filtered
    along the image's edges at up to its size (`upsample="guided"`): (K, h', w')."""
    if cfg.upsample == "guided":  # the radius: guide_radius latent cells of the image's pass
        scale = cfg.window_scale() or input_hw(image.shape[:2], cfg)[1] / image.shape[1]
        return upsample.guided_scores(scores, image, cfg.guide_radius * 8 / scale, cfg.guide_eps)
    return scores


def labels_for(scores: torch.Tensor, image: np.ndarray, cfg: SlimeConfig) -> np.ndarray:
    """The (H, W) uint8 label map of an image from its low-resolution scores (K, h, w): upsampled
    by `cfg.upsample`, then bilinearly to the image's size and argmax-ed in bands (`labels_at`)."""
    return labels_at(upsampled(scores, image, cfg), image.shape[:2])


def labels_of(scores: torch.Tensor) -> np.ndarray:
    """Argmax over classes of (K, H, W) scores: (H, W) uint8 class indices."""
    return class_argmax(scores).cpu().numpy().astype(np.uint8)


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """The class of the highest score at each pixel of (K, H, W) scores: (H, W) int64, the first
    class where several tie, as `argmax(0)`. Taken as `max(0).indices`, the same indices (the
    first maximum, NaN counted highest) but several times faster on CPUs, where argmax over the
    leading dimension is slow (5 x 256 x 256, one thread: 1.1 against 8.8 ms)."""
    return scores.max(0).indices


def predict_labels(sd: StableDiffusion, images: Sequence[np.ndarray], learned: Learned,
                   cfg: SlimeConfig, batch_size: int = 4) -> list[np.ndarray]:
    """Label maps for many images, `batch_size` UNet passes at a time (images whose model inputs
    share a size batch together; tiles and windows: one image at a time)."""
    if cfg.tiles > 1 or cfg.window_scale() is not None or cfg.normalization == "reference_exact":
        return [labels_for(low_res_scores(sd, im, learned, cfg), im, cfg) for im in images]
    out: list[np.ndarray | None] = [None] * len(images)
    for start in range(0, len(images), batch_size):
        idx = range(start, min(start + batch_size, len(images)))
        sizes = {i: input_hw(images[i].shape[:2], cfg) for i in idx}
        for hw in dict.fromkeys(sizes.values()):
            same = [i for i in idx if sizes[i] == hw]
            x = torch.stack([model_input(images[i], cfg) for i in same])  # (B, 3, h, w)
            scores = score_batch(sd, x, learned, cfg)  # (B, K, h/8, w/8)
            for i, sc in zip(same, scores, strict=True):
                out[i] = labels_for(sc, images[i], cfg)
    return out  # type: ignore[return-value]
