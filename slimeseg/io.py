"""Reading images and masks into validated arrays (writing results lives in `writers`).

Everything that reads user files lives here, so the engine only ever sees clean arrays: images
as (H, W, 3) uint8 RGB, masks as (H, W) uint8 class indices.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import MAX_CLASSES
from .errors import InputError, one_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif", ".npy")
MASK_VALUE_LIMIT = 256  # mask values are below this (uint8); 255 = "ignore" in datasets


def set_max_image_pixels(limit: int | None) -> None:
    """Set Pillow's decompression-bomb guard (pixels); None disables it (not recommended)."""
    Image.MAX_IMAGE_PIXELS = limit


def _open(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image file, turning every Pillow failure into one line."""
    if not path.exists():
        raise InputError(f"{path}: {what} file not found")
    if path.is_dir():
        raise InputError(f"{path}: expected a {what} file, got a directory")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # Pillow's metadata chatter would not name the file
            img = Image.open(path)
            img.load()
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{path}: {what} is too large ({exc}); raise the limit with --max-image-pixels"
        ) from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable {what} (unknown or corrupt format)") from None
    except MemoryError:
        raise InputError(f"{path}: {what} is too large to decode in memory") from None
    except Exception as exc:  # Pillow's decoders raise many types on damaged files
        raise InputError(f"{path}: corrupt or truncated {what} ({one_line(exc)})") from None
    if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        warnings.warn(f"{path}: {what} is very large ({img.width}x{img.height} pixels); "
                      "decoding it takes a lot of memory", stacklevel=3)
    try:
        img = ImageOps.exif_transpose(img)  # honour the camera's orientation tag
    except Exception:  # a broken EXIF block must not make the pixels unreadable
        pass
    return img


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode (L, P, RGBA, CMYK, I;16, F, ...) to (H, W, 3) uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "I" and arr.max() <= 255:
            hi = 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, EXIF orientation applied."""
    path = Path(path)
    img = _open(path, "image")
    try:
        arr = _to_uint8_rgb(img)
    except (ValueError, OSError) as exc:  # modes Pillow cannot convert (LAB, HSV, ...)
        raise InputError(f"{path}: unsupported image mode {img.mode} ({one_line(exc)})") from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{path}: image has no pixels")
    return arr


def as_image_array(image: np.ndarray | Image.Image | str | os.PathLike, name: str = "image") -> np.ndarray:
    """Accept a path, a PIL image or an array and return (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return _to_uint8_rgb(image)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"{name}: expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise InputError(f"{name}: image array holds NaN or infinite values")
            scale = 255.0 if arr.max() <= 1.0 else 1.0
            arr = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{name}: image has no pixels")
    return np.ascontiguousarray(arr)


def _mask_from_numbers(arr: np.ndarray, name: str) -> np.ndarray:
    """Validate a numeric mask array: 2-D, finite, whole, 0..MASK_VALUE_LIMIT-1 (as uint8).

    Only the storage range is checked here: 255 is a dataset's "ignore" label (`datasets.IGNORE`);
    the caller checks values against its class list (`prepare_examples`, `Dataset`)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{name}: mask must be 2-D (H, W) class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{name}: mask has no pixels")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: mask holds NaN or infinite values")
        if not np.all(arr == np.round(arr)):
            raise InputError(f"{name}: mask holds fractional values; expected whole class indices")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name}: mask has unsupported dtype {arr.dtype}")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0:
        raise InputError(f"{name}: mask holds negative value {int(lo)}; expected class indices >= 0")
    if hi >= MASK_VALUE_LIMIT:  # what a uint8 mask holds; the class list bounds it later
        raise InputError(f"{name}: mask holds value {int(hi)}; mask values must be "
                         f"0..{MASK_VALUE_LIMIT - 1} (class indices 0..{MAX_CLASSES - 1}; "
                         f"{MASK_VALUE_LIMIT - 1} marks ignored pixels in datasets)")
    return arr.astype(np.uint8)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask of class indices: index/palette PNG (and other lossless formats) or `.npy`."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.exists():
            raise InputError(f"{path}: mask file not found")
        try:
            arr = np.load(path, allow_pickle=False)  # never unpickle: a .npy is data, not code
        except ValueError as exc:
            raise InputError(f"{path}: not a plain numeric .npy array ({one_line(exc)})") from None
        except MemoryError:
            raise InputError(f"{path}: .npy mask is too large to load") from None
        except Exception as exc:  # numpy's header parser raises several types on damaged files
            raise InputError(f"{path}: corrupt or truncated .npy file ({one_line(exc)})") from None
        if not isinstance(arr, np.ndarray):  # an .npz archive renamed to .npy
            if hasattr(arr, "close"):
                arr.close()
            raise InputError(f"{path}: not a single .npy array (an .npz archive?)")
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{path}: .npy mask has unsupported dtype {arr.dtype}")
        return _mask_from_numbers(arr, str(path))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        raise InputError(
            f"{path}: JPEG is lossy and cannot hold class indices; save the mask as PNG or .npy"
        )
    img = _open(path, "mask")
    if img.mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
        if img.mode == "1":
            img = img.convert("L")
            return (np.asarray(img) > 0).astype(np.uint8)
        return _mask_from_numbers(np.asarray(img), str(path))
    if img.mode == "F":
        return _mask_from_numbers(np.asarray(img), str(path))
    arr = np.asarray(img.convert("RGBA" if "A" in img.mode else "RGB"))
    rgb = arr[..., :3]
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return _mask_from_numbers(rgb[..., 0], str(path))
    raise InputError(
        f"{path}: mask is a colour ({img.mode}) image; give single-channel class indices "
        "(an index or palette PNG, or .npy)"
    )


def as_mask_array(mask: np.ndarray | Image.Image | str | os.PathLike, name: str = "mask") -> np.ndarray:
    """Accept a path, a PIL image or an array and return an (H, W) uint8 class-index mask."""
    if isinstance(mask, (str, os.PathLike)):
        return load_mask(mask)
    if isinstance(mask, Image.Image):
        if mask.mode not in ("P", "L", "1", "I", "I;16", "F"):
            raise InputError(f"{name}: mask image must be single-channel, got mode {mask.mode}")
        return _mask_from_numbers(np.asarray(mask.convert("L") if mask.mode == "1" else mask), name)
    return _mask_from_numbers(np.asarray(mask), name)


def check_pair(image: np.ndarray, mask: np.ndarray, image_name: str, mask_name: str) -> None:
    """Refuse an (image, mask) pair whose sizes differ."""
    if image.shape[:2] != mask.shape[:2]:
        ih, iw = image.shape[:2]
        mh, mw = mask.shape[:2]
        raise InputError(
            f"{mask_name}: mask is {mw}x{mh} but image {image_name} is {iw}x{ih}; they must match"
        )


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in a folder, sorted by name; an empty folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files

