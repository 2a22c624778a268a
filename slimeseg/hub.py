"""Sharing learned embeddings on the Hugging Face Hub: `slimeseg push`, and hub ids as artifacts.

A repo holds the artifact as `learned.safetensors` (the same safetensors + JSON file, never a
pickle), a generated model card (`README.md`: classes and colours, base model and revision,
settings, lineage, example thumbnails with their overlays, the eval report, the command to use
it), `images/` and `eval.json` when given. Wherever an artifact file is accepted, `USER/REPO`
(or `USER/REPO@REVISION`) works too: `Learned.load` fetches it through the hub cache
(`hf_hub_download`), so it is downloaded once and loads offline (`HF_HUB_OFFLINE=1`) from the
cache; the model check (`Learned.check_fits`) is the same as for a local file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .errors import ArtifactError, InputError, one_line

if TYPE_CHECKING:
    from .artifact import Learned

LEARNED_FILE = "learned.safetensors"
HUB_HINT = "pip install 'slimeseg[hub]'"
THUMBNAIL = 256  # longest side of the card's images, px
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def parse_hub_id(name: str | os.PathLike) -> tuple[str, str | None] | None:
    """(repo, revision) if `name` is a hub id `USER/REPO[@REVISION]` and not a local path; else
    None. A name ending in `.safetensors` or starting like a path (`/`, `.`, `~`) is a file."""
    text = str(name)
    if os.path.exists(text) or text.startswith(("/", ".", "~")) or text.endswith(".safetensors"):
        return None
    repo, _, revision = text.partition("@")
    if not _REPO.fullmatch(repo) or repo.endswith((".git", "..")):
        return None
    return repo, revision or None


def fetch_learned(name: str | os.PathLike, revision: str | None = None) -> Path:
    """The local path of a hub artifact (`USER/REPO[@REV]`; `revision` pins it too), through the
    Hugging Face cache: downloaded once, offline from the cache. One-line ArtifactError otherwise."""
    parsed = parse_hub_id(name)
    if parsed is None:
        raise ArtifactError(f"{name}: learned-embeddings file not found")
    repo, rev = parsed
    rev = revision or rev
    try:
        from huggingface_hub import constants, errors, hf_hub_download
    except ImportError:
        raise ArtifactError(f"{name}: loading from the hub needs a recent huggingface_hub ({HUB_HINT})") from None
    at = f" at revision '{rev}'" if rev else ""
    try:
        return Path(hf_hub_download(repo, LEARNED_FILE, revision=rev, library_name="slimeseg"))
    except errors.LocalEntryNotFoundError:
        why = ("offline mode (HF_HUB_OFFLINE) is on" if constants.HF_HUB_OFFLINE
               else "the hub cannot be reached")
        raise ArtifactError(f"{name}: no such file, and hub repo '{repo}'{at} is not in the local "
                            f"cache ({constants.HF_HUB_CACHE}) while {why}; give a local "
                            ".safetensors file or fetch it once online") from None
    except errors.RepositoryNotFoundError:
        raise ArtifactError(f"{name}: no such file, nor a model repo on the hub (a private one "
                            "needs `hf auth login` or HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise ArtifactError(f"{name}: hub repo '{repo}' has no revision '{rev}'") from None
    except errors.EntryNotFoundError:
        raise ArtifactError(f"{name}: hub repo '{repo}'{at} has no {LEARNED_FILE} (not made by "
                            "`slimeseg push`?)") from None
    except (errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise ArtifactError(f"{name}: cannot fetch from the hub ({one_line(exc)})") from None


# ---------------------------------------------------------------------------- the card
def _thumbnail(image: np.ndarray, path: Path) -> str:
    """Save an (H, W, 3) uint8 image at most THUMBNAIL px on its longest side; its repo path."""
    img = Image.fromarray(image)
    img.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path.relative_to(path.parents[1]).as_posix()


def _example_rows(learned: Learned, folder: Path, segmented: Sequence[tuple[str, np.ndarray, np.ndarray]]
                  ) -> list[tuple[str, str, str]]:
    """(caption, image, overlay) thumbnails: the stored examples with their masks, then the
    segmented images (`--examples`) with their predicted labels."""
    from .writers import overlay

    rows = []
    for i, (image, mask) in enumerate(learned.examples):
        arr, m = image.permute(1, 2, 0).numpy(), mask.numpy()
        rows.append((f"example {i + 1} (its mask)", _thumbnail(arr, folder / f"images/example{i}.png"),
                     _thumbnail(overlay(arr, m), folder / f"images/example{i}.overlay.png")))
    for i, (name, image, labels) in enumerate(segmented):
        rows.append((f"{name} (segmented)", _thumbnail(image, folder / f"images/segmented{i}.png"),
                     _thumbnail(overlay(image, labels), folder / f"images/segmented{i}.overlay.png")))
    return rows


def card_text(learned: Learned, repo_id: str, rows: Sequence[tuple[str, str, str]] = (),
              report: dict[str, Any] | None = None) -> str:
    """The model card (README.md) of a pushed artifact, YAML metadata included."""
    from huggingface_hub import ModelCard, ModelCardData

    from .writers import palette

    base = learned.model_id if parse_hub_id(learned.model_id) else None
    data = ModelCardData(library_name="slimeseg", pipeline_tag="image-segmentation",
                         base_model=base, tags=["slimeseg", "image-segmentation", "stable-diffusion",
                                                "few-shot"])
    colours = palette(learned.num_classes)
    lines = [f"# {repo_id}", "",
             "Learned embeddings for slimeseg (SLiMe, ICLR 2024): segments "
             "images like the example(s) they were made from, on a frozen Stable Diffusion.", "",
             "## Use", "", "```bash", "pip install 'slimeseg[hub]'",
             f"slimeseg segment {repo_id} photos/ --out labels/            # label PNGs",
             f"slimeseg segment {repo_id} photos/ --out labels/ --format coco  # and coco.json",
             "```", "", "```python", "from slimeseg import Segmenter",
             f'seg = Segmenter.from_learned("{repo_id}")', 'labels = seg.predict("photo.jpg")',
             "```", "", "## Classes", "", "| index | class | colour |", "|---|---|---|"]
    for k, name in enumerate(learned.classes):
        hexa = "#" + "".join(f"{int(c):02x}" for c in colours[k])
        lines.append(f"| {k} | {name} | `{hexa}` |")
    kind = "matching only (no training)" if not learned.trained else "trained embeddings"
    where = "" if base else " (a local model: users need the same files, `--model DIR`)"
    lines += ["", "## Model", "", f"- base model: `{learned.model_id}`{where}",
              f"- revision: `{learned.revision or 'default branch'}`",
              f"- model fingerprint: `{learned.fingerprint}`", f"- kind: {kind}",
              f"- steps: {learned.history.get('steps_done', 'n/a')}",
              f"- examples stored: {len(learned.examples)}", "", "## Settings", "",
              "```json", json.dumps(learned.config, indent=1, sort_keys=True), "```"]
    if learned.lineage:
        lines += ["", "## Lineage", ""]
        lines += [f"{i + 1}. " + ", ".join(f"{k}: {v}" for k, v in entry.items())
                  for i, entry in enumerate(learned.lineage)]
    if rows:
        lines += ["", "## Examples", "", "| | image | overlay |", "|---|---|---|"]
        lines += [f"| {cap} | ![]({img}) | ![]({ovl}) |" for cap, img, ovl in rows]
    if report:
        acc = report.get("accumulated") or {}
        lines += ["", "## Evaluation", "", f"Report: [eval.json](eval.json), "
                  f"{report.get('num_images', '?')} image(s) of `{report.get('dataset', '?')}`.", ""]
        if isinstance(acc.get("per_class"), dict):
            lines += ["| class | IoU % |", "|---|---|"]
            lines += [f"| {c} | {100 * v:.1f} |" for c, v in acc["per_class"].items()
                      if isinstance(v, (int, float))]
            if isinstance(acc.get("miou"), (int, float)):
                lines.append(f"| **mIoU** | **{100 * acc['miou']:.1f}** |")
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    return str(card)


def build_folder(learned_path: str | os.PathLike, repo_id: str, folder: str | os.PathLike, *,
                 segmented: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
                 eval_report: str | os.PathLike | None = None) -> Path:
    """Write what `push` uploads into `folder`: learned.safetensors, README.md, images/, eval.json.

    `segmented`: (name, image, labels) of images segmented with the artifact, for the card.
    """
    from .artifact import Learned

    folder = Path(folder)
    learned = Learned.load(learned_path)
    report = None
    if eval_report is not None:
        try:
            report = json.loads(Path(eval_report).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{eval_report}: not a readable eval report ({one_line(exc)})") from None
        if not isinstance(report, dict):
            raise InputError(f"{eval_report}: not an eval report made by `slimeseg eval`")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(learned_path, folder / LEARNED_FILE)
    rows = _example_rows(learned, folder, segmented)
    if report is not None:
        (folder / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(card_text(learned, repo_id, rows, report), encoding="utf-8")
    return folder


def upload(folder: str | os.PathLike, repo_id: str, *, private: bool = False,
           token: str | None = None, message: str = "slimeseg push") -> str:
    """Create the model repo (if new) and upload the folder in one commit; its URL."""
    from huggingface_hub import HfApi, errors

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message)
    except (errors.HfHubHTTPError, OSError, ValueError) as exc:
        from huggingface_hub import constants

        hint = ("unset HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE
                else "log in with `hf auth login` or set HF_TOKEN")
        raise InputError(f"{repo_id}: cannot push to the hub ({one_line(exc)}); {hint}") from None
    return str(getattr(info, "commit_url", info))
