"""A fixed-seed 1-shot fit on the lab SD gives the recorded embeddings (tests/assets/regression).

First recorded on main d90dfe0 before the engine was split into modules (lab SD v1); re-recorded
on main c02fc36 when the lab SD v3 replaced v1 (one torch thread both times).

On the machine that recorded them the result is bitwise equal; elsewhere float sums may differ
in the last bits (two threads instead of one: max |difference| 1e-5 after these 30 steps), so
the test allows 1e-3, far below what any change to the method moves (steps of lr 0.1).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from slimeseg import Segmenter, SlimeConfig
from slimeseg.synthetic import World

ASSETS = Path(__file__).parent / "assets"
RECORDED = ASSETS / "regression" / "lab-car-1shot-seed0.safetensors"


def test_fixed_seed_lab_fit_matches_the_recorded_embeddings():
    with safe_open(str(RECORDED), framework="pt") as fh:
        recorded = fh.get_tensor("context")
        settings = json.loads(fh.metadata()["settings"])
    world = World("car", size=256, seed=0)
    example = world.sample(0)
    seg = Segmenter.from_pretrained(str(ASSETS / "lab-sd"), device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        learned = seg.fit([example.image], [example.mask], list(world.classes), SlimeConfig(**settings),
                          progress=False)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(learned.context, recorded, rtol=0, atol=1e-3)
