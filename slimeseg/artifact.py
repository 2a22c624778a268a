"""The learned artifact: class embeddings in one safetensors file with JSON metadata.

It is data, never code: safetensors holds the tensors, the metadata is validated JSON, and a
file from a newer format or for another model is refused with a clear message.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import ArtifactError
from .io import atomic_path

FORMAT_VERSION = 1
_KIND = "slimeseg.learned"
_REQUIRED = {"format": str, "format_version": int, "classes": list, "model_id": str,
             "fingerprint": str, "config": dict}


def image_hash(image: np.ndarray) -> str:
    """sha256 of an (H, W, 3) uint8 image's shape and pixels (records what was trained on)."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


@dataclass
class Learned:
    """Trained class embeddings plus everything needed to use them and to trace their origin.

    `context` is the full (77, D) text-encoder output the UNet sees, rows 1..K-1 trained.
    """

    context: torch.Tensor  # (77, D) float32
    classes: list[str]
    model_id: str
    fingerprint: str
    config: dict[str, Any]
    revision: str | None = None
    image_hashes: list[str] = field(default_factory=list)
    uncond: torch.Tensor | None = None  # (77, D) for the optional guidance in L_LDM
    history: dict[str, Any] = field(default_factory=dict)  # losses, steps done, timings
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # optimiser/RNG for resume
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata stored beside the tensors."""
        return {
            "format": _KIND, "format_version": self.format_version, "classes": self.classes,
            "model_id": self.model_id, "revision": self.revision, "fingerprint": self.fingerprint,
            "config": self.config, "image_hashes": self.image_hashes, "history": self.history,
            "slimeseg_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename): a crash never leaves a half-written artifact."""
        path = Path(path)
        tensors = {"context": self.context.detach().float().contiguous().cpu()}
        if self.uncond is not None:
            tensors["uncond"] = self.uncond.detach().float().contiguous().cpu()
        for name, value in self.state.items():
            tensors[f"state.{name}"] = value.detach().contiguous().cpu()
        meta = {"slimeseg": json.dumps(self.metadata(), sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Learned:
        """Read and validate an artifact; every problem is one ArtifactError line naming the file."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: learned-embeddings file not found")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                raw = (fh.metadata() or {}).get("slimeseg")
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{path}: not a valid safetensors file ({exc})") from None
        if raw is None:
            raise ArtifactError(f"{path}: safetensors file has no slimeseg metadata")
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: corrupt metadata ({exc})") from None
        _validate(meta, path)
        context = tensors.get("context")
        k = len(meta["classes"])
        if context is None or context.ndim != 2 or context.shape[0] < k + 1:
            shape = None if context is None else tuple(context.shape)
            raise ArtifactError(f"{path}: embeddings have shape {shape}, need (77, D) for {k} classes")
        if not torch.isfinite(context).all():
            raise ArtifactError(f"{path}: embeddings hold NaN or infinite values")
        state = {n[len("state."):]: t for n, t in tensors.items() if n.startswith("state.")}
        return cls(context=context.float(), classes=list(meta["classes"]), model_id=meta["model_id"],
                   fingerprint=meta["fingerprint"], config=meta["config"], revision=meta.get("revision"),
                   image_hashes=list(meta.get("image_hashes") or []), uncond=tensors.get("uncond"),
                   history=dict(meta.get("history") or {}), state=state,
                   format_version=meta["format_version"])


def _validate(meta: Any, path: Path) -> None:
    """Check the metadata's schema and format version."""
    if not isinstance(meta, dict) or meta.get("format") != _KIND:
        raise ArtifactError(f"{path}: not a slimeseg learned-embeddings file")
    for key, typ in _REQUIRED.items():
        if not isinstance(meta.get(key), typ):
            raise ArtifactError(f"{path}: metadata field '{key}' is missing or not a {typ.__name__}")
    if meta["format_version"] > FORMAT_VERSION:
        raise ArtifactError(f"{path}: made by a newer slimeseg (format {meta['format_version']}, this "
                            f"version reads up to {FORMAT_VERSION}); upgrade slimeseg")
    classes = meta["classes"]
    if not 2 <= len(classes) <= 77 or not all(isinstance(c, str) and c for c in classes):
        raise ArtifactError(f"{path}: metadata must name 2 to 77 classes")
