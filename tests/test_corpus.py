"""A generated corpus of bad or odd inputs: each one works as expected or fails with one clear line.

Every file is written at test time into a temp folder from a small generator (no committed
binaries). A case expects either ("works", shape) or ("error", a substring of the message); the
message must also name the file and be one line. Any other exception is a traceback for the user
and fails the case. `test_corpus_summary` runs the whole corpus and reports the counts.
"""

from __future__ import annotations

import io
import json
import pickle
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slimeseg import Learned
from slimeseg.errors import SlimeError
from slimeseg.io import load_image, load_mask, set_max_image_pixels

RNG = np.random.default_rng(0)
RGB = (RNG.random((13, 17, 3)) * 255).astype(np.uint8)  # odd sizes catch transposed axes
LABELS = RNG.integers(0, 4, (13, 17)).astype(np.uint8)
EXIF_OPS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
    8: lambda a: np.rot90(a, 1),
}


@dataclass
class Case:
    name: str  # file name written into the temp folder
    kind: str  # "image", "mask" or "artifact"
    write: Callable[[Path], None]
    expect: str  # "works" or "error"
    shape: tuple[int, ...] | None = None  # for "works"
    message: str = ""  # for "error": a substring of the message
    equals: np.ndarray | None = None  # for "works": the exact array expected
    max_pixels: int | None = None  # Pillow's guard for this case (None: the default)


def _save(img: Image.Image, fmt: str, **kw) -> Callable[[Path], None]:
    return lambda p: img.save(p, format=fmt, **kw)


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _writable(img: Image.Image, fmt: str) -> bool:
    """Whether this Pillow can write `img`'s mode in `fmt` (the set changes between versions)."""
    try:
        _encoded(img, fmt)
    except (OSError, ValueError, KeyError):
        return False
    return True


