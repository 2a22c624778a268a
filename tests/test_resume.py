"""The resume state (`slimeseg.resume.ResumeState`): one class stores, checks and restores it."""

from __future__ import annotations

import pytest
import torch

from slimeseg import Learned, SlimeConfig
from slimeseg.errors import ArtifactError
from slimeseg.resume import AdamMoments, ResumeState

K, D = 4, 8


def _state(**changes) -> ResumeState:
    full = ResumeState(step=3, rng=torch.Generator().manual_seed(1).get_state(), order=[2, 0],
                       current=torch.randn(K - 1, D),
                       adam=AdamMoments(torch.randn(K - 1, D), torch.rand(K - 1, D), torch.tensor([3.0])),
                       best=torch.randn(K - 1, D), best_meta=(0.5, 2, 1), loss_scale=(1024.0, 7))
    for name, value in changes.items():
        setattr(full, name, value)
    return full


def test_tensors_round_trip_with_the_file_format_names():
    state = _state()
    tensors = state.to_tensors()
    assert list(tensors) == ["step", "rng", "order", "adam_exp_avg", "adam_exp_avg_sq", "adam_step",
                             "loss_scale", "current", "best", "best_meta"]
    assert tensors["step"].dtype == tensors["order"].dtype == torch.int64
    assert tensors["best_meta"].dtype == tensors["loss_scale"].dtype == torch.float64
    back = ResumeState.from_tensors(tensors, K, D)
    assert (back.step, back.order, back.best_meta, back.loss_scale) == (3, [2, 0], (0.5, 2, 1), (1024.0, 7))
    assert torch.equal(back.rng, state.rng) and torch.equal(back.current, state.current)
    assert torch.equal(back.adam.exp_avg_sq, state.adam.exp_avg_sq) and torch.equal(back.best, state.best)
    minimal = ResumeState.from_tensors(_state(adam=None, best=None, loss_scale=None, current=None)
                                       .to_tensors(), K, D)
    assert (minimal.adam, minimal.best, minimal.loss_scale, minimal.current) == (None,) * 4


@pytest.mark.parametrize("change", [
    lambda t: t.pop("step"), lambda t: t.pop("rng"), lambda t: t.pop("order"),
    lambda t: t.pop("adam_step"), lambda t: t.pop("best_meta"), lambda t: t.pop("best"),
    lambda t: t.update(step=torch.tensor([1.0])), lambda t: t.update(rng=torch.zeros(3, dtype=torch.uint8)),
    lambda t: t.update(order=torch.zeros(2, 2, dtype=torch.int64)),
    lambda t: t.update(current=torch.zeros(K, D)), lambda t: t.update(best=torch.full((K - 1, D), float("nan"))),
    lambda t: t.update(adam_exp_avg=torch.zeros(K - 1, D, dtype=torch.int64)),
    lambda t: t.update(loss_scale=torch.zeros(3)),
])
def test_malformed_state_is_one_line_naming_the_file(change):
    tensors = _state().to_tensors()
    change(tensors)
    with pytest.raises(ArtifactError) as err:
        ResumeState.from_tensors(tensors, K, D, "run.ckpt")
    assert str(err.value) == "run.ckpt: checkpoint resume state is incomplete or malformed"


def test_resume_without_current_and_resuming_twice(segmenter, scene, tmp_path):
    """Files from before `current` was saved continue from the context's rows; resuming does not
    change the checkpoint it continues (twice gives the same result)."""
    image, mask, classes = scene
    cfg = SlimeConfig(image_size=128, steps=5, seed=2)
    full = segmenter.fit([image], [mask], classes, cfg, progress=False)
    partial = segmenter.fit([image], [mask], classes, cfg, progress=False,
                            callback=lambda step, total, losses: step < 3)
    assert partial.state["step"].item() == 3
    partial.save(tmp_path / "old.ckpt")
    old = Learned.load(tmp_path / "old.ckpt")
    del old.state["current"]  # as written before it was saved
    for checkpoint in (old, partial, partial):
        resumed = segmenter.fit([image], [mask], classes, cfg, progress=False, resume=checkpoint)
        assert torch.equal(resumed.context, full.context)
        assert resumed.history["loss"] == full.history["loss"]
