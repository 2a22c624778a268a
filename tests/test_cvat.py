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
from slimeseg.synthetic.scenes import SHAPE_CLASSES, shapes_scene

cvataa = pytest.importorskip("cvat_sdk.auto_annotation", reason="cvat-sdk (slimeseg[cvat]) not installed")
from cvat_sdk import models  # noqa: E402
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl  # noqa: E402
from cvat_sdk.masks import decode_mask  # noqa: E402

from slimeseg.integrations import cvat  # noqa: E402


@pytest.fixture(scope="module")
def learned_file(tmp_path_factory, segmenter) -> Path:
    image, mask = shapes_scene(0, 64)
    # bilinear: the tiny random model's scores are nearly flat, and guided upsampling smooths
    # them to background everywhere; these tests need label maps with parts in them
    learned = segmenter.match([image], [mask], SHAPE_CLASSES, image_size=64, upsample="bilinear")
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


def inside(polygon: list[float], height: int, width: int) -> np.ndarray:
    """Which pixel centres lie inside a polygon (even-odd rule)."""
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pts = np.array(polygon).reshape(-1, 2)
    hit = np.zeros((height, width), bool)
    for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        crosses = (y0 > ys) != (y1 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        hit ^= crosses & (xs < at)
    return hit


def test_outer_polygons_hold_exactly_each_region_holes_filled():
    m = np.zeros((12, 14), bool)
    m[1:6, 1:6] = True
    m[3, 3] = False  # a hole
    m[6, 6] = m[7, 7] = True  # pixels touching at corners join the square (8-connected)
    m[9:11, 2:12] = True  # a second region
    m[8, 12] = True  # touches it at a corner
    polys = cvat.outer_polygons(m)
    assert len(polys) == 2
    filled = ndimage.binary_fill_holes(m)
    union = np.zeros_like(m)
    for poly in polys:
        assert len(poly) % 2 == 0 and len(poly) >= 8
        union |= inside(poly, *m.shape)
    assert np.array_equal(union, filled)
    assert cvat.outer_polygons(np.zeros((3, 3), bool)) == []
    assert cvat.outer_polygons(np.ones((1, 1), bool)) == [[0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]]


def test_outer_polygons_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = rng.random((rng.integers(1, 15), rng.integers(1, 15))) < rng.uniform(0.2, 0.7)
        polys = cvat.outer_polygons(m)
        union = np.zeros_like(m)
        for poly in polys:
            union |= inside(poly, *m.shape)
        assert np.array_equal(union, ndimage.binary_fill_holes(m))
        assert len(polys) == ndimage.label(m, structure=np.ones((3, 3)))[1]  # one per region


def test_conv_mask_to_poly_returns_polygons_the_driver_accepts(learned_file, segmenter):
    function = load_function(learned_file)
    image = Image.fromarray(shapes_scene(5, 48)[0][:40])  # 48 x 40
    shapes = function.detect(_DetectionFunctionContextImpl(frame_name="f.png", conv_mask_to_poly=True),
                             image)
    assert shapes and {s.type.value for s in shapes} == {"polygon"}
    want = segmenter.predict(np.array(image), Learned.load(learned_file))
    for k in range(1, len(SHAPE_CLASSES)):
        union = np.zeros(want.shape, bool)
        for s in shapes:
            if s.label_id == k:
                union |= inside(s.points, *want.shape)
        assert np.array_equal(union, ndimage.binary_fill_holes(want == k))
    task_labels = [models.Label(name=c, id=100 + k, type="polygon", attributes=[], sublabels=[])
                   for k, c in enumerate(SHAPE_CLASSES) if k > 0]
    mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, task_labels,
                               allow_unmatched_labels=False, conv_mask_to_poly=True)
    _, remapped = mapper.validate_and_remap(shapes, 3)
    assert len(remapped) == len(shapes) and {s.frame for s in remapped} == {3}


def test_a_bad_artifact_fails_when_the_function_is_loaded(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_text("not safetensors")
    with pytest.raises(Exception, match="x.safetensors: not a valid safetensors file"):
        load_function(bad)
