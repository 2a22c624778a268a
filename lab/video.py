"""Video on the lab: per-frame mIoU and flicker of each temporal mode on lab clips, and speed.

    python benchmarks/video.py --json benchmarks/results-video-lab.json
    python benchmarks/video.py --fast

Examples come from world 2 and the clips (`synthetic.clips.lab_clip`: pan, zoom, an object moving
in front of another, a cut) from world 3, both unseen by the lab SD, as in `lab.quality`. The
artifact is matching's (`Segmenter.match`: no training, so runs stay quick on CPUs). Each frame
goes through the UNet once; the temporal modes (`none`, and `flow` at several blend weights) are
applied to the same scores, so they differ only by the temporal step. Flicker is
`clips.flicker`: the share of pixels whose label changes between consecutive frames where the
true label, followed along the known motion, does not. Results are saved after every clip
(`--resume` continues). `--speed` times the real path (`Segmenter.predict_video` on an encoded
clip) against still images through `predict_batch`; `--strip` saves a picture of one clip.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimeseg import Segmenter, SlimeConfig, __version__
from slimeseg.metrics import ConfusionMatrix
from slimeseg.synthetic import World
from slimeseg.synthetic.clips import Clip, flicker, lab_clip
from slimeseg.temporal import FlowCarry
from slimeseg.video import VideoWriter, frame_labels, frame_scores
from slimeseg.writers import colour_labels, write_json

from .quality import LAB_MODEL, LAB_PRECISION, TRAIN_POOL, UNSEEN_WORLDS, mean_std, parse_seeds


def flow(weight: float, hysteresis: float = 0.0, **settings: Any) -> dict[str, Any]:
    """A flow mode's settings: every one names its weight, hysteresis and flow (dis-medium, the
    default when most were measured, unless it says), so a mode measures the same whatever
    SlimeConfig's defaults become."""
    return {"temporal": "flow", "temporal_weight": weight, "temporal_hysteresis": hysteresis,
            "flow_method": "dis-medium", **settings}


# mode -> SlimeConfig settings of the temporal step (flow-wX: weight X; -hY: hysteresis Y)
MODES: dict[str, dict[str, Any]] = {
    "none": {"temporal": "none"},
    "flow-w0.5": flow(0.5),
    "flow-w0.3": flow(0.3),
    "flow-w0.2": flow(0.2),
    "flow-w0.1": flow(0.1),  # the default before hysteresis
    "flow-m0.1": flow(0.2, temporal_margin=0.1),
    "flow-w0.05": flow(0.05),
    # the guided filter on each frame's own scores, then the carry (`temporal_filter`)
    "flow-w0.1-fb": flow(0.1, temporal_filter="before"),
    "flow-w0.2-fb": flow(0.2, temporal_filter="before"),
    # the filtered scores carried (`temporal_filter="recursive"`)
    "flow-w0.1-rec": flow(0.1, temporal_filter="recursive"),
    "flow-w0.2-rec": flow(0.2, temporal_filter="recursive"),
    # label hysteresis on the final scores (`temporal_hysteresis`)
    "flow-w0.1-h0.05": flow(0.1, 0.05),
    "flow-w0.1-h0.1": flow(0.1, 0.1),
    "flow-w0.1-h0.2": flow(0.1, 0.2),  # the default weight and hysteresis (docs/video.md), DIS medium
    "flow-w0.1-h0.3": flow(0.1, 0.3),
    "flow-w0.1-h0.5": flow(0.1, 0.5),
    "flow-w0.2-h0.2": flow(0.2, 0.2),
    "flow-w0.2-h0.3": flow(0.2, 0.3),
    "flow-w0.1-rec-h0.1": flow(0.1, 0.1, temporal_filter="recursive"),
    # other optical flows (`flow_method`)
    "flow-w0.1-ultrafast": flow(0.1, flow_method="dis-ultrafast"),
    "flow-w0.1-fast": flow(0.1, flow_method="dis-fast"),
    "flow-w0.1-fine": flow(0.1, flow_method="dis-fine"),
    "flow-w0.1-farneback": flow(0.1, flow_method="farneback"),
    "flow-w0.1-h0.2-fine": flow(0.1, 0.2, flow_method="dis-fine"),
    "flow-w0.1-h0.2-balanced": flow(0.1, 0.2, flow_method="dis-balanced"),  # the default
    "flow-w0.1-h0.2-balanced-v0": flow(0.1, 0.2, flow_method="dis-balanced-v0"),
    # a diagnostic, not a setting: the clip's exact motion instead of estimated flow (`TrueMotion`)
    "flow-w0.1-true": flow(0.1, true_motion=True),
    "flow-w0.1-h0.2-true": flow(0.1, 0.2, true_motion=True),
    "flow-w0.1-h0.3-true": flow(0.1, 0.3, true_motion=True),
}
LAB_KEYS = ("true_motion",)  # MODES keys that are the lab's, not SlimeConfig's


