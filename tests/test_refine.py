"""Warm starts: continuing learned embeddings with more (corrected) examples."""

from __future__ import annotations

import pytest
import torch

from slimeseg import Learned, Segmenter
from slimeseg.cli import main
from slimeseg.errors import ArtifactError, InputError
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

FAST = dict(image_size=64, progress=False, augment=False)


@pytest.fixture(scope="module")
def parent(segmenter) -> Learned:
    image, mask = shapes_scene(0, 64)
    return segmenter.fit([image], [mask], SHAPE_CLASSES, steps=5, **FAST)


def test_zero_steps_give_back_the_parents_embeddings(segmenter, parent):
    image, mask = shapes_scene(1, 64)
    same = segmenter.fit([image], [mask], SHAPE_CLASSES, init=parent, steps=0, **FAST)
    assert torch.equal(same.context, parent.context)
    assert same.lineage[-1]["parent"] == parent.digest() and same.lineage[:-1] == parent.lineage


def test_new_classes_start_from_the_prompt_old_ones_keep_theirs(segmenter, parent):
    image, mask = shapes_scene(1, 64)
    classes = [*SHAPE_CLASSES, "extra"]
    with pytest.warns(UserWarning, match="extra appear in no mask"):
        more = segmenter.fit([image], [mask], classes, init=parent, steps=0, **FAST)
    k = len(SHAPE_CLASSES)
    torch.testing.assert_close(more.context[1:k], parent.context[1:k], rtol=0, atol=0)
    prompt = segmenter.sd.encode_prompt(" ".join(["part"] * len(classes)))[0]
    torch.testing.assert_close(more.context[k], prompt[k], rtol=0, atol=0)
    assert more.lineage[-1]["new_classes"] == ["extra"]


def test_refinement_moves_on_from_the_parent_and_records_rounds(segmenter, parent):
    pairs = [shapes_scene(s, 64) for s in (0, 1)]
    child = segmenter.fit([p[0] for p in pairs], [p[1] for p in pairs], SHAPE_CLASSES, init=parent,
                          **FAST)
    assert child.history["steps_done"] == child.history["total_steps"] == 50  # refine_steps
    assert not torch.equal(child.context, parent.context)
    rounds = child.lineage
    assert [r["parent"] for r in rounds] == [None, parent.digest()]
    assert len(rounds[0]["examples"]) == 1 and len(rounds[1]["examples"]) == 2
    assert rounds[1]["steps"] == 50
    grandchild = segmenter.fit([pairs[1][0]], [pairs[1][1]], SHAPE_CLASSES, init=child, steps=2, **FAST)
    assert [r["parent"] for r in grandchild.lineage] == [None, parent.digest(), child.digest()]


def test_warm_start_refuses_another_model_and_fewer_classes(segmenter, parent, other_tiny_dir, tmp_path):
    image, mask = shapes_scene(1, 64)
    other = Segmenter.from_pretrained(str(other_tiny_dir), device="cpu")
    path = tmp_path / "parent.safetensors"
    parent.save(path)
    with pytest.raises(ArtifactError) as err:
        other.fit([image], [mask], SHAPE_CLASSES, init=path, steps=1, **FAST)
    msg = str(err.value)
    assert str(path) in msg and parent.model_id in msg and other.sd.model_id in msg
    with pytest.raises(InputError, match="same classes, or those followed by new ones"):
        segmenter.fit([image], [mask % 3], SHAPE_CLASSES[:3], init=parent, steps=1, **FAST)
    swapped = [SHAPE_CLASSES[0], SHAPE_CLASSES[2], SHAPE_CLASSES[1], SHAPE_CLASSES[3]]
    with pytest.raises(InputError, match="same classes"):
        segmenter.fit([image], [mask], swapped, init=parent, steps=1, **FAST)


def test_cli_init_uses_the_parents_model(parent, tmp_path, capsys):
    image, mask = shapes_scene(2, 64)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "fix.png")
    Image.fromarray(mask).save(tmp_path / "fix_mask.png")
    parent.save(tmp_path / "parent.safetensors")
    out = tmp_path / "child.safetensors"
    code = main(["train", "--init", str(tmp_path / "parent.safetensors"), "--image", str(tmp_path / "fix.png"),
                 "--mask", str(tmp_path / "fix_mask.png"), "--classes", ",".join(SHAPE_CLASSES),
                 "--image-size", "64", "--steps", "3", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    child = Learned.load(out)
    assert child.model_id == parent.model_id and child.lineage[-1]["parent"] == parent.digest()
