"""Losses and map post-processing against direct implementations of METHOD.md's formulas."""

from __future__ import annotations

import torch

from slimeseg import maps
from slimeseg.losses import ce_loss, class_weights, mse_loss


def test_class_weights_hand_computed():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [2, 2, 0, 0], [0, 0, 0, 0]])
    w = class_weights(mask, 4)  # fg pixels: 6 of class 1, 2 of class 2, class 3 absent
    torch.testing.assert_close(w, torch.tensor([1.0, 8 / 6, 8 / 2, 0.0]))


def test_ce_matches_weighted_formula():
    torch.manual_seed(0)
    scores = torch.randn(3, 5, 5)
    mask = torch.randint(0, 3, (5, 5))
    w = class_weights(mask, 3)
    logp = scores.log_softmax(0)
    picked = logp.gather(0, mask[None])[0]
    expected = -(w[mask] * picked).sum() / w[mask].sum()
    torch.testing.assert_close(ce_loss(scores, mask, w), expected)


def test_mse_is_sum_over_classes_of_mean_error():
    torch.manual_seed(1)
    was = torch.rand(3, 4, 4)
    mask = torch.randint(0, 3, (4, 4))
    expected = sum(((was[k] - (mask == k).float()) ** 2).mean() for k in range(3))
    torch.testing.assert_close(mse_loss(was, mask), expected)


def test_was_direct_is_attention_weighted_average():
    torch.manual_seed(2)
    a = torch.rand(1, 6, 6).softmax(-1)  # rows: queries p, columns: keys q
    r = torch.rand(1, 2, 6)
    s = maps.was_direct(r, a)
    for k in range(2):
        for p in range(6):
            assert torch.isclose(s[0, k, p], (a[0, p] * r[0, k]).sum())


def test_reference_rescale_maps_into_cross_attention_range():
    torch.manual_seed(3)
    was = torch.rand(1, 3, 4, 4) * 7 + 2
    probs = torch.rand(1, 3, 4, 4) * 0.3
    out = maps.reference_rescale(was, probs)
    torch.testing.assert_close(out.flatten(2).amin(-1), probs.flatten(2).amin(-1))
    torch.testing.assert_close(out.flatten(2).amax(-1), probs.flatten(2).amax(-1))


def test_reference_exact_values_drop_weak_classes_and_zero_the_first_kept_below_its_mean():
    from slimeseg.attention import AttentionStore

    store = AttentionStore(3, (2, 2), want_probs=True)
    probs = torch.tensor([[[0.1, 0.1, 0.1, 0.15],  # background peaks at 0.15: dropped at 0.2
                           [0.3, 0.1, 0.5, 0.2],  # the first kept class: zeroed below its mean 0.275
                           [0.2, 0.6, 0.1, 0.1]]]).view(1, 3, 2, 2)
    store.cross_probs = [probs]
    got = maps.reference_values(store, (2, 2), threshold=0.2)[0]
    torch.testing.assert_close(got[0], torch.zeros(4))
    torch.testing.assert_close(got[1], torch.tensor([0.3, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(got[2], probs[0, 2].flatten())
    plain = maps.reference_values(store, (2, 2))[0]  # no threshold: background zeroed below its mean
    torch.testing.assert_close(plain[0], torch.tensor([0.0, 0.0, 0.0, 0.15]))
