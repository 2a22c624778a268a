"""A synthetic lab: a part-structured image world and a small Stable Diffusion pretrained on it."""

from .world import KIND_CLASSES, Sample, World, caption_vocabulary, make_split

__all__ = ["KIND_CLASSES", "Sample", "World", "caption_vocabulary", "make_split"]
