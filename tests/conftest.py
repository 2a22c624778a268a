"""Shared fixtures: a tiny SD saved in diffusers layout and loaded back through from_pretrained."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny SD written with save_pretrained (the same path users' models load through)."""
    from slimeseg.synthetic.tiny import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_dir(tmp_path_factory) -> Path:
    """A tiny SD of another configuration (wider), to test the wrong-model error."""
    from slimeseg.synthetic.tiny import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd-wide"), seed=1, width=48)


@pytest.fixture(scope="session")
def segmenter(tiny_dir):
    from slimeseg import Segmenter

    return Segmenter.from_pretrained(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def scene():
    from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

    image, mask = shapes_scene(0, 256)
    return image, mask, SHAPE_CLASSES
