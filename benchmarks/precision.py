"""One training step's embedding gradient in bfloat16 / float16 (with and without loss scaling)
against float32, on the SD 2.1-shaped full-size UNet with random weights.

    python benchmarks/precision.py --size 256 --threads 1 --json benchmarks/results-precision-cpu.json
    python benchmarks/precision.py --device cuda --size 512          # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

from lab.fullsize import build_full_sd, fake_prompts  # noqa: E402
from lab.precision import compare  # noqa: E402
from slimeseg.writers import write_json  # noqa: E402

VARIANTS = [(torch.bfloat16, "off"), (torch.float16, "off"), (torch.float16, "dynamic"),
            (torch.float16, "static")]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    sd = build_full_sd(a.device, torch.float32)
    fake_prompts(sd, 4)
    rows = [asdict(r) for r in compare(sd, VARIANTS, a.size)]
    head = f"{'dtype':<9} {'loss scale':<10} {'cosine':>9} {'rel err':>8} {'zeros':>6} {'fp32 0s':>7} {'step s':>7}"
    lines = [head, "-" * len(head)] + [
        f"{r['dtype']:<9} {r['loss_scale']:<10} {r['cosine']:9.6f} {r['rel_error']:8.4f} {r['zeros']:6d} "
        f"{r['zeros_fp32']:7d} {r['seconds']:7.2f}" for r in rows]
    print("\n".join(lines))
    if a.json:
        meta = {"device": a.device, "size": a.size, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "python": platform.python_version(),
                "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None}
        write_json(a.json, {"meta": meta, "rows": rows, "table": "\n".join(lines)})
    return rows


if __name__ == "__main__":
    main()
