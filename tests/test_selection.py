"""Best-step selection, early stopping and loss scaling in `fit` (the reference's protocol)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimeseg import Learned, SlimeConfig
from slimeseg.errors import InputError
from slimeseg.examples import prepare_examples
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene
from slimeseg.training import LossScale, TrainingJob, split_validation, validate

FAST = dict(image_size=64, progress=False, augment=False)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_validation_rule_follows_the_reference():
    pairs = [shapes_scene(s, 32) for s in range(3)]
    examples = prepare_examples([p[0] for p in pairs], [p[1] for p in pairs], SHAPE_CLASSES)
    off = SlimeConfig()
    assert split_validation(examples, off) == (examples, [])  # nothing validates unless used
    best = SlimeConfig(select_best=True)
    assert split_validation(examples[:1], best) == (examples[:1], examples[:1])  # 1-shot: itself
    assert split_validation(examples, best) == (examples[:2], examples[2:])  # k-shot: one held out
    assert split_validation(examples, best.replace(validation="train")) == (examples, examples)
    with pytest.raises(InputError, match="at least 2 examples"):
        split_validation(examples[:1], best.replace(validation="holdout"))


def test_select_best_returns_the_best_validated_embeddings(segmenter, scene):
    image, mask, classes = scene
    learned = segmenter.fit([image], [mask], classes, steps=12, select_best=True, validate_every=3,
                            **FAST)
    hist = learned.history
    assert [s for s, _ in hist["validation"]] == [3, 6, 9, 12]
    scores = [v for _, v in hist["validation"]]
    assert hist["best_validation"] == max(scores)
    assert hist["best_step"] == max(s for s, v in hist["validation"] if v == max(scores))  # ties: later
    assert not learned.state  # a finished run holds no resume state
    # the returned embeddings are the ones that scored best: validating them again agrees
    cfg = SlimeConfig.from_dict(learned.config)
    job = TrainingJob.create(segmenter.sd, prepare_examples([image], [mask], classes), classes, cfg)

    class Current:  # what `validate` reads from a training state
        trainable = learned.context[1:len(classes)]

    assert validate(job, Current()) == pytest.approx(hist["best_validation"], abs=1e-6)
    plain = segmenter.fit([image], [mask], classes, steps=12, **FAST)
    assert "validation" not in plain.history
    if hist["best_step"] != 12:
        assert not torch.equal(learned.context, plain.context)


def test_holdout_trains_on_the_rest_and_records_what_validated(segmenter):
    pairs = [shapes_scene(s, 64) for s in (0, 1)]
    learned = segmenter.fit([p[0] for p in pairs], [p[1] for p in pairs], SHAPE_CLASSES, steps=4,
                            select_best=True, **FAST)
    assert len(learned.image_hashes) == 1 and len(learned.history["validation_hashes"]) == 1
    assert learned.image_hashes != learned.history["validation_hashes"]
    explicit = segmenter.fit([pairs[0][0]], [pairs[0][1]], SHAPE_CLASSES, steps=2,
                             val_images=[pairs[1][0]], val_masks=[pairs[1][1]], **FAST)
    assert explicit.history["validation_hashes"] == learned.history["validation_hashes"]


def test_patience_stops_a_run_that_stopped_improving(segmenter, scene):
    image, mask, classes = scene
    # lr ~0: nothing improves; float32 validation, as bfloat16 (the "auto" default on CPUs with
    # its units) can flip near-tied pixels between such nearly equal embeddings
    learned = segmenter.fit([image], [mask], classes, steps=200, lr=1e-6, select_best=True,
                            patience=2, validate_every=2, encoder_dtype="model", autocast="off", **FAST)
    hist = learned.history
    assert hist["stopped_early_at"] == hist["steps_done"] == 6  # validations at 2 (best), 4, 6
    assert len(hist["validation"]) == 3 and not learned.state


def test_resume_with_selection_equals_an_uninterrupted_run(segmenter, scene, tmp_path, one_thread):
    """Bitwise, so on one thread (multi-threaded CPU kernels are not always bitwise repeatable)."""
    image, mask, classes = scene
    cfg = SlimeConfig(steps=10, seed=2, select_best=True, validate_every=2, patience=50, **{
        k: v for k, v in FAST.items() if k != "progress"})
    full = segmenter.fit([image], [mask], classes, cfg, progress=False)
    ckpt = tmp_path / "sel.ckpt"

    def interrupt(step, total, losses):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segmenter.fit([image], [mask], classes, cfg, progress=False, callback=interrupt,
                      checkpoint_path=ckpt, checkpoint_every=3)
    partial = Learned.load(ckpt)
    assert "best" in partial.state and partial.history["validation"]
    resumed = segmenter.fit([image], [mask], classes, cfg, progress=False, resume=partial)
    assert torch.equal(resumed.context, full.context)
    assert resumed.history["validation"] == full.history["validation"]
    assert resumed.history["best_step"] == full.history["best_step"]


def test_loss_scale_skips_overflows_and_adapts():
    p = torch.zeros(3, requires_grad=True)
    dyn = LossScale(2.0**10, dynamic=True, growth_interval=2)
    dyn.backward((p * 1e-3).sum())
    assert torch.allclose(p.grad, torch.full((3,), 1e-3)) is False  # still scaled before unscale
    assert dyn.unscale(p) and torch.allclose(p.grad, torch.full((3,), 1e-3))
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    assert not dyn.unscale(p) and dyn.scale == 2.0**9  # overflow: skip and halve
    for _ in range(2):
        p.grad = torch.ones(3)
        assert dyn.unscale(p)
    assert dyn.scale == 2.0**10  # two clean steps: grow back
    static = LossScale(128.0, dynamic=False)
    p.grad = torch.tensor([float("nan"), 0.0, 0.0])
    assert not static.unscale(p) and static.scale == 128.0
    assert LossScale.for_run(SlimeConfig(), torch.float32) is None
    assert LossScale.for_run(SlimeConfig(), torch.float16).dynamic
    assert LossScale.for_run(SlimeConfig(loss_scale="static"), torch.bfloat16).scale == 2.0**16


def test_reference_augmentation_order_is_seeded(segmenter, scene, one_thread):
    image, mask, classes = scene
    kw = dict(image_size=64, steps=3, progress=False, augment_order="reference", seed=4)
    a = segmenter.fit([image], [mask], classes, **kw)
    b = segmenter.fit([image], [mask], classes, **kw)
    c = segmenter.fit([image], [mask], classes, **{**kw, "augment_order": "slimeseg"})
    assert torch.equal(a.context, b.context)
    assert not torch.equal(a.context, c.context), "augment_order had no effect"
    assert np.isfinite(a.history["loss"]).all()