def _npy(arr: np.ndarray, allow_pickle: bool = False) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, arr, allow_pickle=allow_pickle)
    return write


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# ---------------------------------------------------------------------------- images
def image_cases() -> list[Case]:
    cases: list[Case] = []
    rgb = Image.fromarray(RGB)
    h, w = RGB.shape[:2]
    formats = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "webp": "WEBP", "tif": "TIFF", "gif": "GIF"}
    modes = {"png": ("RGB", "L", "LA", "RGBA", "P", "1", "I;16", "I"), "jpg": ("RGB", "L", "CMYK"),
             "bmp": ("RGB", "L", "P", "1"), "webp": ("RGB", "RGBA"), "gif": ("P", "L"),
             "tif": ("RGB", "L", "LA", "RGBA", "P", "1", "CMYK", "I;16", "I", "F", "LAB", "PA")}
    for ext, fmt in formats.items():
        for mode in modes[ext]:
            img = Image.fromarray(RGB[..., 0].astype(np.uint16) * 257) if mode == "I;16" else rgb.convert(mode)
            if not _writable(img, fmt):  # e.g. Pillow 13 no longer writes mode I as PNG
                continue
            cases.append(Case(f"mode_{mode.replace(';', '')}.{ext}", "image", _save(img, fmt), "works", (h, w, 3)))
        good = _encoded(rgb, fmt)
        for frac in (0.0, 0.1, 0.3, 0.6, 0.9):
            cut = good[: int(len(good) * frac)]
            cases.append(Case(f"trunc{int(frac * 100)}.{ext}", "image", _bytes(cut), "error"))
        cases.append(Case(f"random.{ext}", "image", _bytes(RNG.bytes(300)), "error", message="not a readable"))
        cases.append(Case(f"text.{ext}", "image", _bytes(b"hello, I am not an image\n"), "error"))
        for size in ((1, 1), (1, 40), (40, 1)):
            img = Image.fromarray(np.full((*size[::-1], 3), 200, np.uint8))
            cases.append(Case(f"tiny{size[0]}x{size[1]}.{ext}", "image", _save(img, fmt), "works",
                              (size[1], size[0], 3)))
    # transparency, 16-bit with full range, float with NaN, animated, multi-page
    pt = rgb.convert("P")
    pt.info["transparency"] = 0
    cases.append(Case("p_transparency.png", "image", _save(pt, "PNG", transparency=0), "works", (h, w, 3)))
    nan = np.full((5, 6), np.nan, np.float32)
    cases.append(Case("float_nan.tif", "image", _save(Image.fromarray(nan), "TIFF"), "works", (5, 6, 3)))
    frames = [Image.fromarray(np.full((8, 9, 3), v, np.uint8)) for v in (10, 200)]
    cases.append(Case("animated.gif", "image", lambda p: frames[0].save(p, save_all=True, append_images=frames[1:]),
                      "works", (8, 9, 3)))
    cases.append(Case("multipage.tif", "image", lambda p: frames[0].save(p, save_all=True, append_images=frames[1:]),
                      "works", (8, 9, 3)))
    # EXIF orientation, every value: lossless PNG checks the pixels, JPEG the shape
    for o, op in EXIF_OPS.items():
        expected = np.ascontiguousarray(op(RGB))
        cases.append(Case(f"exif{o}.png", "image", _save(rgb, "PNG", exif=_exif(o)), "works",
                          expected.shape, equals=expected))
        cases.append(Case(f"exif{o}.jpg", "image", _save(rgb, "JPEG", exif=_exif(o)), "works", expected.shape))
    broken_exif = _encoded(rgb, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff")
    cases.append(Case("broken_exif.jpg", "image", _bytes(broken_exif), "works", (h, w, 3)))
    # large images: fine under the default guard, refused under a set limit
    big = Image.new("L", (3000, 2000))
    cases.append(Case("big_6mp.png", "image", _save(big, "PNG"), "works", (2000, 3000, 3)))
    cases.append(Case("bomb.png", "image", _save(Image.new("L", (300, 300)), "PNG"), "error",
                      message="--max-image-pixels", max_pixels=1000))
    cases.append(Case("empty.png", "image", _bytes(b""), "error"))
    cases.append(Case("png_header_only.png", "image", _bytes(b"\x89PNG\r\n\x1a\n"), "error"))
    cases.append(Case("jpeg_header_only.jpg", "image", _bytes(b"\xff\xd8\xff\xe0"), "error"))
    cases.append(Case("svg.png", "image", _bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), "error"))
    cases.append(Case("a_folder.png", "image", lambda p: p.mkdir(), "error", message="directory"))
    cases.append(Case("missing.png", "image", lambda p: None, "error", message="not found"))
    return cases


