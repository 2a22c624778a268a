"""A synthetic lab: a part-structured image world and a small Stable Diffusion pretrained on it."""

from __future__ import annotations

import argparse

from .world import KIND_CLASSES, Sample, World, caption_vocabulary, make_split

__all__ = ["KIND_CLASSES", "Sample", "World", "add_train_model_arguments", "caption_vocabulary", "make_split"]


def add_train_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `slimeseg lab train-model` (also `python -m slimeseg.lab.train_model`)."""
    p.add_argument("out", help="output folder (diffusers layout)")
    p.add_argument("--minutes", type=float, default=45.0, help="training budget when steps are not given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image size (multiple of 64)")
    p.add_argument("--images", type=int, default=2400, help="training images rendered")
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--qk-scale", type=float, default=10.0,
                   help="self-attention q/k start tied at this scale (0: diffusers' default init)")
    p.add_argument("--vae-crop", type=int, default=64, help="VAE training crop size (px)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
