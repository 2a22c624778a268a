"""A CVAT auto-annotation function: label a CVAT task with learned embeddings.

    cvat-cli --server-host HOST --auth USER task auto-annotate TASK_ID \\
        --function-module slimeseg.integrations.cvat -p learned=str:car.safetensors

`create(learned=...)` (what `cvat-cli` calls with the `-p` parameters) returns a detection
function for `cvat_sdk.auto_annotation`: its `spec` names one mask label per class of the
artifact (background left out; CVAT matches labels to the task's by name), and `detect` segments
a frame and returns one mask shape per class present (or per connected region with
`instances=bool:true`). The same module serves CVAT's agent mode (`cvat-cli function
create-native ... --function-module slimeseg.integrations.cvat -p ...`, then `run-agent`).
Parameters: `learned` (a file or hub id), `model`, `revision` (pins a hub id), `device`, `dtype`
(as in `slimeseg segment`) and `instances`. With `--conv-mask-to-poly` each 8-connected region
becomes a polygon along its pixels' outer edges (`outer_polygons`; holes are filled, as CVAT's own
functions do).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from ..artifact import Learned
from ..coco import regions

try:
    import cvat_sdk.auto_annotation as cvataa
    from cvat_sdk.masks import encode_mask
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"the CVAT function needs cvat-sdk ({exc}); install it with: "
                      "pip install 'slimeseg[cvat]'") from None


class SlimesegFunction:
    """A `cvat_sdk.auto_annotation.DetectionFunction` over one artifact (the model loads on the
    first frame, so building the spec is cheap)."""

    def __init__(self, learned: str, model: str | None = None, revision: str | None = None,
                 device: str | None = None, dtype: str | None = None, instances: bool = False,
                 segmenter: Any | None = None) -> None:
        self.name = learned
        self.learned = Learned.load(learned, revision)
        self.model, self.revision, self.device, self.dtype = model, revision, device, dtype
        self.instances = instances
        self._segmenter = segmenter

    @cached_property
    def spec(self) -> cvataa.DetectionFunctionSpec:
        """One mask label per foreground class, its id the class index."""
        return cvataa.DetectionFunctionSpec(labels=[
            cvataa.label_spec(name, k, type="mask")
            for k, name in enumerate(self.learned.classes) if k > 0])

    @property
    def segmenter(self) -> Any:
        """The Segmenter (the artifact's own model unless `model`), loaded once."""
        if self._segmenter is None:
            from ..segmenter import Segmenter

            self._segmenter = Segmenter.from_learned(self.learned, self.model, device=self.device,
                                                     dtype=self.dtype, name=self.name)
        else:
            self._segmenter.use(self.learned, self.name)
        return self._segmenter

    def detect(self, context: cvataa.DetectionFunctionContext, image: Any) -> list[Any]:
        """The frame's mask shapes: one per class present (per region with `instances`); with
        `conv_mask_to_poly`, one polygon per region."""
        labels = self.segmenter.predict(np.array(image.convert("RGB")), self.learned)
        found = regions(labels, self.learned.num_classes, self.instances)
        if context.conv_mask_to_poly:
            return [cvataa.polygon(k, points) for k, binary in found
                    for points in outer_polygons(binary)]
        return [cvataa.mask(k, encode_mask(binary)) for k, binary in found]


def outer_polygons(binary: np.ndarray) -> list[list[float]]:
    """The outer boundaries of a mask's 8-connected regions as polygons `[x0, y0, x1, y1, ...]`
    along pixel edges (vertices on pixel corners), so each polygon holds exactly its region's
    pixel centres, holes filled. Clockwise on screen; collinear vertices dropped."""
    fg = np.pad(np.asarray(binary, dtype=bool), 1)
    inner = fg[1:-1, 1:-1]
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # each pixel's edges that face the background, clockwise: top, right, bottom, left
    for (dr, dc), (x0, y0, x1, y1) in (((-1, 0), (0, 0, 1, 0)), ((0, 1), (1, 0, 1, 1)),
                                       ((1, 0), (1, 1, 0, 1)), ((0, -1), (0, 1, 0, 0))):
        facing = inner & ~fg[1 + dr:fg.shape[0] - 1 + dr, 1 + dc:fg.shape[1] - 1 + dc]
        for r, c in zip(*np.nonzero(facing), strict=True):
            out.setdefault((int(c) + x0, int(r) + y0), []).append((int(c) + x1, int(r) + y1))
    polygons = []
    while out:
        start = min(out)
        loop, here, heading = [start], start, None
        while True:
            ends = out[here]
            end = ends[0]
            if len(ends) > 1 and heading is not None:  # pixels touch at a corner: turn left,
                # which walks on to the diagonal pixel (8-connected, as `coco.regions`)
                dx, dy = heading
                turns = ((dy, -dx), (dx, dy), (-dy, dx))  # left, straight, right (y down)
                end = next(e for t in turns for e in ends if (e[0] - here[0], e[1] - here[1]) == t)
            ends.remove(end)
            if not ends:
                del out[here]
            heading, here = (end[0] - here[0], end[1] - here[1]), end
            if here == start:
                break
            loop.append(here)
        pts = [p for i, p in enumerate(loop) if _turns(loop[i - 1], p, loop[(i + 1) % len(loop)])]
        area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True))
        if area > 0:  # an outer boundary (a hole's runs the other way)
            polygons.append([float(v) for p in pts for v in p])
    return polygons


def _turns(a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]) -> bool:
    """Whether the path a -> b -> c changes direction at b."""
    return (b[0] - a[0]) * (c[1] - b[1]) != (b[1] - a[1]) * (c[0] - b[0])


def create(learned: str, model: str = "", revision: str = "", device: str = "", dtype: str = "",
           instances: bool = False) -> SlimesegFunction:
    """What `cvat-cli ... --function-module slimeseg.integrations.cvat -p learned=str:FILE` calls;
    empty strings mean "not set"."""
    return SlimesegFunction(learned, model or None, revision or None, device or None, dtype or None,
                            instances)