class TrueMotion(FlowCarry):
    """A carry that follows a lab clip's exact motion (`Clip.motion`) instead of estimated flow,
    trusted where the source is inside the frame and looks the same: what flow errors cost."""

    def __init__(self, cfg: SlimeConfig, motion: list[np.ndarray | None]) -> None:
        self.truth, self.t = motion, -1
        super().__init__(cfg)

    def step(self, frame: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        self.t += 1
        return super().step(frame, scores)

    def motion(self, gray: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = gray.shape
        source = self.truth[self.t]  # (h, w, 2) where each pixel was in the frame before, or None
        if source is None or source.shape[:2] != (h, w):  # a cut (or a resized working frame)
            return torch.zeros(h, w, 2), torch.zeros(h, w, dtype=torch.bool)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        back = torch.from_numpy(source - np.stack([xs, ys], -1)).float()  # (h, w, 2)
        sx, sy = source[..., 0], source[..., 1]
        inside = torch.from_numpy((sx > -0.5) & (sx < w - 0.5) & (sy > -0.5) & (sy < h - 0.5))
        return back, inside & self.looks_same(gray, back)


def examples(kind: str, shots: int, seed: int, size: int, world: int) -> tuple[list, list, list[str]]:
    """The k-shot examples of a seed, drawn as `lab.quality` draws them."""
    w = World(kind, size=size, seed=world)
    pick = np.random.default_rng(seed).permutation(TRAIN_POOL)[:shots]
    samples = [w.sample(int(i)) for i in pick]
    return [s.image for s in samples], [s.mask for s in samples], list(w.classes)


def mode_config(base: SlimeConfig, mode: str) -> tuple[SlimeConfig, dict[str, Any]]:
    """A mode's settings on `base`, and its lab-only keys (LAB_KEYS) apart."""
    settings = {k: v for k, v in MODES[mode].items() if k not in LAB_KEYS}
    return base.replace(**settings), {k: v for k, v in MODES[mode].items() if k in LAB_KEYS}


def apply_mode(clip: Clip, scores: list[torch.Tensor], cfg: SlimeConfig, true_motion: bool = False
               ) -> tuple[list[np.ndarray], float]:
    """Label maps of a clip's frames from their scores under one temporal setting, and the
    seconds labelling a frame from its scores took (the temporal step and the final upsampling,
    as `video.frame_labels` does them; reports before 2026-12-05 timed the temporal step alone).
    `true_motion`: the carry follows the clip's exact motion (`TrueMotion`), a diagnostic."""
    carry = None
    if cfg.temporal == "flow":
        carry = TrueMotion(cfg, clip.motion) if true_motion else FlowCarry(cfg)
    out, spent = [], 0.0
    for frame, sc in zip(clip.frames, scores, strict=True):
        t0 = time.perf_counter()
        out.append(frame_labels(frame, sc, carry, cfg))  # as `slimeseg segment` labels a frame
        spent += time.perf_counter() - t0
    return out, spent / len(clip.frames)


def score_clip(seg: Segmenter, clip: Clip, learned: Any, cfg: SlimeConfig, batch: int) -> list[torch.Tensor]:
    """Each frame's low-resolution scores (K, h, w), `batch` frames per UNet batch."""
    out: list[torch.Tensor] = []
    for i in range(0, len(clip.frames), batch):
        out += frame_scores(seg.sd, clip.frames[i:i + batch], learned, cfg)
    return out


def measure(seg: Segmenter, args: argparse.Namespace, units: dict[str, Any], save: Any) -> None:
    """Fill `units` (key 'kind/shots/seed/clip' -> per-mode confusion and flicker counts)."""
    modes = args.modes.split(",") if args.modes else list(MODES)
    for kind in args.kinds.split(","):
        for shots in map(int, args.shots.split(",")):
            for seed in parse_seeds(args.seeds):
                images, masks, classes = examples(kind, shots, seed, args.size, args.worlds[0])
                base = SlimeConfig(image_size=args.size, seed=seed, method="match", **LAB_PRECISION)
                learned = seg.match(images, masks, classes, base)
                for index in range(args.clips):
                    key = f"{kind}/{shots}/{seed}/{index}"
                    if key in units:
                        continue
                    clip = lab_clip(kind, index, args.size, args.frames, seed=args.worlds[1])
                    scores = score_clip(seg, clip, learned, base, args.batch)
                    unit: dict[str, Any] = {}
                    for mode in modes:
                        cfg, lab = mode_config(base, mode)
                        preds, step_s = apply_mode(clip, scores, cfg, **lab)
                        cm = ConfusionMatrix(len(classes))
                        for p, m in zip(preds, clip.masks, strict=True):
                            cm.update(p, m)
                        share, stable = flicker(preds, clip.masks, clip.motion)
                        unit[mode] = {"confusion": cm.matrix.tolist(), "flicker": share,
                                      "stable": stable, "step_s": step_s}
                    units[key] = unit
                    print(f"{key}: " + ", ".join(
                        f"{m} mIoU {100 * _miou(u['confusion']):.1f} flicker {100 * u['flicker']:.2f}%"
                        for m, u in unit.items()), flush=True)
                    save()


def _miou(confusion: list[list[int]] | np.ndarray) -> float:
    m = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou))


