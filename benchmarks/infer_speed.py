"""Inference speed settings (issue 28, item 5) timed on the full-size SD (random weights) at 512 px.

    python benchmarks/infer_speed.py --dtype float32,bfloat16 --threads 1 --repeats 3 \
        --json benchmarks/results-infer-speed.json
    python benchmarks/infer_speed.py --agreement 20 --seeds 0,1,2 --json benchmarks/results-infer-agreement.json
    python benchmarks/infer_speed.py --quick --json /tmp/speed.json    # tiny SD, 128 px (tests)

One image's `Segmenter.predict` with today's default method (fused: one 2B UNet batch, the VAE
encode, matching's vote, guided upsampling), each row of ROWS a change of it. Rows are measured
INTERLEAVED (each repeat runs every row once, in turn) after one untimed warm-up per row (which
also builds the matching bank and any bfloat16 encoder copy), so a load on the machine that
drifts hits all rows alike; the table gives medians of CPU seconds on one thread (free of
waiting for a core on a shared machine, as bench.py; the JSON has wall seconds too) and each
row's ratio to the in-run "main" row, today's main branch (each image VAE-encoded once per copy
in the 2B batch). Per row also the medians of its stages: encode, UNet, vote, guided filter.
The JSON is written after each repeat; --resume continues it. Rows that ask for bfloat16 pieces
are skipped on a bfloat16 model (they would equal "float32" there). "default" is today's
default, precision "auto": on a CPU with bfloat16 units it equals "bf16-encoder+autocast", on
one without it equals "float32".

--agreement N: label maps of N held-out lab images (the lab SD, tests/assets/lab-sd, with kept
1-shot artifacts as `benchmarks/quality.py --keep-artifacts` writes them, or a short fit when none
is there) under each row, against "float32" (the model's own precision): the share of equal
pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

from lab.fullsize import add_timing_arguments, load_model  # noqa: E402
from slimeseg import Learned, Segmenter, SlimeConfig, inference, matching, upsample  # noqa: E402
from slimeseg.examples import prepare_examples  # noqa: E402
from slimeseg.models import pick_dtype  # noqa: E402
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

# each row: SlimeConfig settings changed from the defaults; "main" also runs main's code path
F32 = {"encoder_dtype": "model", "autocast": "off"}  # the model's own precision throughout
ROWS: dict[str, dict[str, Any]] = {
    "main": F32,  # issue 28's starting main (003eee6): the fused 2B batch VAE-encoded as 2B images
    "float32": F32,  # each image encoded once, the model's precision (the default before "auto")
    "default": {},  # today's default: precision "auto" (bfloat16 where the device has the units)
    "bf16-match": {**F32, "match_dtype": "bfloat16"},
    "bf16-encoder": {"encoder_dtype": "bfloat16", "autocast": "off"},
    "bf16-encoder+autocast": {"encoder_dtype": "bfloat16", "autocast": "bfloat16"},
    "bf16-all": {"encoder_dtype": "bfloat16", "autocast": "bfloat16", "match_dtype": "bfloat16"},
}
REFERENCE = "float32"  # the label maps every row's agreement is counted against


def lower_precision(row: str) -> bool:
    """Whether a row asks for a bfloat16 encoder or autocast (nothing to time on a bfloat16 model)."""
    return any(ROWS[row].get(k) == "bfloat16" for k in ("encoder_dtype", "autocast"))


STAGES = ("encode", "unet", "vote", "guided")


@contextlib.contextmanager
def main_path(on: bool) -> Iterator[None]:
    """main's fused pass: the batch concatenated R times, then encoded (R*B encodes)."""
    if not on:
        yield
        return
    real = inference._capture

    def legacy(sd, batch, learned, cfg, store, features=None, context=None, repeat=1, draw=0, latents=None,
               times=None):
        return real(sd, torch.cat([batch] * repeat), learned, cfg, store, features, context, draw=draw)

    inference._capture = legacy
    try:
        yield
    finally:
        inference._capture = real


