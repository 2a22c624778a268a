"""SLiMe's three losses (METHOD.md "Losses"): weighted CE on A_ca, MSE on WAS maps, LDM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# IGNORE: cells no loss reads (a dataset's void, a pseudo-labelled image's unsure cells, `selftrain`)
from .config import IGNORE


def class_weights(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Reference CE weights: fg pixels / class pixels for present fg classes, 1 for bg, 0 if absent
    (IGNORE cells are not counted)."""
    counts = torch.bincount(mask.flatten().long(), minlength=IGNORE + 1)[:num_classes].float()
    counts[0] = 0
    weights = torch.where(counts > 0, counts.sum() / counts.clamp(min=1), torch.zeros_like(counts))
    weights[0] = 1.0
    return weights  # (K,)


def ce_loss(scores: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of pre-softmax class scores (K, h, w) against the (h, w) mask (IGNORE cells
    left out; zero, keeping the graph, when every cell is)."""
    if bool((mask == IGNORE).all()):
        return scores.sum() * 0.0
    return F.cross_entropy(scores[None], mask[None].long(), weight=weights, ignore_index=IGNORE)


def mse_loss(was: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over classes of the mean squared error between WAS maps (K, h, w) and one-hot masks,
    over the cells that are not IGNORE (all of them in a user's mask)."""
    k = was.shape[0]
    known = mask != IGNORE  # (h, w)
    if bool(known.all()):
        onehot = F.one_hot(mask.long(), k).permute(2, 0, 1).to(was.dtype)  # (K, h, w)
        return F.mse_loss(was, onehot) * k
    onehot = F.one_hot(torch.where(known, mask, 0).long(), k).permute(2, 0, 1).to(was.dtype)  # (K, h, w)
    return ((was - onehot).square() * known).sum() / known.sum().clamp(min=1)


def ldm_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The usual diffusion loss: MSE between the UNet's prediction and its target."""
    return F.mse_loss(prediction.float(), target.float())
