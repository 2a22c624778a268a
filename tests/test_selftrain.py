"""Self-training (fusion (c)): pseudo-labels, the losses' ignored cells, the step schedule, a fit
on the tiny SD with unlabelled images (shapes, determinism, lineage, resume checks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slimeseg import SlimeConfig, selftrain, training
from slimeseg.errors import InputError
from slimeseg.losses import IGNORE, ce_loss, class_weights, mse_loss
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

FAST = {"image_size": 64, "steps": 6, "view_pool": 0}


def test_pseudo_label_keeps_sure_pixels_only():
    scores = torch.tensor([[[0.9, 0.4]], [[0.1, 0.35]], [[0.0, 0.25]]])  # (K=3, 1, 2)
    lab = selftrain.pseudo_label(scores, 0.5)  # (1, 2): certainties 0.85 and 0.1
    assert lab.shape == (1, 2) and lab.tolist() == [[0, IGNORE]]
    assert selftrain.pseudo_label(scores, 0.05).tolist() == [[0, 0]]
    # certainty is measured from chance: a 2-class tie is never sure, a 5-class share of 0.3 is 0.125
    tie = torch.full((2, 1, 1), 0.5)
    assert selftrain.pseudo_label(tie, 0.01).tolist() == [[IGNORE]]
    assert selftrain.certainty(torch.tensor(0.3), 5).item() == pytest.approx(0.125)
    assert selftrain.certainty(torch.tensor(1.0), 4).item() == pytest.approx(1.0)


def test_losses_leave_ignored_cells_out():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 4, 4, generator=gen, requires_grad=True)  # (K, h, w)
    was = torch.rand(3, 4, 4, generator=gen, requires_grad=True)
    mask = torch.randint(0, 3, (4, 4), generator=gen)
    part = mask.clone()
    part[:, 2:] = IGNORE  # the right half unknown
    w = class_weights(part, 3)
    assert w.shape == (3,) and torch.equal(w, class_weights(mask[:, :2], 3))  # counted on the left only
    torch.testing.assert_close(ce_loss(scores, part, w), ce_loss(scores[:, :, :2], mask[:, :2], w))
    torch.testing.assert_close(mse_loss(was, part), mse_loss(was[:, :, :2], mask[:, :2]))
    none = torch.full_like(mask, IGNORE)
    zero = ce_loss(scores, none, class_weights(none, 3))
    assert zero.item() == 0.0 and zero.requires_grad  # all unknown: no loss, no NaN
    ce_loss(scores, part, w).backward()
    assert torch.count_nonzero(scores.grad[:, :, 2:]) == 0  # no gradient from the unknown half


def _job(n_pseudo: int, **cfg) -> training.TrainingJob:
    """A job shell with only what `pseudo_index`, `total` and `validate_every` read."""
    job = training.TrainingJob.__new__(training.TrainingJob)
    job.cfg, job.parent, job.examples = SlimeConfig(**cfg), None, [object()]
    job.pseudo = [object()] * n_pseudo
    return job


def test_pseudo_steps_share_and_order():
    job = _job(3, steps=20, self_train_share=0.5, seed=1)
    assert job.total == 40  # the example keeps its 20 steps
    picks = [training.pseudo_index(job, s) for s in range(job.total)]
    assert sum(p is not None for p in picks) == 20 and picks[0] is None and picks[1] is not None
    seen = [p for p in picks if p is not None]
    for r in range(0, 18, 3):  # each round visits every pseudo pair once
        assert sorted(seen[r:r + 3]) == [0, 1, 2]
    assert picks == [training.pseudo_index(job, s) for s in range(job.total)]  # a function of the step
    job = _job(3, steps=20, self_train_share=0.25)
    assert job.total == math.ceil(20 / 0.75) and sum(training.pseudo_index(job, s) is not None
                                                      for s in range(job.total)) == job.total // 4
    assert _job(0, steps=20).total == 20 and training.pseudo_index(_job(0, steps=20), 1) is None
    # validation once per epoch of the examples, the pseudo steps among them counted
    assert _job(3, steps=20).validate_every == 2 and _job(0, steps=20).validate_every == 1


def test_config_rejects_bad_self_training_settings():
    with pytest.raises(ValueError, match="self_train"):
        SlimeConfig(self_train_share=1.0)
    with pytest.raises(ValueError, match="self_train"):
        SlimeConfig(self_train_conf=1.5)


def test_fit_with_unlabelled_images(segmenter, tmp_path):
    image, mask = shapes_scene(0, 64)
    unlabelled = [shapes_scene(s, 64)[0] for s in (1, 2)]
    a = segmenter.fit([image], [mask], SHAPE_CLASSES, SlimeConfig(**FAST, seed=3), progress=False,
                      unlabelled=unlabelled)
    b = segmenter.fit([image], [mask], SHAPE_CLASSES, SlimeConfig(**FAST, seed=3), progress=False,
                      unlabelled=unlabelled)
    plain = segmenter.fit([image], [mask], SHAPE_CLASSES, SlimeConfig(**FAST, seed=3), progress=False)
    k = len(SHAPE_CLASSES)
    assert a.context.shape == plain.context.shape == (77, segmenter.sd.context_dim)
    assert torch.equal(a.context, b.context)  # seeded: the same pseudo-labels and steps
    assert not torch.equal(a.context[1:k], plain.context[1:k])  # the pseudo steps changed them
    assert a.history["steps_done"] == 12 and plain.history["steps_done"] == 6
    assert len(a.lineage[-1]["unlabelled"]) == 2 and "unlabelled" not in plain.lineage[-1]
    assert len(a.examples) == 1  # the artifact keeps the examples only, not the pseudo-labelled
    # no share of the steps: nothing labelled, the plain fit; a bare image is not a list of them
    none = segmenter.fit([image], [mask], SHAPE_CLASSES, SlimeConfig(**FAST, seed=3, self_train_share=0.0),
                         progress=False, unlabelled=unlabelled)
    assert torch.equal(none.context, plain.context) and "unlabelled" not in none.lineage[-1]
    with pytest.raises(InputError, match="list of images"):
        segmenter.fit([image], [mask], SHAPE_CLASSES, SlimeConfig(**FAST), progress=False,
                      unlabelled=unlabelled[0])
    pred = segmenter.predict(unlabelled[0], a)
    assert pred.shape == (64, 64) and pred.dtype == np.uint8
    # a checkpoint of a self-trained fit resumes only with the same unlabelled images
    ckpt = tmp_path / "c.safetensors"
    segmenter.fit([image], [mask], SHAPE_CLASSES, SlimeConfig(**FAST, seed=3), progress=False,
                  unlabelled=unlabelled, checkpoint_path=ckpt, checkpoint_every=4,
                  callback=lambda step, total, logged: step < 4)
    from slimeseg import Learned

    state = Learned.load(ckpt)
    with pytest.raises(InputError, match="unlabelled"):
        segmenter.fit([image], [mask], SHAPE_CLASSES, SlimeConfig(**FAST, seed=3), progress=False,
                      unlabelled=unlabelled[:1], resume=state)
    resumed = segmenter.fit([image], [mask], SHAPE_CLASSES, SlimeConfig(**FAST, seed=3), progress=False,
                            unlabelled=unlabelled, resume=state)
    torch.testing.assert_close(resumed.context, a.context)


def test_pseudo_examples_from_matching(segmenter):
    image, mask = shapes_scene(0, 64)
    cfg = SlimeConfig(image_size=64)
    from slimeseg.examples import prepare_examples

    examples = prepare_examples([image], [mask], SHAPE_CLASSES)
    matcher = segmenter._matcher(examples, SHAPE_CLASSES, cfg)
    big = np.kron(shapes_scene(1, 64)[0], np.ones((3, 3, 1), np.uint8))  # 192 px: reduced to 128
    ex = selftrain.pseudo_examples(segmenter.sd, matcher, [image, big], cfg.replace(self_train_conf=0.0))
    assert [e.mask.shape for e in ex] == [(64, 64), (128, 128)] and ex[1].image.shape == (3, 128, 128)
    # the example itself, labelled by its own bank: mostly its own mask where confident
    known = ex[0].mask != IGNORE
    assert bool(known.all()) and float((ex[0].mask == torch.from_numpy(mask.astype(np.int64))).float().mean()) > 0.8
    with pytest.warns(UserWarning, match="sure of no pixel"):
        none = selftrain.pseudo_examples(segmenter.sd, matcher, [image], cfg.replace(self_train_conf=1.0))
    assert none == []


def test_cli_train_with_unlabelled(tmp_path, tiny_dir, capsys):
    from PIL import Image

    from slimeseg import Learned
    from slimeseg.cli import main

    for s in range(3):
        image, mask = shapes_scene(s, 64)
        Image.fromarray(image).save(tmp_path / f"s{s}.png")
        Image.fromarray(mask).save(tmp_path / f"s{s}_mask.png")
    base = ["train", "--image", str(tmp_path / "s0.png"), "--mask", str(tmp_path / "s0_mask.png"),
            "--classes", ",".join(SHAPE_CLASSES), "--model", str(tiny_dir), "--steps", "2",
            "--image-size", "64", "--quiet"]
    out = tmp_path / "st.safetensors"
    assert main([*base, "--unlabelled", str(tmp_path / "s1.png"), "--unlabelled", str(tmp_path / "s2.png"),
                 "--self-train-share", "0.5", "--out", str(out)]) == 0
    learned = Learned.load(out)
    assert learned.history["steps_done"] == 4 and len(learned.lineage[-1]["unlabelled"]) == 2
    capsys.readouterr()
    # a bad unlabelled image fails in one line, naming it, before the model loads; nothing written
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main([*base, "--unlabelled", str(bad), "--out", str(tmp_path / "x.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "bad.png" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.safetensors").exists()
    assert main([*base, "--method", "match", "--unlabelled", str(tmp_path / "s1.png"),
                 "--out", str(tmp_path / "m.safetensors")]) != 0
    assert "--unlabelled" in capsys.readouterr().err