# ---------------------------------------------------------------------------- masks
def mask_cases() -> list[Case]:
    cases: list[Case] = []
    lab = LABELS
    for dt in ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
               "float16", "float32", "float64", ">i4", ">f8"):
        cases.append(Case(f"dtype_{dt.replace('>', 'be_')}.npy", "mask", _npy(lab.astype(dt)), "works",
                          lab.shape, equals=lab))
    cases.append(Case("bool.npy", "mask", _npy(lab > 1), "works", lab.shape, equals=(lab > 1).astype(np.uint8)))
    cases.append(Case("fortran.npy", "mask", _npy(np.asfortranarray(lab)), "works", lab.shape, equals=lab))
    cases.append(Case("hw1.npy", "mask", _npy(lab[..., None]), "works", lab.shape, equals=lab))
    for shape in ((1, 1), (1, 30), (30, 1)):
        cases.append(Case(f"shape{shape[0]}x{shape[1]}.npy", "mask", _npy(np.ones(shape, np.uint8)), "works",
                          shape, equals=np.ones(shape, np.uint8)))
    cases.append(Case("single_class.npy", "mask", _npy(np.zeros((6, 7), np.int64)), "works", (6, 7)))
    cases.append(Case("max255.npy", "mask", _npy(np.full((2, 2), 255, np.int32)), "works", (2, 2)))
    bad_npy = {
        "nan.npy": (np.array([[0, np.nan]]), "NaN"), "inf.npy": (np.array([[0, np.inf]]), "infinite"),
        "neginf.npy": (np.array([[0, -np.inf]]), "infinite"), "frac.npy": (np.array([[0, 0.5]]), "fractional"),
        "neg.npy": (np.array([[0, -1]]), "negative"), "256.npy": (np.array([[0, 256]]), "256"),
        "huge.npy": (np.array([[0, 2**63 - 1]]), "class indices"),
        "3d.npy": (np.zeros((2, 2, 3)), "2-D"), "1d.npy": (np.zeros(5), "2-D"), "0d.npy": (np.array(3), "2-D"),
        "empty2d.npy": (np.zeros((0, 5)), "no pixels"), "complex.npy": (np.zeros((2, 2), complex), "dtype"),
        "str.npy": (np.array([["a", "b"]]), "dtype"), "datetime.npy": (np.zeros((2, 2), "M8[s]"), "dtype"),
        "struct.npy": (np.zeros((2, 2), [("a", "i4"), ("b", "f4")]), "dtype"),
        "void.npy": (np.zeros((2, 2), "V4"), "dtype"),
    }
    for name, (arr, msg) in bad_npy.items():
        cases.append(Case(name, "mask", _npy(arr), "error", message=msg))
    cases.append(Case("object.npy", "mask", _npy(np.array([[1, None]], dtype=object), allow_pickle=True),
                      "error", message="pickle"))

    class Boom:  # would run code if unpickled
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    cases.append(Case("pickle.npy", "mask", _bytes(pickle.dumps(Boom())), "error", message="pickle"))
    cases.append(Case("npz.npy", "mask", lambda p: np.savez(open(p, "wb"), a=lab), "error", message=".npz"))
    good = io.BytesIO()
    np.save(good, lab.astype(np.int32))
    for frac in (0.0, 0.05, 0.5, 0.9, 0.99):
        cases.append(Case(f"trunc{int(frac * 100)}.npy", "mask", _bytes(good.getvalue()[: int(len(good.getvalue()) * frac)]),
                          "error"))
    header = good.getvalue()[:128]
    cases.append(Case("bad_header.npy", "mask", _bytes(header.replace(b"'descr'", b"'dexcr'")), "error"))
    cases.append(Case("bigshape.npy", "mask", _bytes(header.replace(b"(13, 17)", b"(99999999999, 17)")), "error"))
    cases.append(Case("random.npy", "mask", _bytes(RNG.bytes(500)), "error"))
    cases.append(Case("text.npy", "mask", _bytes(b"0 1\n1 0\n"), "error"))
    # image-file masks
    lab_img = Image.fromarray(lab)
    pal = lab_img.convert("P")
    for ext, fmt in (("png", "PNG"), ("bmp", "BMP"), ("tif", "TIFF"), ("gif", "GIF")):
        cases.append(Case(f"L.{ext}", "mask", _save(lab_img, fmt), "works", lab.shape, equals=lab))
        cases.append(Case(f"palette.{ext}", "mask", _save(pal, fmt), "works", lab.shape, equals=lab))
        cases.append(Case(f"random_mask.{ext}", "mask", _bytes(RNG.bytes(200)), "error"))
        cases.append(Case(f"trunc_mask.{ext}", "mask", _bytes(_encoded(lab_img, fmt)[:40]), "error"))
    cases.append(Case("pal_transparency.png", "mask", _save(pal, "PNG", transparency=0), "works", lab.shape,
                      equals=lab))
    cases.append(Case("i16.png", "mask", _save(Image.fromarray(lab.astype(np.uint16)), "PNG"), "works", lab.shape,
                      equals=lab))
    cases.append(Case("i16_300.png", "mask", _save(Image.fromarray(np.full((3, 3), 300, np.uint16)), "PNG"),
                      "error", message="300"))
    cases.append(Case("bilevel.png", "mask", _save(Image.fromarray(lab > 1), "PNG"), "works", lab.shape,
                      equals=(lab > 1).astype(np.uint8)))
    gray_rgb = Image.fromarray(np.repeat(lab[..., None], 3, 2))
    cases.append(Case("gray_rgb.png", "mask", _save(gray_rgb, "PNG"), "works", lab.shape, equals=lab))
    cases.append(Case("gray_rgba.png", "mask", _save(gray_rgb.convert("RGBA"), "PNG"), "works", lab.shape, equals=lab))
    cases.append(Case("colour.png", "mask", _save(Image.fromarray(RGB), "PNG"), "error", message="colour"))
    cases.append(Case("float_whole.tif", "mask", _save(Image.fromarray(lab.astype(np.float32)), "TIFF"), "works",
                      lab.shape, equals=lab))
    cases.append(Case("float_frac.tif", "mask", _save(Image.fromarray(np.full((2, 2), 0.5, np.float32)), "TIFF"),
                      "error", message="fractional"))
    cases.append(Case("mask_float_nan.tif", "mask", _save(Image.fromarray(np.full((2, 2), np.nan, np.float32)), "TIFF"),
                      "error", message="NaN"))
    cases.append(Case("single_class.png", "mask", _save(Image.new("L", (9, 4)), "PNG"), "works", (4, 9)))
    cases.append(Case("mask.jpg", "mask", _save(lab_img, "JPEG"), "error", message="lossy"))
    cases.append(Case("mask_folder.png", "mask", lambda p: p.mkdir(), "error", message="directory"))
    cases.append(Case("missing_mask.npy", "mask", lambda p: None, "error", message="not found"))
    # EXIF orientation: a mask is rotated exactly like its image
    for o, op in EXIF_OPS.items():
        expected = np.ascontiguousarray(op(lab))
        cases.append(Case(f"mask_exif{o}.png", "mask", _save(lab_img, "PNG", exif=_exif(o)), "works",
                          expected.shape, equals=expected))
    return cases


