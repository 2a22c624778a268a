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


@pytest.fixture(scope="session")
def capture_self_probs():
    """`attention.capture` that also yields the explicit (B, N, N) self-attention probabilities of
    every self-attention layer (head mean, with gradients), to check the fused WAS maps against.

    The engine's processor never forms them; here a test-side subclass adds them beside it."""
    import contextlib

    from slimeseg.attention import (
        CaptureProcessor,
        attention_layers,
        capture,
        explicit_attention,
        project,
    )

    class SelfProbsProcessor(CaptureProcessor):
        def __init__(self, store, role, kept):
            super().__init__(store, role)
            self.kept = kept

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
            if self.role == "self":
                q, k, v = project(attn, hidden_states, encoder_hidden_states)
                _, probs = explicit_attention(q.float(), k.float(), v.float(), attn.scale)
                self.kept.append(probs.mean(1))  # (B, N, N)
            return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    @contextlib.contextmanager
    def capture_with_self_probs(unet, roles, store):
        kept: list[torch.Tensor] = []
        with capture(unet, roles, store):  # restores the UNet's own processors on exit
            layers = attention_layers(unet)
            for name, role in roles.items():
                layers[name].set_processor(SelfProbsProcessor(store, role, kept))
            yield kept

    return capture_with_self_probs
