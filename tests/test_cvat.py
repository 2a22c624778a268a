"""The CVAT auto-annotation function, checked with the SDK's own types and the checks its driver
(`annotate_task`) and cvat-cli's agent run on a function's output; no CVAT server here."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from slimeseg.artifact import Learned
from slimeseg.errors import InputError
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

cvataa = pytest.importorskip("cvat_sdk.auto_annotation", reason="cvat-sdk (slimeseg[cvat]) not installed")
from cvat_sdk import models  # noqa: E402
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl  # noqa: E402
from cvat_sdk.masks import decode_mask  # noqa: E402

from slimeseg.integrations import cvat  # noqa: E402


@pytest.fixture(scope="module")
def learned_file(tmp_path_factory, segmenter) -> Path:
    image, mask = shapes_scene(0, 64)
    learned = segmenter.match([image], [mask], SHAPE_CLASSES, image_size=64)
    return learned.save(tmp_path_factory.mktemp("cvat") / "shapes.safetensors")


def load_function(learned_file: Path, *params: str):
    """The function as `cvat-cli ... --function-module slimeseg.integrations.cvat -p ...` loads it
    (cvat-cli's own loader and parameter parser when installed, else the module's `create`)."""
    try:
        from cvat_cli._internal.common import FunctionLoader
        from cvat_cli._internal.parsers import parse_function_parameter
    except ImportError:
        kw = dict(p.split("=", 1) for p in params)
        return cvat.create(learned=str(learned_file), **{k: v.split(":", 1)[1] for k, v in kw.items()})
    parsed = dict(parse_function_parameter(p) for p in [f"learned=str:{learned_file}", *params])
    return FunctionLoader("slimeseg.integrations.cvat", None, parsed).load()


def rebuild(shapes, height: int, width: int) -> np.ndarray:
    """A label map from mask shapes (label_id = class index), decoded by the SDK."""
    labels = np.zeros((height, width), np.uint8)
    for shape in shapes:
        binary = decode_mask(shape.points, image_width=width, image_height=height)
        assert not labels[binary].any(), "masks overlap"
        labels[binary] = shape.label_id
    return labels


def test_spec_names_one_mask_label_per_class(learned_file):
    function = load_function(learned_file)
    assert isinstance(function.spec, cvataa.DetectionFunctionSpec)
    labels = function.spec.labels
    assert all(isinstance(x, models.PatchedLabelRequest) for x in labels)
    assert [(x.name, x.id, x.type) for x in labels] == [(c, k, "mask") for k, c in
                                                        enumerate(SHAPE_CLASSES) if k > 0]
    try:  # what `cvat-cli function create-native` registers for agent mode
        from cvat_cli._internal.agent_driver_detection import AgentDetectionFunctionDriver
    except ImportError:
        return
    fields = AgentDetectionFunctionDriver.get_remote_function_fields(function.spec)
    assert fields == {"labels_v2": [{"name": c, "attributes": [], "type": "mask"}
                                    for c in SHAPE_CLASSES[1:]]}


@pytest.mark.parametrize("instances", [False, True])
def test_detect_returns_mask_shapes_the_driver_accepts(learned_file, segmenter, instances):
    function = load_function(learned_file, *(["instances=bool:true"] if instances else []))
    image = Image.fromarray(shapes_scene(5, 48)[0][:, :40])  # 40 x 48, not square
    shapes = function.detect(_DetectionFunctionContextImpl(frame_name="f.png"), image)
    assert shapes and all(isinstance(s, models.LabeledShapeRequest) for s in shapes)
    assert {s.type.value for s in shapes} == {"mask"} and {s.frame for s in shapes} == {0}
    want = segmenter.predict(np.array(image), Learned.load(learned_file))
    assert np.array_equal(rebuild(shapes, 48, 40), want)
    per_class = [s.label_id for s in shapes]
    present = sorted(set(np.unique(want)) - {0})
    if instances:  # one shape per 8-connected region
        assert len(shapes) == sum(ndimage.label(want == k, structure=np.ones((3, 3)))[1]
                                  for k in present)
    else:
        assert per_class == present  # one shape per class present
    # the driver's own validation and label remapping, against a task whose labels have other ids
    task_labels = [models.Label(name=c, id=100 + k, type="mask", attributes=[], sublabels=[])
                   for k, c in enumerate(SHAPE_CLASSES) if k > 0]
    mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, task_labels,
                               allow_unmatched_labels=False, conv_mask_to_poly=False)
    _, remapped = mapper.validate_and_remap(shapes, 7)
    assert len(remapped) == len(shapes)
    assert {s.label_id for s in remapped} <= {100 + k for k in range(1, len(SHAPE_CLASSES))}
    assert {s.frame for s in remapped} == {7} and {s.source for s in remapped} == {"auto"}


def test_polygons_asked_for_are_refused_in_one_line(learned_file):
    function = load_function(learned_file)
    image = Image.fromarray(shapes_scene(5, 32)[0])
    with pytest.raises(InputError, match="^f.png: slimeseg's CVAT function returns masks; run it "
                                         "without --conv-mask-to-poly$"):
        function.detect(_DetectionFunctionContextImpl(frame_name="f.png", conv_mask_to_poly=True), image)


def test_a_bad_artifact_fails_when_the_function_is_loaded(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_text("not safetensors")
    with pytest.raises(Exception, match="x.safetensors: not a valid safetensors file"):
        load_function(bad)
