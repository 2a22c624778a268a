"""Fusion (c): SLiMe's fit regularised by matching's labels of the images to segment.

On the example itself matching returns the example's own labels (its cells are the bank), so it
can only add to a fit on *other* images. Given unlabelled images like those to segment, matching
labels them in seconds; the pixels it is sure of (`certainty` at least `self_train_conf`)
become pseudo-labelled training pairs, the rest `config.IGNORE`, and the fit
spends `self_train_share` of its steps on them (`training.pseudo_index`), the examples keeping
their own steps. Measured on the lab in docs/methods.md ("Fusion (c)").
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from . import inference
from .artifact import Learned, image_hash
from .config import IGNORE, SlimeConfig
from .examples import Example, ImageLike, image_tensor, input_name
from .io import as_image_array
from .models import StableDiffusion


def certainty(top: torch.Tensor, k: int) -> torch.Tensor:
    """How far a top class share (any shape) lies above chance, 1 / K, as a share of the way to
    1: 0 for a tie of all K classes, 1 for a sure one. A raw top share would mean different
    things for different K (with 2 classes it is never under 0.5)."""
    return (top - 1 / k) / (1 - 1 / k)


def pseudo_label(scores: torch.Tensor, conf: float) -> torch.Tensor:
    """Class shares (K, H, W) -> (H, W) long labels: the top class where its `certainty` is at
    least `conf`, IGNORE elsewhere."""
    top, labels = scores.max(0)  # (H, W) each
    return torch.where(certainty(top, scores.shape[0]) >= conf, labels, torch.full_like(labels, IGNORE))


def pseudo_examples(sd: StableDiffusion, matcher: Learned, images: Sequence[ImageLike],
                    cfg: SlimeConfig) -> list[Example]:
    """The unlabelled `images` as training pairs labelled by matching (`matcher`: a matching
    artifact of the examples; `cfg`'s inference settings, method "match"). Images larger than
    twice the model input are reduced first (the fit resizes them to it anyway); an image with no
    confident cell is left out, with a warning."""
    cfg = cfg.replace(method="match")
    out: list[Example] = []
    for i, item in enumerate(images):
        name = input_name(item, "unlabelled image", i)
        arr = as_image_array(item, name)
        scale = 2 * cfg.image_size / max(arr.shape[:2])
        if scale < 1:
            arr = inference.scaled_image(arr, scale)
        scores = inference.predict_scores(sd, arr, matcher, cfg)  # (K, H, W)
        mask = pseudo_label(scores.float().cpu(), cfg.self_train_conf)  # (H, W)
        if bool((mask == IGNORE).all()):
            warnings.warn(f"{name}: matching is sure of no pixel in it (certainty under "
                          f"{cfg.self_train_conf}); left out of self-training", stacklevel=3)
            continue
        out.append(Example(image_tensor(arr), mask, name, image_hash(arr)))
    return out

