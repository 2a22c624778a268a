"""DIS settings screened against the lab clips' true motion: share of pixels whose flow is off by
more than 1 px (and the median error), and milliseconds per flow (one OpenCV thread, best of 3).

    python benchmarks/flow_screen.py --json benchmarks/results-video-lab-balanced-screen.json

The flow from frame t back to t - 1 at the lab's 256 px, against `Clip.motion[t]` where the
source is inside the frame; 3 clips per kind, 16 frames (84 pairs across car and face).
"@N": the flow computed at N px and resized to 256 (a smaller working size).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: slimeseg/

from slimeseg.synthetic.clips import lab_clip  # noqa: E402
from slimeseg.temporal import working_gray  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

# name -> finest scale, patch size, patch stride, gradient-descent and refinement iterations, mean
# normalization (DIS medium: 1, 8, 3, 25, 5, on), and the working size
BASE = {"finest": 1, "patch": 8, "stride": 3, "gd": 25, "var": 5, "norm": True, "sp": True, "size": 256}
CONFIGS = {
    "medium": {}, "fine": {"finest": 0},
    "fine-s4": {"finest": 0, "stride": 4}, "fine-s5": {"finest": 0, "stride": 5},
    "fine-s6": {"finest": 0, "stride": 6},
    "fine-gd12": {"finest": 0, "gd": 12}, "fine-gd8": {"finest": 0, "gd": 8},
    "fine-v0": {"finest": 0, "var": 0},  # dis-balanced-v0
    "fine-v1": {"finest": 0, "var": 1},  # dis-balanced
    "fine-v2": {"finest": 0, "var": 2}, "fine-v3": {"finest": 0, "var": 3},
    "fine-s4-v1": {"finest": 0, "stride": 4, "var": 1},
    "fine-s4-v2": {"finest": 0, "stride": 4, "var": 2},
    "fine-s4-v3": {"finest": 0, "stride": 4, "var": 3},
    "fine-s5-v1": {"finest": 0, "stride": 5, "var": 1},
    "fine-s5-v2": {"finest": 0, "stride": 5, "var": 2},
    "fine-s5-v3": {"finest": 0, "stride": 5, "var": 3},
    "fine-s6-v2": {"finest": 0, "stride": 6, "var": 2},
    "fine-s4-gd12": {"finest": 0, "stride": 4, "gd": 12},
    "fine-s5-gd12": {"finest": 0, "stride": 5, "gd": 12},
    "fine-s4-gd12-v2": {"finest": 0, "stride": 4, "gd": 12, "var": 2},
    "fine-s5-gd12-v2": {"finest": 0, "stride": 5, "gd": 12, "var": 2},
    "fine-p6-s3": {"finest": 0, "patch": 6}, "fine-p6-s3-v2": {"finest": 0, "patch": 6, "var": 2},
    "fine-p6-s4-v2": {"finest": 0, "patch": 6, "stride": 4, "var": 2},
    "fine-p12-s6": {"finest": 0, "patch": 12, "stride": 6},
    "fine-p12-s8": {"finest": 0, "patch": 12, "stride": 8},
    "fine-gd16-v1": {"finest": 0, "gd": 16, "var": 1}, "fine-gd16-v0": {"finest": 0, "gd": 16, "var": 0},
    "fine-gd8-v1": {"finest": 0, "gd": 8, "var": 1}, "fine-gd8-v2": {"finest": 0, "gd": 8, "var": 2},
    "fine-nosp": {"finest": 0, "sp": False},
    "fine-nonorm": {"finest": 0, "norm": False}, "fine-v1-nonorm": {"finest": 0, "var": 1, "norm": False},
    "medium-nonorm": {"norm": False}, "medium-v10": {"var": 10},
    "fine@224": {"finest": 0, "size": 224}, "fine@192": {"finest": 0, "size": 192}, "fine@160": {"finest": 0, "size": 160},
    "fine-s5@192": {"finest": 0, "stride": 5, "size": 192},
}


def make(cv2, finest: int, patch: int, stride: int, gd: int, var: int, norm: bool, sp: bool = True):
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(finest)
    dis.setPatchSize(patch)
    dis.setPatchStride(stride)
    dis.setGradientDescentIterations(gd)
    dis.setVariationalRefinementIterations(var)
    dis.setUseMeanNormalization(norm)
    dis.setUseSpatialPropagation(sp)
    return dis


def main() -> None:
    import cv2

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", help="comma-separated CONFIGS (default: all)")
    p.add_argument("--clips", type=int, default=3, help="lab clips per kind")
    p.add_argument("--json")
    args = p.parse_args()
    cv2.setNumThreads(1)
    pairs = []
    for kind in ("car", "face"):
        for i in range(args.clips):
            clip = lab_clip(kind, i, 256, 16, seed=3)
            pairs += [(clip.frames[t], clip.frames[t - 1], clip.motion[t])
                      for t in range(1, len(clip.frames)) if clip.motion[t] is not None]
    ys, xs = np.mgrid[0:256, 0:256].astype(np.float32)
    grid = np.stack([xs, ys], -1)
    rows = {}
    for name in (args.configs.split(",") if args.configs else CONFIGS):
        cfg = {**BASE, **CONFIGS[name]}
        size = cfg.pop("size")
        dis = make(cv2, **cfg)
        errors, times = [], []
        for a, b, source in pairs:
            ga, gb = working_gray(a, size), working_gray(b, size)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                flow = dis.calc(ga, gb, None)
                best = min(best, time.perf_counter() - t0)
            times.append(best)
            if size != 256:
                flow = cv2.resize(flow, (256, 256), interpolation=cv2.INTER_LINEAR) * (256 / size)
            inside = ((source[..., 0] > -0.5) & (source[..., 0] < 255.5)
                      & (source[..., 1] > -0.5) & (source[..., 1] < 255.5))
            errors.append(np.linalg.norm(flow - (source - grid), axis=-1)[inside])
        e = np.concatenate(errors)
        rows[name] = {"settings": {**cfg, "size": size}, "over_1px": float((e > 1).mean()),
                      "median_px": float(np.median(e)), "ms": 1000 * float(np.median(times))}
        print(f"{name:16s} >1px {100 * rows[name]['over_1px']:5.1f} %  median {rows[name]['median_px']:.3f} px"
              f"  {rows[name]['ms']:5.1f} ms", flush=True)
    if args.json:
        write_json(args.json, {"benchmark": "DIS vs lab true motion", "pairs": len(pairs),
                               "opencv": cv2.__version__, "rows": rows})


if __name__ == "__main__":
    main()