# ---------------------------------------------------------------------------- artifacts
CONTEXT = torch.randn(77, 32, generator=torch.Generator().manual_seed(0))


def _meta(**changes) -> dict:
    meta = {"format": "slimeseg.learned", "format_version": 1, "classes": ["background", "a", "b"],
            "model_id": "tiny", "fingerprint": "f" * 16, "config": {"image_size": 64, "seed": 0},
            "revision": None, "image_hashes": ["0" * 64], "history": {"steps_done": 1}}
    for key, value in changes.items():
        if value is _DROP:
            meta.pop(key)
        else:
            meta[key] = value
    return meta


_DROP = object()


def _artifact(meta: dict | str | None = None, tensors: dict | None = None) -> Callable[[Path], None]:
    from safetensors.torch import save_file

    def write(p: Path) -> None:
        data = {"context": CONTEXT} if tensors is None else tensors
        raw = json.dumps(_meta() if meta is None else meta) if not isinstance(meta, str) else meta
        save_file(data, str(p), metadata={"slimeseg": raw})
    return write


def _artifact_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.safetensors"
        _artifact()(path)
        return path.read_bytes()


def _no_metadata(p: Path) -> None:
    from safetensors.torch import save_file

    save_file({"context": CONTEXT}, str(p))


def artifact_cases() -> list[Case]:
    cases = [Case("good.safetensors", "artifact", _artifact(), "works", (77, 32))]
    good = _artifact_bytes()
    for i, cut in enumerate(sorted({0, 1, 7, 8, 9, 20, 60, 200, len(good) // 2, len(good) - 100, len(good) - 1})):
        cases.append(Case(f"trunc{i}.safetensors", "artifact", _bytes(good[:cut]), "error"))
    cases.append(Case("huge_header_len.safetensors", "artifact", _bytes(b"\xff" * 8 + good[8:]), "error"))
    cases.append(Case("zero_header_len.safetensors", "artifact", _bytes(b"\x00" * 8 + good[8:]), "error"))
    cases.append(Case("random.safetensors", "artifact", _bytes(RNG.bytes(1000)), "error"))
    cases.append(Case("empty.safetensors", "artifact", _bytes(b""), "error"))
    cases.append(Case("json.safetensors", "artifact", _bytes(json.dumps(_meta()).encode()), "error"))
    cases.append(Case("torch_pickle.pt", "artifact", lambda p: torch.save({"context": CONTEXT}, p), "error"))
    cases.append(Case("folder.safetensors", "artifact", lambda p: p.mkdir(), "error", message="not found"))
    cases.append(Case("no_meta.safetensors", "artifact",
                      _no_metadata,
                      "error", message="no slimeseg metadata"))
    cases.append(Case("meta_not_json.safetensors", "artifact", _artifact("{nope"), "error", message="corrupt"))
    cases.append(Case("meta_list.safetensors", "artifact", _artifact("[1, 2]"), "error"))
    cases.append(Case("meta_null.safetensors", "artifact", _artifact("null"), "error"))
    required = {"format": 1, "format_version": "1", "classes": "a,b", "model_id": 3, "fingerprint": None,
                "config": []}
    for key, wrong in required.items():
        cases.append(Case(f"missing_{key}.safetensors", "artifact", _artifact(_meta(**{key: _DROP})), "error",
                          message=key if key != "format" else "not a slimeseg"))
        cases.append(Case(f"wrongtype_{key}.safetensors", "artifact", _artifact(_meta(**{key: wrong})), "error",
                          message=key if key != "format" else "not a slimeseg"))
    bad_meta = {
        "newer": ({"format_version": 99}, "newer"), "one_class": ({"classes": ["bg"]}, "2 to 76"),
        "class_int": ({"classes": ["bg", 1]}, "2 to 76"), "class_empty": ({"classes": ["bg", ""]}, "2 to 76"),
        "revision_int": ({"revision": 5}, "revision"), "hashes_str": ({"image_hashes": "abc"}, "image_hashes"),
        "hashes_int": ({"image_hashes": [1]}, "image_hashes"), "history_list": ({"history": []}, "history"),
        "cfg_size_str": ({"config": {"image_size": "big"}}, "image_size"),
        "cfg_size_0": ({"config": {"image_size": 0}}, "image_size"),
        "cfg_size_65": ({"config": {"image_size": 65}}, "multiple of 64"),
        "cfg_lr_str": ({"config": {"lr": "fast"}}, "lr"), "cfg_was_int": ({"config": {"use_was": 1}}, "use_was"),
        "cfg_seed_bool": ({"config": {"seed": True}}, "seed"), "cfg_tiles_0": ({"config": {"tiles": 0}}, "tiles"),
        "cfg_norm": ({"config": {"normalization": "bogus"}}, "normalization"),
        "cfg_norm_int": ({"config": {"normalization": 1}}, "normalization"),
        "cfg_extra_list": ({"config": {"extra": []}}, "extra"),
        "cfg_steps_str": ({"config": {"steps": "10"}}, "steps"),
    }
    for name, (change, msg) in bad_meta.items():
        cases.append(Case(f"{name}.safetensors", "artifact", _artifact(_meta(**change)), "error", message=msg))
    fine_meta = {
        "revision_str": {"revision": "main"}, "no_optional": {"revision": _DROP, "image_hashes": _DROP,
                                                               "history": _DROP},
        "cfg_unknown_key": {"config": {"image_size": 64, "from_the_future": [1, 2]}},
        "cfg_steps_none": {"config": {"steps": None, "ldm_guidance": None}},
        "cfg_lr_int": {"config": {"lr": 1}}, "cfg_empty": {"config": {}},
        "old_format": {"format_version": 0},
    }
    for name, change in fine_meta.items():
        cases.append(Case(f"{name}.safetensors", "artifact", _artifact(_meta(**change)), "works", (77, 32)))
    bad_tensors = {
        "no_context": ({"other": CONTEXT}, "shape None"), "context_1d": ({"context": CONTEXT[0]}, "shape"),
        "context_short": ({"context": CONTEXT[:2]}, "shape"),
        "context_nan": ({"context": CONTEXT.clone().fill_(float("nan"))}, "NaN"),
        "context_inf": ({"context": torch.full((77, 32), float("inf"))}, "infinite"),
        "state_partial": ({"context": CONTEXT, "state.step": torch.tensor([1])}, "resume state"),
        "state_bad_rng": ({"context": CONTEXT, "state.step": torch.tensor([1]), "state.order": torch.tensor([0]),
                           "state.rng": torch.zeros(3, dtype=torch.uint8)}, "resume state"),
        "state_bad_adam": ({"context": CONTEXT, "state.step": torch.tensor([1]), "state.order": torch.tensor([0]),
                            "state.rng": torch.Generator().get_state(),
                            "state.adam_exp_avg": torch.zeros(5)}, "resume state"),
    }
    for name, (tensors, msg) in bad_tensors.items():
        cases.append(Case(f"{name}.safetensors", "artifact", _artifact(tensors=tensors), "error", message=msg))
    cases.append(Case("context_f16.safetensors", "artifact", _artifact(tensors={"context": CONTEXT.half()}),
                      "works", (77, 32)))
    return cases


CASES = image_cases() + mask_cases() + artifact_cases()
READERS: dict[str, Callable[[Path], object]] = {"image": load_image, "mask": load_mask, "artifact": Learned.load}


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """('works', shape) / ('error', message) / ('traceback', text) for one case."""
    path = folder / case.name
    case.write(path)
    default_limit = Image.MAX_IMAGE_PIXELS
    if case.max_pixels is not None:
        set_max_image_pixels(case.max_pixels)
    try:
        out = READERS[case.kind](path)
    except SlimeError as exc:
        return "error", str(exc)
    except BaseException:  # anything else would reach the user as a traceback
        return "traceback", traceback.format_exc()
    finally:
        set_max_image_pixels(default_limit)
    if isinstance(out, Learned):
        out = out.context
    return "works", out


def check(case: Case, outcome: str, value, folder: Path) -> None:
    assert outcome != "traceback", f"{case.name}: {value}"
    assert outcome == case.expect, f"{case.name}: expected {case.expect}, got {outcome}: {value}"
    if outcome == "error":
        assert "\n" not in value and str(folder / case.name) in value, value
        assert case.message in value, (case.message, value)
    else:
        assert tuple(value.shape) == case.shape, (case.name, value.shape)
        if case.kind == "image":
            assert value.dtype == np.uint8
        if case.kind == "mask":
            assert value.dtype == np.uint8
        if case.equals is not None:
            np.testing.assert_array_equal(value, case.equals)


def test_corpus_is_big_and_unique():
    names = [c.name for c in CASES]
    assert len(names) >= 200 and len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case, tmp_path):
    outcome, value = run_case(case, tmp_path)
    check(case, outcome, value, tmp_path)


def test_corpus_summary(tmp_path, capsys):
    counts = {"tried": 0, "works": 0, "refused with a clear error": 0, "tracebacks": 0, "unexpected": 0}
    for case in CASES:
        outcome, value = run_case(case, tmp_path)
        counts["tried"] += 1
        if outcome == "traceback":
            counts["tracebacks"] += 1
        elif outcome == "works":
            counts["works"] += 1
        elif "\n" not in value and str(tmp_path / case.name) in value:
            counts["refused with a clear error"] += 1
        if outcome != case.expect:
            counts["unexpected"] += 1
    with capsys.disabled():
        print("\ncorpus:", ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert counts["tracebacks"] == 0 and counts["unexpected"] == 0
    assert counts["works"] + counts["refused with a clear error"] == counts["tried"] >= 200
