"""A checkpoint's resume state: what a fit needs besides its embeddings to continue identically.

`ResumeState` is the one owner of that format: its fields are the pieces, `to_tensors` stores
them as the artifact's `state.NAME` tensors, `from_tensors` checks and reads them back (for
`Learned.load` and for resuming), and `capture` / `apply` take them from and put them into a
running fit's `TrainState`. A new piece of per-step state is one more field here, handled in
those four methods and nowhere else. Depends on torch only, so `artifact` can import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import ArtifactError

if TYPE_CHECKING:
    from .training import TrainState

MALFORMED = "checkpoint resume state is incomplete or malformed"


@dataclass
class AdamMoments:
    """Adam's state for the one trainable tensor (absent before its first update)."""

    exp_avg: torch.Tensor  # (K-1, D)
    exp_avg_sq: torch.Tensor  # (K-1, D)
    step: torch.Tensor  # (1,) float32: updates done (Adam keeps it as a 0-d tensor)


@dataclass
class ResumeState:
    """Everything a step changes besides the history (kept in the metadata) and the context."""

    step: int  # steps done
    rng: torch.Tensor  # (n,) uint8: the CPU generator's state as of the last whole step
    order: list[int]  # what is left of this epoch's pair order
    current: torch.Tensor | None = None  # (K-1, D) the trained embeddings (the context may hold
    # the best ones instead); absent in files from before it was saved: the context's rows
    adam: AdamMoments | None = None
    best: torch.Tensor | None = None  # (K-1, D) the best validated embeddings so far
    best_meta: tuple[float, int, int] = (-1.0, 0, 0)  # their score, step, validations since
    loss_scale: tuple[float, int] | None = None  # scale, clean steps (runs with a loss scaler)

    # -- a running fit <-> this --
    @classmethod
    def capture(cls, state: TrainState) -> ResumeState:
        """The resume state of `state` as of now (copies: later steps do not change it)."""
        st = next(iter(state.optimizer.state.values()), {})
        adam = None
        if st:
            adam = AdamMoments(st["exp_avg"].detach().cpu().clone(),
                               st["exp_avg_sq"].detach().cpu().clone(),
                               torch.as_tensor(st["step"]).reshape(1).float().cpu())
        scaler = state.scaler
        return cls(step=state.step, rng=state.gen.get_state(), order=list(state.order),
                   current=state.trainable.detach().cpu().clone(), adam=adam,
                   best=None if state.best is None else state.best.detach().cpu().clone(),
                   best_meta=(state.best_score, state.best_step, state.since_best),
                   loss_scale=None if scaler is None else (scaler.scale, scaler.clean))

    def apply(self, state: TrainState, embeddings: torch.Tensor) -> None:
        """Put this into `state`; `embeddings` (K-1, D) are the ones to continue from when the
        file holds no `current` (the context's rows)."""
        current = self.current if self.current is not None else embeddings
        with torch.no_grad():
            state.trainable.copy_(current.to(state.trainable))
        state.gen.set_state(self.rng)
        if self.adam is not None:  # copies: resuming must not change the checkpoint's tensors
            state.optimizer.state[state.trainable] = {
                "step": self.adam.step.reshape(()).clone(),
                "exp_avg": self.adam.exp_avg.to(state.trainable, copy=True),
                "exp_avg_sq": self.adam.exp_avg_sq.to(state.trainable, copy=True)}
        if state.scaler is not None and self.loss_scale is not None:
            state.scaler.scale, state.scaler.clean = self.loss_scale
        if self.best is not None:
            state.best = self.best.to(state.trainable, copy=True)
            state.best_score, state.best_step, state.since_best = self.best_meta
        state.step, state.order = self.step, list(self.order)

    # -- this <-> the artifact's tensors --
    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors stored as `state.NAME` in the artifact (these names are the file format)."""
        out = {"step": torch.tensor([self.step]), "rng": self.rng,
               "order": torch.tensor(self.order, dtype=torch.int64)}
        if self.adam is not None:
            out.update(adam_exp_avg=self.adam.exp_avg, adam_exp_avg_sq=self.adam.exp_avg_sq,
                       adam_step=self.adam.step)
        if self.loss_scale is not None:
            out["loss_scale"] = torch.tensor([self.loss_scale[0], float(self.loss_scale[1])],
                                             dtype=torch.float64)
        if self.current is not None:
            out["current"] = self.current
        if self.best is not None:
            out["best"] = self.best
            out["best_meta"] = torch.tensor(list(self.best_meta), dtype=torch.float64)
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], k: int, width: int,
                     name: str | os.PathLike = "checkpoint") -> ResumeState:
        """Check and read `to_tensors` output for K classes of width D; anything missing or
        malformed is one ArtifactError line naming `name` (the file)."""
        step, rng, order = (tensors.get(n) for n in ("step", "rng", "order"))
        rows = (k - 1, width)

        def embeddings(t: torch.Tensor | None) -> bool:  # (K-1, D) floats, finite
            return (t is not None and tuple(t.shape) == rows and t.is_floating_point()
                    and bool(torch.isfinite(t).all()))

        ok = (step is not None and step.dtype == torch.int64 and step.numel() == 1
              and rng is not None and rng.dtype == torch.uint8
              and tuple(rng.shape) == (torch.Generator().get_state().numel(),)
              and order is not None and order.dtype == torch.int64 and order.ndim == 1)
        adam = [tensors.get(n) for n in ("adam_exp_avg", "adam_exp_avg_sq", "adam_step")]
        if any(t is not None for t in adam):
            ok = ok and all(t is not None for t in adam) and adam[2].numel() == 1 and all(
                tuple(t.shape) == rows and t.is_floating_point() for t in adam[:2])
        for n in ("current", "best"):
            ok = ok and (n not in tensors or embeddings(tensors[n]))
        ok = ok and ("best" in tensors) == ("best_meta" in tensors)
        ok = ok and all(tensors[n].numel() == size
                        for n, size in (("best_meta", 3), ("loss_scale", 2)) if n in tensors)
        if not ok:
            raise ArtifactError(f"{name}: {MALFORMED}")
        meta = tensors["best_meta"].reshape(-1).tolist() if "best" in tensors else None
        scale = tensors["loss_scale"].reshape(-1).tolist() if "loss_scale" in tensors else None
        return cls(step=int(step.reshape(-1)[0]), rng=rng, order=order.tolist(),
                   current=tensors.get("current"),
                   adam=None if adam[0] is None else AdamMoments(*adam),
                   best=tensors.get("best"),
                   best_meta=(-1.0, 0, 0) if meta is None else (meta[0], int(meta[1]), int(meta[2])),
                   loss_scale=None if scale is None else (float(scale[0]), int(scale[1])))
