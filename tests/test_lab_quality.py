"""The lab quality benchmark's fast variant (benchmarks/quality.py --fast) as a regression test.

A 1-shot SLiMe fit on one synthetic car, scored on 16 held-out cars with the lab SD, with WAS
maps and with cross-attention only. Measured here: mIoU 0.235 (WAS) and 0.219 (cross-attention),
the wheel class 0.225 / 0.177. Predicting background everywhere scores 0.177 on these images and
no part at all, so the floors below fail when the engine stops learning parts.
"""

from __future__ import annotations

import numpy as np
import pytest

from lab import quality
from slimeseg.lab import World
from slimeseg.metrics import ConfusionMatrix


@pytest.fixture(scope="module")
def report() -> dict:
    return quality.main(["--fast"])


def _all_background_miou(n: int, size: int, world_seed: int) -> float:
    world = World("car", size=size, seed=world_seed)
    cm = ConfusionMatrix(len(world.classes))
    for i in range(n):
        mask = world.sample(i).mask
        cm.update(np.zeros_like(mask), mask)
    return float(cm.result(list(world.classes)).miou)


def test_fast_variant_learns_parts_on_held_out_images(report: dict) -> None:
    assert report["test_images"] == 16 and report["size"] == 256
    trivial = _all_background_miou(report["test_images"], report["size"], report["test_world_seed"])
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"full", "no-WAS"}
    for variant, row in rows.items():
        assert row["miou_mean"] >= max(0.19, trivial + 0.01), (variant, row["miou_mean"], trivial)
        parts = {c: v[0] for c, v in row["per_class"].items() if c != "background" and v is not None}
        assert max(parts.values()) >= 0.10, (variant, parts)
