"""Everything to try slimeseg without data or weights: synthetic images with exact masks, a tiny SD.

- `world`: a world of part-structured images (cars, faces) with exact part masks and captions,
  deterministic from a seed; the lab SD (the top-level `lab/` of a checkout) is pretrained and
  measured on it.
- `scenes`: simple textured shapes (`slimeseg example`), for the quick start and tests.
- `tiny`, `tokenizer`: a tiny untrained SD of SD's architecture and its byte-level tokenizer
  (`slimeseg tiny-model`), so the whole tool runs offline.

The engine never imports this package.
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
