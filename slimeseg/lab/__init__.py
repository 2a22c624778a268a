"""A synthetic world of part-structured images (cars, faces) with exact part masks and captions.

Deterministic from a seed; used to pretrain and measure the lab SD (the top-level `lab/` of a
checkout), and open to users who want labelled images to try slimeseg on.
"""

from __future__ import annotations

from .world import (
    KIND_CLASSES,
    Sample,
    SceneObject,
    SceneWorld,
    World,
    caption_vocabulary,
    compose,
    make_split,
)

__all__ = ["KIND_CLASSES", "Sample", "SceneObject", "SceneWorld", "World", "caption_vocabulary", "compose",
           "make_split"]
