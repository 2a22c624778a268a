"""The learned artifact: class embeddings in one safetensors file with JSON metadata.

It is data, never code: safetensors holds the tensors, the metadata is validated JSON, and a
file from a newer format or for another model is refused with a clear message.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import MAX_CLASSES, SlimeConfig, setting_types
from .errors import ArtifactError
from .files import atomic_path
from .models import LayerPlan
from .resume import ResumeState

if TYPE_CHECKING:
    from .models import StableDiffusion

FORMAT_VERSION = 1
_KIND = "slimeseg.learned"
_REQUIRED = {"format": str, "format_version": int, "classes": list, "model_id": str,
             "fingerprint": str, "config": dict}
_OPTIONAL = (("revision", str, "a string or null"), ("model_config", str, "a string or null"), ("image_hashes", list, "a list"),
             ("history", dict, "an object"), ("lineage", list, "a list"), ("layers", dict, "an object"))


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
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # ResumeState.to_tensors()
    lineage: list[dict[str, Any]] = field(default_factory=list)  # one entry per training round
    layers: dict[str, Any] | None = None  # the attention layers it was made with (LayerPlan.to_dict)
    # what matching needs: the examples at the model input's size, (3, h, w) and (h, w) uint8 each
    examples: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    trained: bool = True  # False: a matching-only artifact (its context is the empty prompt)
    model_config: str | None = None  # a single-file model: the configs it was loaded with
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check_fits(self, sd: StableDiffusion, name: str | os.PathLike = "embeddings",
                   hint: str | None = None) -> None:
        """Refuse, in one line naming `name` and both models, embeddings that do not fit `sd`:
        made with a model of other configs, of another width, or on layers it does not have.
        `hint` says what to do instead (default: load their model)."""
        hint = hint or f"load '{self.model_id}' instead"
        if self.fingerprint != sd.fingerprint:
            raise ArtifactError(f"{name}: learned with model '{self.model_id}', but the model in use "
                                f"is '{sd.model_id}' (their configs differ); {hint}")
        if self.context.shape[-1] != sd.context_dim:
            raise ArtifactError(f"{name}: embeddings have width {self.context.shape[-1]}, model "
                                f"'{sd.model_id}' needs {sd.context_dim}; {hint}")
        from .attention import attention_layers

        missing = set(self.layer_plan(sd).roles()) - set(attention_layers(sd.unet))
        if missing:
            raise ArtifactError(f"{name}: made on attention layers model '{sd.model_id}' does not "
                                f"have ({sorted(missing)[0]}, ...); {hint}")

    def layer_plan(self, sd: StableDiffusion) -> LayerPlan:
        """The layers these embeddings are read through: the ones recorded when they were made;
        for artifacts from before layers were recorded, the model's plan by today's rule."""
        return LayerPlan.from_dict(self.layers) if self.layers is not None else sd.plan

    def digest(self) -> str:
        """sha256 of what the embeddings are: the context, the classes and the model fingerprint
        (names the parent of a refinement; equal for a file and its in-memory copy)."""
        h = hashlib.sha256(self.context.detach().float().contiguous().cpu().numpy().tobytes())
        h.update(json.dumps([self.classes, self.fingerprint]).encode())
        return h.hexdigest()

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata stored beside the tensors."""
        return {
            "format": _KIND, "format_version": self.format_version, "classes": self.classes,
            "model_id": self.model_id, "revision": self.revision, "fingerprint": self.fingerprint,
            "config": self.config, "image_hashes": self.image_hashes, "history": self.history,
            "lineage": self.lineage, "layers": self.layers, "trained": self.trained,
            "model_config": self.model_config,
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
        for i, (image, mask) in enumerate(self.examples):
            tensors[f"match.image.{i}"] = image.to(torch.uint8).contiguous().cpu()
            tensors[f"match.mask.{i}"] = mask.to(torch.uint8).contiguous().cpu()
        meta = {"slimeseg": json.dumps(self.metadata(), sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, revision: str | None = None) -> Learned:
        """Read and validate an artifact; every problem is one ArtifactError line naming the file.

        A hub id `USER/REPO[@REVISION]` (`revision` pins it too) that is no local file is fetched
        through the Hugging Face cache (`hub.fetch_learned`), offline from the cache."""
        if not Path(path).is_file():
            from .hub import fetch_learned, parse_hub_id

            if parse_hub_id(path) is not None:
                path = fetch_learned(path, revision)
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
        if state:  # a checkpoint: its resume state is checked where its format is defined
            ResumeState.from_tensors(state, k, context.shape[1], path)
        examples = _match_examples(tensors, k, path)
        trained = meta.get("trained", True)
        if not isinstance(trained, bool) or (not trained and not examples):
            raise ArtifactError(f"{path}: metadata field 'trained' must be true, or false with examples")
        return cls(context=context.float(), classes=list(meta["classes"]), model_id=meta["model_id"],
                   fingerprint=meta["fingerprint"], config=meta["config"], revision=meta.get("revision"),
                   image_hashes=list(meta.get("image_hashes") or []), uncond=tensors.get("uncond"),
                   history=dict(meta.get("history") or {}), state=state,
                   lineage=list(meta.get("lineage") or []), layers=meta.get("layers"),
                   examples=examples, trained=trained, format_version=meta["format_version"],
                   model_config=meta.get("model_config"))


def _match_examples(tensors: dict[str, torch.Tensor], k: int, path: Path
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The stored examples for matching (`match.image.i`, `match.mask.i`), checked: uint8 images
    (3, h, w) with masks (h, w) of class indices below K."""
    out = []
    for i in range(sum(n.startswith("match.image.") for n in tensors)):
        image, mask = tensors.get(f"match.image.{i}"), tensors.get(f"match.mask.{i}")
        if (image is None or mask is None or image.dtype != torch.uint8 or mask.dtype != torch.uint8
                or image.ndim != 3 or image.shape[0] != 3 or tuple(mask.shape) != tuple(image.shape[1:])
                or int(mask.max()) >= k):
            raise ArtifactError(f"{path}: stored example {i} for matching is malformed")
        out.append((image, mask))
    return out


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
    if not 2 <= len(classes) <= MAX_CLASSES or not all(isinstance(c, str) and c for c in classes):
        raise ArtifactError(f"{path}: metadata must name 2 to {MAX_CLASSES} classes")
    for key, typ, what in _OPTIONAL:
        if meta.get(key) is not None and not isinstance(meta[key], typ):
            raise ArtifactError(f"{path}: metadata field '{key}' is not {what}")
    if not all(isinstance(e, dict) for e in meta.get("lineage") or []):
        raise ArtifactError(f"{path}: metadata field 'lineage' must be a list of objects")
    if not all(isinstance(h, str) for h in meta.get("image_hashes") or []):
        raise ArtifactError(f"{path}: metadata field 'image_hashes' must be a list of strings")
    if meta.get("layers") is not None:
        try:
            LayerPlan.from_dict(meta["layers"])
        except ValueError as exc:
            raise ArtifactError(f"{path}: metadata field 'layers' is malformed ({exc})") from None
    _validate_config(meta["config"], path)


def _json_types(hint: Any) -> tuple[type, ...]:
    """The JSON types a value of annotation `hint` may have (int also for a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return tuple(dict.fromkeys(type(a) for a in args))
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return tuple(t for a in args for t in _json_types(a))
    if hint is float:
        return (int, float)
    return (origin or hint,) if isinstance(origin or hint, type) else ()


def _config_types() -> dict[str, tuple[type, ...]]:
    """The JSON types each SlimeConfig field accepts, from its annotation."""
    return {name: _json_types(hint) for name, hint in setting_types().items()}


def _validate_config(config: dict[str, Any], path: Path) -> None:
    """Known config keys must have the right JSON types and valid values; unknown keys are ignored."""
    for key, allowed in _config_types().items():
        if key not in config:
            continue
        value = config[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ArtifactError(f"{path}: metadata config '{key}' has a wrong type "
                                f"({type(value).__name__})")
    if config.get("image_size", 64) < 64:
        raise ArtifactError(f"{path}: metadata config 'image_size' must be >= 64")
    try:
        SlimeConfig.from_dict(config)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: metadata config is invalid ({exc})") from None