def summarise(units: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (kind, shots, mode): mIoU over all frames of a seed's clips and flicker (pixel-weighted
    over its clips), mean and std over seeds; the flicker ratio to `none` per seed."""
    by: dict[tuple[str, int, str], dict[int, dict[str, Any]]] = {}
    for key, unit in units.items():
        kind, shots, seed, _ = key.split("/")
        for mode, u in unit.items():
            acc = by.setdefault((kind, int(shots), mode), {}).setdefault(
                int(seed), {"confusion": 0, "changed": 0.0, "stable": 0, "step_s": []})
            acc["confusion"] = acc["confusion"] + np.asarray(u["confusion"])
            acc["changed"] += u["flicker"] * u["stable"]
            acc["stable"] += u["stable"]
            acc["step_s"].append(u["step_s"])
    rows = []
    order = {m: i for i, m in enumerate(MODES)}
    for (kind, shots, mode), seeds in sorted(by.items(), key=lambda kv: (*kv[0][:2], order.get(kv[0][2], 99))):
        mious = [_miou(a["confusion"]) for a in seeds.values()]
        flick = {s: a["changed"] / max(a["stable"], 1) for s, a in seeds.items()}
        none = by.get((kind, shots, "none"), {})
        ratios = [flick[s] / (none[s]["changed"] / max(none[s]["stable"], 1)) for s in seeds if s in none]
        rows.append({"kind": kind, "shots": shots, "mode": mode, "seeds": len(seeds),
                     "clips": sum(len(a["step_s"]) for a in seeds.values()),
                     "miou": mean_std(mious), "flicker": mean_std(flick.values()),
                     "flicker_ratio": mean_std(ratios) if ratios else None,
                     "step_ms": 1000 * float(np.mean([x for a in seeds.values() for x in a["step_s"]]))})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| kind | shots | temporal | seeds x clips | per-frame mIoU | flicker | flicker / none | label ms/frame |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["flicker_ratio"] is None else f"{r['flicker_ratio'][0]:.2f} ± {r['flicker_ratio'][1]:.2f}"
        lines.append(f"| {r['kind']} | {r['shots']} | {r['mode']} | {r['seeds']} x {r['clips'] // r['seeds']} | "
                     f"{100 * r['miou'][0]:.1f} ± {100 * r['miou'][1]:.1f} | "
                     f"{100 * r['flicker'][0]:.2f} % ± {100 * r['flicker'][1]:.2f} | {ratio} | {r['step_ms']:.1f} |")
    return "\n".join(lines)


def speed(seg: Segmenter, args: argparse.Namespace) -> dict[str, Any]:
    """Frames/s of `predict_video` on an encoded lab clip (temporal none, and flow with each of
    `--speed-methods`) against the same frames as still images through `predict_batch`, same
    batch size, after one warm-up. `--speed-repeats` N times the whole round in turn (still,
    none, each flow method), so every ratio is to the still rate of its own round; the rates
    and ratios of the first round keep their old keys, every round's are under `rounds`, and
    `median_ratio` is each mode's median over the rounds. `*_cpu_ratio`: the same ratios of the
    process's CPU time (all its threads), which other jobs on the machine move less than the
    wall time (`median_cpu_ratio`). `*_main_ratio`: the same ratios of the calling thread's CPU
    time alone (`median_main_ratio`), what the wall time comes to when the flow thread
    (`temporal.FlowAhead`) has a core of its own; with one torch thread."""
    images, masks, classes = examples("car", 1, 0, args.size, args.worlds[0])
    learned = seg.match(images, masks, classes, SlimeConfig(image_size=args.size, method="match", **LAB_PRECISION))
    clip = lab_clip("car", 0, args.size, args.speed_frames, seed=args.worlds[1])
    methods = args.speed_methods.split(",") if args.speed_methods else [None]  # None: the default
    modes = ["none"] + [f"flow-{m}" if m else "flow" for m in methods]
    out: dict[str, Any] = {"frames": len(clip.frames), "batch": args.batch, "opencv_threads": _cv2_threads(),
                           "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        with VideoWriter(path, 12) as w:
            for f in clip.frames:
                w.write(f)
        seg.predict_batch(clip.frames[:args.batch], learned, batch_size=args.batch)  # warm-up
        for _ in range(args.speed_repeats):
            rnd: dict[str, float] = {}
            t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
            seg.predict_batch(clip.frames, learned, batch_size=args.batch)
            rnd["still_fps"] = len(clip.frames) / (time.perf_counter() - t0)
            rnd["still_cpu_fps"] = len(clip.frames) / (time.process_time() - c0)
            rnd["still_main_fps"] = len(clip.frames) / (time.thread_time() - m0)
            for mode, method in zip(modes, [None, *methods], strict=True):
                settings = {"temporal": "none"} if mode == "none" else {"temporal": "flow"}
                if method:
                    settings["flow_method"] = method
                t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
                n = sum(1 for _ in seg.predict_video(path, learned, batch_size=args.batch, **settings))
                rnd[f"video_{mode}_fps"] = n / (time.perf_counter() - t0)
                rnd[f"video_{mode}_cpu_fps"] = n / (time.process_time() - c0)
                rnd[f"video_{mode}_main_fps"] = n / (time.thread_time() - m0)
                for key in ("", "cpu_", "main_"):
                    rnd[f"video_{mode}_{key}ratio"] = rnd[f"video_{mode}_{key}fps"] / rnd[f"still_{key}fps"]
            out["rounds"].append(rnd)
            print("speed round: " + ", ".join(f"{k} {v:.3g}" for k, v in rnd.items() if "ratio" in k), flush=True)
    out.update(out["rounds"][0])
    for key in ("ratio", "cpu_ratio", "main_ratio"):
        out[f"median_{key}"] = {m: float(np.median([r[f"video_{m}_{key}"] for r in out["rounds"]])) for m in modes}
    return out


def _cv2_threads() -> int | None:
    """OpenCV's thread count (DIS flow runs its stripes on it; `--threads` sets torch's only)."""
    try:
        import cv2
    except ImportError:
        return None
    return int(cv2.getNumThreads())


def memory(args: argparse.Namespace, lengths: list[int], side: tuple[int, int] = (1080, 1920)
           ) -> dict[str, Any]:
    """Peak memory (max RSS) of `slimeseg segment` on synthetic 1080p clips of each length (a
    pan over a lab scene, H.264), each in a fresh process, overlays on: flat if it does not grow
    with the length."""
    import subprocess
    import sys

    import cv2

    out: dict[str, Any] = {"side": list(side), "peak_mb": {}, "seconds": {}}
    scene = World("car", size=args.size, seed=args.worlds[1]).sample(0).image
    big = cv2.resize(scene, (side[1] + 8 * max(lengths), side[0]), interpolation=cv2.INTER_LINEAR)
    with tempfile.TemporaryDirectory() as tmp:
        images, masks, classes = examples("car", 1, 0, args.size, args.worlds[0])
        learned = Segmenter.from_pretrained(args.model, device="cpu").match(
            images, masks, classes, SlimeConfig(image_size=args.size, method="match", **LAB_PRECISION))
        art = learned.save(Path(tmp) / "car.safetensors")
        for n in lengths:
            clip = Path(tmp) / f"long{n}.mp4"
            with VideoWriter(clip, 25) as w:
                for t in range(n):
                    w.write(np.ascontiguousarray(big[:, 8 * t:8 * t + side[1]]))
            code = ("import resource, sys, time; from slimeseg.cli import main; t = time.perf_counter(); "
                    f"main(['segment', {str(art)!r}, {str(clip)!r}, '--out', {str(Path(tmp) / f'o{n}')!r}, "
                    "'--quiet']); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
                    "time.perf_counter() - t)")
            env = {**__import__("os").environ, "OMP_NUM_THREADS": str(max(args.threads, 1))}
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                 check=True)
            kb, secs = res.stdout.strip().splitlines()[-1].split()
            out["peak_mb"][n], out["seconds"][n] = int(kb) / 1024, float(secs)
            print(f"memory: {n} frames at {side[1]}x{side[0]}: peak {int(kb) / 1024:.0f} MB, "
                  f"{float(secs):.0f} s", flush=True)
    return out


def strip(seg: Segmenter, args: argparse.Namespace, path: str) -> None:
    """A picture of one lab clip's first shot: frames, truth, then each of `--modes` (frame by
    frame and the default temporal setting unless given) followed by the pixels whose label
    flickered (white) under it (rows)."""
    kind, index = args.strip_clip.split(":")
    images, masks, classes = examples(kind, 1, 0, args.size, args.worlds[0])
    base = SlimeConfig(image_size=args.size, method="match", **LAB_PRECISION)
    learned = seg.match(images, masks, classes, base)
    clip = lab_clip(kind, int(index), args.size, args.frames, seed=args.worlds[1])
    scores = score_clip(seg, clip, learned, base, args.batch)
    k = len(classes)
    rows = [clip.frames, [colour_labels(m, k) for m in clip.masks]]
    named = args.modes.split(",") if args.modes else ["none", "default"]
    for mode in named:  # "default": the default temporal setting
        cfg, lab = (base.replace(temporal="flow"), {}) if mode == "default" else mode_config(base, mode)
        preds, _ = apply_mode(clip, scores, cfg, **lab)
        rows.append([colour_labels(p, k) for p in preds])
        flick = [np.zeros_like(clip.frames[0])]
        for t in range(1, len(preds)):
            m = np.zeros(preds[t].shape, bool)
            if clip.motion[t] is not None:
                sx = np.rint(clip.motion[t][..., 0]).astype(int).clip(0, args.size - 1)
                sy = np.rint(clip.motion[t][..., 1]).astype(int).clip(0, args.size - 1)
                m = (preds[t] != preds[t - 1][sy, sx]) & (clip.masks[t] == clip.masks[t - 1][sy, sx])
            flick.append(np.repeat(m[..., None] * 255, 3, -1).astype(np.uint8))
        rows.append(flick)
    from PIL import Image

    grid = np.concatenate([np.concatenate(r[:clip.cut], 1) for r in rows], 0)  # the first shot
    Image.fromarray(grid).save(path)
    print(f"strip: {path} (the first shot of {kind} clip {index}; rows: frames, truth, then "
          f"{', '.join(named)}, each followed by its flicker (white))")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(LAB_MODEL), help="an SD folder, or 'full': SD 2.1-base's "
                   "shapes with random weights in bfloat16, or 'tiny': the test SD (lab.fullsize; --speed only)")
    p.add_argument("--device", default="cpu", help="where the UNet runs (the flow: on the CPU)")
    p.add_argument("--kinds", default="car,face")
    p.add_argument("--shots", default="1")
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--clips", type=int, default=10, help="lab clips per kind")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (two shots, one cut)")
    p.add_argument("--modes", help="comma-separated MODES (default: all; the strip: none and "
                                   "the default temporal setting)")
    p.add_argument("--batch", type=int, default=4, help="frames per UNet batch")
    p.add_argument("--size", type=int, default=None, help="frame side (default: the lab SD's size)")
    p.add_argument("--worlds", default=",".join(map(str, UNSEEN_WORLDS)))
    p.add_argument("--threads", type=int, default=0, help="torch's threads (and OpenCV's unless "
                                                          "--opencv-threads)")
    p.add_argument("--opencv-threads", type=int, help="OpenCV's threads (the DIS flow's; default: "
                                                      "--threads when given, else OpenCV's own)")
    p.add_argument("--speed", action="store_true", help="also time predict_video against still images")
    p.add_argument("--speed-frames", type=int, default=24)
    p.add_argument("--speed-methods", help="comma-separated flow_method values to time in turn "
                                           "(default: the default's alone, key 'flow')")
    p.add_argument("--speed-repeats", type=int, default=1, help="rounds of the speed timing")
    p.add_argument("--memory", metavar="N,M",
                   help="peak memory of `slimeseg segment` on 1080p clips of these lengths")
    p.add_argument("--strip", metavar="PNG", help="save a frame strip of --strip-clip here")
    p.add_argument("--strip-clip", default="car:0", help="KIND:INDEX of the strip's clip")
    p.add_argument("--fast", action="store_true", help="car, 1 seed, 2 clips of 6 frames")
    p.add_argument("--resume", action="store_true", help="continue the run that wrote --json")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.fast:
        args.kinds, args.seeds, args.clips, args.frames = "car", "0", 2, 6
    if args.threads:
        torch.set_num_threads(args.threads)
    cv_threads = args.threads if args.opencv_threads is None else args.opencv_threads
    if cv_threads:  # the flow gets the threads the still images' path gets (docs/video.md, speed)
        import cv2

        cv2.setNumThreads(cv_threads)
    args.worlds = [int(w) for w in str(args.worlds).split(",")]
    if args.model in ("full", "tiny"):  # SD 2.1-base's shapes, random weights, or the test SD (speed only)
        from .fullsize import load_model

        seg = load_model(args.model, args.device, torch.bfloat16 if args.model == "full" else torch.float32,
                         num_classes=len(World("car", size=64).classes) - 1)
        args.size = args.size or 512
    else:
        seg = Segmenter.from_pretrained(args.model, device=args.device)
    if args.size is None:
        args.size = 8 * int(seg.sd.unet.config.sample_size)
    units: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if args.resume and args.json and Path(args.json).is_file():
        old = json.loads(Path(args.json).read_text())
        units, extra = old.get("units", {}), {"speed": old.get("speed")} if old.get("speed") else {}
        print(f"resuming {args.json}: {len(units)} clips measured", flush=True)
    t_start = time.perf_counter()

    def report() -> dict[str, Any]:
        return {"benchmark": "slimeseg lab video", "model": args.model, "size": args.size,
                "frames_per_clip": args.frames, "method": "match", "worlds": args.worlds,
                "modes": MODES, "rows": summarise(units), **extra, "units": units,
                "seconds": time.perf_counter() - t_start, "threads": torch.get_num_threads(),
                "versions": {"slimeseg": __version__, "torch": torch.__version__,
                             "python": platform.python_version()}}

    def save() -> None:
        if args.json:
            write_json(args.json, report())

    if args.memory:
        extra["memory"] = memory(args, [int(n) for n in args.memory.split(",")])
        save()
    if args.strip:
        strip(seg, args, args.strip)
    measure(seg, args, units, save)
    if args.speed:
        extra["speed"] = speed(seg, args)
        print("speed: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in extra["speed"].items() if k != "rounds"), flush=True)
    out = report()
    save()
    print()
    print(format_table(out["rows"]))
    return out


if __name__ == "__main__":
    main()
