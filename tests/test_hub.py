"""Sharing on the Hub: the folder and card `slimeseg push` uploads, hub ids loaded offline from a
Hugging Face cache laid out on disk, the same model check, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slimeseg import Segmenter, hub
from slimeseg.artifact import Learned
from slimeseg.cli import main
from slimeseg.errors import ArtifactError
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.writers import palette

huggingface_hub = pytest.importorskip("huggingface_hub", reason="slimeseg[hub] not installed")
ROOT = Path(__file__).resolve().parents[1]
REPO = "someone/shapes"


@pytest.fixture(scope="module")
def learned_file(tmp_path_factory, segmenter) -> Path:
    d = tmp_path_factory.mktemp("hub")
    image, mask = shapes_scene(0, 64)
    return segmenter.match([image], [mask], SHAPE_CLASSES, image_size=64).save(d / "shapes.safetensors")


def lay_out_cache(cache: Path, repo: str, file: Path, commit: str = "a" * 40) -> str:
    """The documented hub cache layout: models--USER--REPO/{blobs/SHA, snapshots/COMMIT/FILE ->
    ../../blobs/SHA, refs/main = COMMIT}; what hf_hub_download leaves after a download."""
    base = cache / ("models--" + repo.replace("/", "--"))
    data = file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (base / "blobs").mkdir(parents=True)
    (base / "blobs" / sha).write_bytes(data)
    (base / "snapshots" / commit).mkdir(parents=True)
    (base / "snapshots" / commit / hub.LEARNED_FILE).symlink_to(Path("../../blobs") / sha)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return commit


def test_hub_ids_and_paths_are_told_apart(tmp_path):
    assert hub.parse_hub_id("user/repo") == ("user/repo", None)
    assert hub.parse_hub_id("user/repo@v1") == ("user/repo", "v1")
    for name in ("car.safetensors", "out/car.safetensors", "./a/b", "/abs/x", "a/b/c", "just-a-name"):
        assert hub.parse_hub_id(name) is None, name
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "repo").write_text("x")
    os.chdir(tmp_path)
    try:
        assert hub.parse_hub_id("user/repo") is None  # an existing local path stays a path
    finally:
        os.chdir(ROOT)


def test_push_folder_holds_the_artifact_card_images_and_report(learned_file, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(shapes_scene(3, 48)[0]).save(photo)
    report = {"classes": SHAPE_CLASSES, "num_images": 5, "dataset": "shapes-val", "miou": 0.5,
              "accumulated": {"miou": 0.5, "per_class": {c: 0.1 * (i + 1) for i, c in
                                                         enumerate(SHAPE_CLASSES)}, "excluded": []}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    folder = tmp_path / "repo"
    assert main(["push", str(learned_file), REPO, "--examples", str(photo), "--eval",
                 str(tmp_path / "report.json"), "--folder", str(folder)]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["README.md", "eval.json", "images/example0.overlay.png", "images/example0.png",
                     "images/segmented0.overlay.png", "images/segmented0.png", "learned.safetensors"]
    assert (folder / "learned.safetensors").read_bytes() == learned_file.read_bytes()
    assert json.loads((folder / "eval.json").read_text()) == report
    assert max(Image.open(folder / "images/segmented0.overlay.png").size) == 48  # small stays small
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert card.data.library_name == "slimeseg" and card.data.pipeline_tag == "image-segmentation"
    learned = Learned.load(learned_file)
    text = card.text
    colours = palette(len(SHAPE_CLASSES))
    for k, name in enumerate(SHAPE_CLASSES):
        assert f"| {k} | {name} | `#{''.join(f'{int(c):02x}' for c in colours[k])}` |" in text
    assert f"base model: `{learned.model_id}`" in text and learned.fingerprint in text
    assert f"slimeseg segment {REPO} photos/ --out labels/" in text
    assert "![](images/segmented0.overlay.png)" in text and "photo.png (segmented)" in text
    assert "| **mIoU** | **50.0** |" in text and f"| {SHAPE_CLASSES[2]} | 30.0 |" in text
    assert '"image_size": 64' in text  # the settings


def test_push_offline_is_one_line_and_sends_nothing(learned_file, capsys):
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # the hub client refuses before any request
    assert main(["push", str(learned_file), REPO]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {REPO}: cannot push to the hub (")
    assert err.endswith("; unset HF_HUB_OFFLINE")


def test_push_refuses_a_bad_repo_id_and_a_non_empty_folder(learned_file, tmp_path, capsys):
    assert main(["push", str(learned_file), "not a repo", "--folder", str(tmp_path / "f")]) == 2
    assert "not a hub repo id" in capsys.readouterr().err
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x").write_text("x")
    assert main(["push", str(learned_file), REPO, "--folder", str(tmp_path / "f")]) == 2
    assert "directory is not empty" in capsys.readouterr().err
    assert main(["push", "someone/elsewhere", REPO, "--folder", str(tmp_path / "g")]) == 2
    assert "someone/elsewhere: learned-embeddings file not found" in capsys.readouterr().err


def test_hub_id_loads_offline_from_the_cache(learned_file, tmp_path, monkeypatch, segmenter,
                                             other_tiny_dir):
    cache = tmp_path / "cache"
    commit = lay_out_cache(cache, REPO, learned_file)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: tests never touch the network
    want = Learned.load(learned_file).digest()
    for name, rev in ((REPO, None), (f"{REPO}@main", None), (REPO, commit), (f"{REPO}@{commit}", None)):
        got = Learned.load(name, revision=rev)
        assert got.digest() == want
    path = hub.fetch_learned(REPO)
    assert path.resolve().parent.name == "blobs" and str(path).startswith(str(cache))
    with pytest.raises(ArtifactError, match=f"^{REPO}@nope: no such file, and hub repo '{REPO}' at "
                                            "revision 'nope' is not in the local cache"):
        Learned.load(f"{REPO}@nope")
    # the same model check as a local file, naming the hub id
    with pytest.raises(ArtifactError, match=f"^{REPO}: learned with model '.*', but the model in use"):
        Segmenter.from_learned(REPO, str(other_tiny_dir), device="cpu")
    labels = Segmenter.from_learned(REPO, device="cpu").predict(shapes_scene(2, 48)[0])
    assert np.array_equal(labels, segmenter.predict(shapes_scene(2, 48)[0], Learned.load(learned_file)))


def _cli(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "slimeseg", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_segment_with_a_hub_id_offline_and_a_missing_one(learned_file, tmp_path):
    cache = tmp_path / "cache"
    commit = lay_out_cache(cache, REPO, learned_file)
    photo = tmp_path / "photo.png"
    Image.fromarray(shapes_scene(4, 40)[0]).save(photo)
    local, pinned = tmp_path / "local", tmp_path / "pinned"
    assert main(["segment", str(learned_file), str(photo), "--out", str(local), "--quiet"]) == 0
    run = _cli(["segment", REPO, str(photo), "--out", str(pinned), "--revision", commit, "--quiet"],
               cache)
    assert run.returncode == 0, run.stderr
    assert (pinned / "photo.png").read_bytes() == (local / "photo.png").read_bytes()
    missing = tmp_path / "missing"
    run = _cli(["segment", "someone/unknown", str(photo), "--out", str(missing)], cache)
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"error: someone/unknown: no such file, and hub repo 'someone/unknown' is not in the local "
        f"cache ({cache}) while offline mode (HF_HUB_OFFLINE) is on; give a local .safetensors "
        "file or fetch it once online")
    assert not missing.exists()  # nothing written


@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="uploading needs HF_TOKEN (a hub token)")
def test_push_uploads_and_the_repo_loads_back(learned_file, tmp_path):  # pragma: no cover - network
    api = huggingface_hub.HfApi(token=os.environ["HF_TOKEN"])
    repo = f"{api.whoami()['name']}/slimeseg-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    try:
        run = subprocess.run([sys.executable, "-m", "slimeseg", "push", str(learned_file), repo,
                              "--private"], capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stderr
        assert {"README.md", "learned.safetensors"} <= set(api.list_repo_files(repo))
        run = subprocess.run([sys.executable, "-c", "import sys; from slimeseg.artifact import "
                              f"Learned; print(Learned.load('{repo}').digest())"],
                             capture_output=True, text=True, env=env, timeout=600)
        assert run.stdout.strip() == Learned.load(learned_file).digest()
    finally:
        api.delete_repo(repo, missing_ok=True)