class Stages:
    """CPU seconds spent in each stage of a prediction (wrappers around the stage functions)."""

    def __init__(self, seg: Segmenter) -> None:
        self.times = dict.fromkeys(STAGES, 0.0)
        sd = seg.sd  # the wrappers stay installed: the model is dropped after its rows
        for stage, owner, name in (("encode", sd, "encode_image"), ("unet", sd, "denoise"),
                                   ("vote", matching, "vote"), ("guided", upsample, "guided_scores")):
            self._wrap(stage, owner, name)

    def _wrap(self, stage: str, owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return real(*args, **kwargs)
            finally:
                self.times[stage] += time.process_time() - t0

        setattr(owner, name, timed)

    def reset(self) -> dict[str, float]:
        out, self.times = self.times, dict.fromkeys(STAGES, 0.0)
        return out


def make_learned(seg: Segmenter, image: np.ndarray, mask: np.ndarray, cfg: SlimeConfig) -> Learned:
    """A fused-method artifact on the random model: the prompt's context as the 'learned' one
    (timings depend on shapes, not values), the example kept for matching."""
    sd = seg.sd
    examples = prepare_examples([image], [mask], SHAPE_CLASSES)
    return Learned(context=sd.encode_prompt(" ".join(["part"] * len(SHAPE_CLASSES)))[0].float(),
                   uncond=sd.encode_prompt("")[0].float(), classes=list(SHAPE_CLASSES),
                   model_id=sd.model_id, fingerprint=sd.fingerprint, config=cfg.to_dict(),
                   layers=sd.plan.to_dict(), examples=inference.example_views(examples, cfg))


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def time_rows(args: argparse.Namespace, out: dict[str, Any], save: Callable[[], None]) -> None:
    device = torch.device(args.device)
    for dtype_name in args.dtype.split(","):
        dtype = pick_dtype(dtype_name, device)
        rows = [r for r in args.rows.split(",")
                if dtype == torch.float32 or not lower_precision(r)]
        done = {r["row"]: r for r in out["results"] if r["dtype"] == dtype_name}
        if done and all(len(done.get(r, {}).get("cpu_runs", [])) >= args.repeats for r in rows):
            continue
        seg = load_model(args.model, device, dtype, num_classes=len(SHAPE_CLASSES))
        image, mask = shapes_scene(0, args.size)
        cfg = SlimeConfig(image_size=args.size)
        learned = seg.use(make_learned(seg, image, mask, cfg))
        stages = Stages(seg)
        res = {r: done.get(r) or {"dtype": dtype_name, "row": r, "settings": ROWS[r], "cpu_runs": [],
                                  "wall_runs": [], "stages": {s: [] for s in STAGES}} for r in rows}
        for r in rows:
            if r not in done:
                out["results"].append(res[r])
        labels: dict[str, np.ndarray] = {}
        for r in rows:  # warm-up: banks, encoder copies, first-call allocations
            t0 = time.process_time()
            with main_path(r == "main"):
                labels[r] = seg.predict(image, learned, **ROWS[r])
            res[r]["warmup_cpu_s"] = time.process_time() - t0
            stages.reset()
            print(f"[{dtype_name}] warm-up {r}: {res[r]['warmup_cpu_s']:.1f} s", file=sys.stderr, flush=True)
        for r in rows:  # on random weights the labels mean nothing, but equal rows must agree
            res[r][f"pixels_equal_{REFERENCE}"] = float((labels[r] == labels[REFERENCE]).mean()) \
                if REFERENCE in labels else None
        while min(len(res[r]["cpu_runs"]) for r in rows) < args.repeats:
            for r in rows:
                w0, c0 = time.perf_counter(), time.process_time()
                with main_path(r == "main"):
                    seg.predict(image, learned, **ROWS[r])
                res[r]["cpu_runs"].append(round(time.process_time() - c0, 4))
                res[r]["wall_runs"].append(round(time.perf_counter() - w0, 4))
                for s, v in stages.reset().items():
                    res[r]["stages"][s].append(round(v, 4))
                print(f"[{dtype_name}] {r}: {res[r]['cpu_runs'][-1]:.2f} s", file=sys.stderr, flush=True)
            base = med(res["main"]["cpu_runs"]) if "main" in res else None
            for r in rows:
                res[r]["cpu_median"] = med(res[r]["cpu_runs"])
                res[r]["wall_median"] = med(res[r]["wall_runs"])
                res[r]["ratio"] = res[r]["cpu_median"] / base if base else None
            save()
        del seg


def table(out: dict[str, Any]) -> str:
    lines = [f"{'dtype':<9} {'row':<22} {'s/image':>8} {'x main':>7} "
             + " ".join(f"{s:>7}" for s in STAGES) + f" {'runs':>5}"]
    for r in out["results"]:
        if not r["cpu_runs"]:
            continue
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
        lines.append(f"{r['dtype']:<9} {r['row']:<22} {med(r['cpu_runs']):8.2f} {ratio:>7} "
                     + " ".join(f"{med(r['stages'][s]):7.2f}" for s in STAGES) + f" {len(r['cpu_runs']):>5}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- label agreement
def agreement(args: argparse.Namespace, out: dict[str, Any], save: Callable[[], None]) -> None:
    """Pixel agreement of each row's label maps with REFERENCE's on held-out lab images."""
    from lab.quality import AUGMENT, LAB_MODEL, UNSEEN_WORLDS
    from slimeseg.synthetic import World

    seg = Segmenter.from_pretrained(str(LAB_MODEL), device=args.device)
    size = 8 * int(seg.sd.unet.config.sample_size)
    rows = [r for r in args.rows.split(",") if r != "main"]
    out["agreement"] = out.get("agreement") or []
    for kind in args.kinds.split(","):
        for seed in args.seeds:
            if any(a["kind"] == kind and a["seed"] == seed for a in out["agreement"]):
                continue
            kept = Path(args.artifacts) / f"{kind}-1shot-full-seed{seed}.safetensors"
            if kept.is_file():
                learned = Learned.load(kept)
            else:  # no kept artifact: a short fit (the agreement of settings, not quality)
                world = World(kind, size=size, seed=UNSEEN_WORLDS[0])
                ex = world.sample(int(np.random.default_rng(seed).permutation(20)[0]))
                learned = seg.fit([ex.image], [ex.mask], list(world.classes), image_size=size,
                                  steps=args.agreement_steps, seed=seed, progress=False, **AUGMENT[kind])
            test = World(kind, size=size, seed=UNSEEN_WORLDS[1])
            images = [test.sample(i).image for i in range(args.agreement)]
            maps = {r: seg.predict_batch(images, learned, batch_size=4, **ROWS[r]) for r in rows}
            entry = {"kind": kind, "seed": seed, "images": len(images), "artifact": kept.name if kept.is_file() else "short fit",
                     f"pixels_equal_{REFERENCE}": {r: float(np.mean([(a == b).mean() for a, b in zip(maps[r], maps[REFERENCE], strict=True)]))
                                              for r in rows}}
            out["agreement"].append(entry)
            print(f"[agreement] {kind} seed {seed}: {entry[f'pixels_equal_{REFERENCE}']}", file=sys.stderr, flush=True)
            save()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_arguments(p, ROWS)
    p.add_argument("--quick", action="store_true", help="the tiny SD at 128 px, 1 repeat, float32 (tests)")
    p.add_argument("--agreement", type=int, default=0, metavar="N",
                   help="instead of timing: label agreement with the default on N lab images")
    p.add_argument("--kinds", default="car,face", help="--agreement: lab kinds")
    p.add_argument("--seeds", default="0,1", help="--agreement: artifact seeds (comma list)")
    p.add_argument("--artifacts", default="/tmp/exp/runs/kept",
                   help="--agreement: kept 1-shot 'full' artifacts (quality.py --keep-artifacts)")
    p.add_argument("--agreement-steps", type=int, default=50, help="--agreement: steps of a fit when no artifact is kept")
    p.add_argument("--resume", action="store_true", help="continue the run that wrote --json")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.model, args.size, args.repeats, args.dtype = "tiny", 128, 1, "float32"
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "benchmark": "slimeseg inference speed settings (fused default), one image", "model": args.model,
        "device": args.device, "size": args.size, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "repeats": args.repeats, "clock": "cpu", "rows": ROWS, "results": [],
        "loadavg_start": os.getloadavg()}
    if args.resume and args.json and Path(args.json).is_file():
        out = json.loads(Path(args.json).read_text())

    def save() -> None:
        out["loadavg_end"] = os.getloadavg()
        out["table"] = table(out)
        if args.json:
            write_json(args.json, out)  # atomic: a killed run leaves the last whole report

    if args.agreement:
        agreement(args, out, save)
    else:
        time_rows(args, out, save)
    save()
    print(out["table"])
    for a in out.get("agreement", []):
        print(f"agreement {a['kind']} seed {a['seed']} ({a['images']} images): "
              + ", ".join(f"{r} {100 * v:.2f} %" for r, v in a.get(f"pixels_equal_{REFERENCE}", a.get("pixels_equal_default", {})).items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
