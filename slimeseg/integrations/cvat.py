"""A CVAT auto-annotation function: label a CVAT task with learned embeddings.

    cvat-cli --server-host HOST --auth USER task auto-annotate TASK_ID \\
        --function-module slimeseg.integrations.cvat -p learned=str:car.safetensors

`create(learned=...)` (what `cvat-cli` calls with the `-p` parameters) returns a detection
function for `cvat_sdk.auto_annotation`: its `spec` names one mask label per class of the
artifact (background left out; CVAT matches labels to the task's by name), and `detect` segments
a frame and returns one mask shape per class present (or per connected region with
`instances=bool:true`). The same module serves CVAT's agent mode (`cvat-cli function
create-native ... --function-module slimeseg.integrations.cvat -p ...`, then `run-agent`).
Parameters: `learned` (a file or hub id), `model`, `revision`, `device`, `dtype` (as in
`slimeseg segment`) and `instances`. Masks only: with `--conv-mask-to-poly` the function refuses,
in one line, rather than return shapes CVAT would reject.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from ..artifact import Learned
from ..coco import regions
from ..errors import InputError

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
        """The frame's mask shapes: one per class present (per region with `instances`)."""
        if context.conv_mask_to_poly:
            raise InputError(f"{context.frame_name}: slimeseg's CVAT function returns masks; "
                             "run it without --conv-mask-to-poly")
        labels = self.segmenter.predict(np.array(image.convert("RGB")), self.learned)
        return [cvataa.mask(k, encode_mask(binary))
                for k, binary in regions(labels, self.learned.num_classes, self.instances)]


def create(learned: str, model: str = "", revision: str = "", device: str = "", dtype: str = "",
           instances: bool = False) -> SlimesegFunction:
    """What `cvat-cli ... --function-module slimeseg.integrations.cvat -p learned=str:FILE` calls;
    empty strings mean "not set"."""
    return SlimesegFunction(learned, model or None, revision or None, device or None, dtype or None,
                            instances)
