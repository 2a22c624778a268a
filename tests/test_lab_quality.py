"""The lab quality benchmark's fast variant (benchmarks/quality.py --fast) as a regression test.

A 1-shot SLiMe fit on one synthetic car, scored on 16 held-out cars with the lab SD, with WAS
maps and with cross-attention only. Measured here with the lab SD v3: mIoU 0.284 (WAS) and 0.286
(cross-attention), the wheel class 0.231 / 0.403 (v1 scored 0.235 / 0.219). Predicting background
everywhere scores 0.177 on these images and no part at all, so the floors below fail when the
engine stops learning parts, or falls back to v1's level.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lab import quality
from slimeseg.lab import World
from slimeseg.metrics import ConfusionMatrix


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quality") / "fast.json"


@pytest.fixture(scope="module")
def report(written: Path) -> dict:
    return quality.main(["--fast", "--json", str(written)])


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
    assert report["all_background"]["car"] == pytest.approx(trivial)  # the floor printed beside the rows
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"full", "no-WAS"}
    for variant, row in rows.items():
        assert row["miou_mean"] >= max(0.25, trivial + 0.05), (variant, row["miou_mean"], trivial)
        parts = {c: v[0] for c, v in row["per_class"].items() if c != "background" and v is not None}
        assert max(parts.values()) >= 0.15, (variant, parts)


def test_report_is_written_whole(report: dict, written: Path) -> None:
    """The JSON (rewritten after every fit, atomically) ends as the returned report; no temp file left."""
    saved = json.loads(written.read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"])) and len(saved["runs"]) == 2
    assert saved["size"] == 256  # the model's own training size when --size is not given
    assert [p.name for p in written.parent.iterdir()] == [written.name]


def test_table_shows_seeds_all_background_and_share_of_the_ceiling() -> None:
    rows = quality.summarise([quality.Run("car", 1, "full", seed, miou, {"background": 0.8, "body": miou}, 1.0, 200)
                              for seed, miou in enumerate([0.2, 0.3, 0.4, 0.3, 0.3])])
    assert rows[0]["miou_mean"] == pytest.approx(0.3) and rows[0]["seeds"] == [0, 1, 2, 3, 4]
    ceiling = {"miou": 0.6, "per_class": {"background": 0.9, "body": 0.3}, "n_train": 500, "weighting": "sqrt"}
    table = quality.format_table(rows, {"car": 0.177}, {"car": ceiling})
    line = next(x for x in table.splitlines() if " full " in x)
    assert line.split()[3:8] == ["5", "30.0", "±", "7.1", "17.7"] and line.split()[8] == "50"  # 30 of 60
    assert any(x.split()[1:3] == ["ceiling", "60.0"] for x in table.splitlines())


def test_ceiling_learns_parts_from_labels() -> None:
    """The linear ceiling at toy scale (16 labelled images): above all-background, all parts named."""
    from lab.ceiling import TEST_WORLD_SEED, ceiling
    from slimeseg import Segmenter

    seg = Segmenter.from_pretrained(str(quality.LAB_MODEL), device="cpu")
    test = [World("car", 256, TEST_WORLD_SEED).sample(i) for i in range(6)]
    masks = [s.mask for s in test]
    r = ceiling(seg.sd, "car", [s.image for s in test], masks, 256, n_train=16)
    assert r["features"] == 224 and r["latent"] == [32, 32] and r["weighting"] in ("none", "sqrt", "inverse")
    assert set(r["per_class"]) == set(World("car").classes)
    assert r["miou"] > quality.all_background_miou(masks, World("car").classes) + 0.05
