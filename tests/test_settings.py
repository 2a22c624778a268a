"""Settings are spelled once: CLI flags come from SlimeConfig's fields, and only what the user
typed reaches the config."""

from __future__ import annotations

import dataclasses

import pytest

from slimeseg.cli import build_parser, config_overrides, cpu_fit_hint
from slimeseg.config import BOTH, TRAIN, SlimeConfig, fast_fit


def _dests(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {a.dest for a in sub.choices[command]._actions}


def test_every_setting_has_a_flag_on_the_commands_it_concerns():
    fields = {f.name: f.metadata["scope"] for f in dataclasses.fields(SlimeConfig)}
    train = {n for n, s in fields.items() if s in (TRAIN, BOTH)}
    infer = {n for n, s in fields.items() if s == BOTH}
    assert {"lr", "steps", "use_mse", "flip_p", "crop_keep_fraction", "tiles"} <= train
    assert train <= _dests("train") and train <= _dests("reproduce")
    for command in ("segment", "eval"):
        assert infer <= _dests(command)
        assert not (train - infer) & _dests(command)  # no training flags where nothing trains
    assert all(f.metadata.get("help") for f in dataclasses.fields(SlimeConfig))


def test_only_flags_the_user_typed_become_overrides():
    parser = build_parser()
    args = parser.parse_args(["train", "--image", "a.png", "--mask", "m.png", "--classes", "bg,x",
                              "--out", "o.safetensors"])
    assert config_overrides(args) == {}
    args = parser.parse_args(["train", "--image", "a.png", "--mask", "m.png", "--classes", "bg,x",
                              "--out", "o.safetensors", "--no-was", "--no-augment", "--lr", "0.05",
                              "--steps", "7", "--normalization", "reference", "--preset", "horse",
                              "--rotate-degrees", "5"])
    assert config_overrides(args) == {"use_was": False, "augment": False, "lr": 0.05, "steps": 7,
                                      "normalization": "reference", "min_crop_ratio": 0.8,
                                      "rotate_degrees": 5.0}
    cfg = SlimeConfig().replace(**config_overrides(args))
    assert cfg.min_crop_ratio == 0.8 and cfg.epochs == SlimeConfig().epochs


@pytest.mark.parametrize("size, coarse", [(512, 256), (256, 128), (128, 64), (192, 64), (64, 0)])
def test_fast_fit_is_a_preset_beneath_the_typed_flags(size, coarse):
    base = ["train", "--image", "a.png", "--mask", "m.png", "--classes", "bg,x", "--out", "o.safetensors",
            "--fast-fit", "--image-size", str(size)]
    got = config_overrides(build_parser().parse_args(base))
    assert got == {"view_pool": 16, "gradients": "local", "coarse_size": coarse, "epochs": 100, "image_size": size}
    assert got == {**fast_fit(size), "image_size": size}
    SlimeConfig(**got)  # valid at every side
    typed = config_overrides(build_parser().parse_args(base + ["--view-pool", "4", "--epochs", "30"]))
    assert typed["view_pool"] == 4 and typed["epochs"] == 30 and typed["gradients"] == "local"
    assert "fast_fit" not in _dests("segment")


def test_a_long_cpu_fit_points_to_the_faster_options():
    hint = cpu_fit_hint("cpu", {}, fast_fit=False)
    assert hint and "--fast-fit" in hint and "--method match" in hint and "512 px" in hint
    assert "--method match" not in cpu_fit_hint("cpu", {"method": "slime"}, fast_fit=False)
    assert cpu_fit_hint("cpu", {}, fast_fit=True) is None
    assert cpu_fit_hint("cuda", {}, fast_fit=False) is None
    assert cpu_fit_hint("cpu", {"image_size": 256}, fast_fit=False) is None
    assert cpu_fit_hint("cpu", {"gradients": "local"}, fast_fit=False) is None


def test_bad_flag_values_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "l.safetensors", "x", "--out", "o", "--normalization", "odd"])
    assert "invalid choice" in capsys.readouterr().err
