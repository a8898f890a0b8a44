"""Reading images of any mode and size safely, before CLIP's preprocessing."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, without_dirs

MAX_PIXELS = 64_000_000  # decoded size guard against decompression bombs (e.g. 8000 x 8000)
MAX_ASPECT = 2.0  # CLIP keeps only the centre square; longer sides are cropped before resizing


def load_image(
    source: str | os.PathLike | bytes | Image.Image | np.ndarray, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """An RGB PIL image from a path, bytes, PIL image or array.

    Handles every PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1): transparency is composited on
    white, 16-bit and float images are rescaled to 8 bits. EXIF orientation is applied. Images
    larger than ``max_pixels`` are refused before decoding. Extreme aspect ratios are cropped to
    their central 2:1 region, which contains everything CLIP's centre crop keeps.
    """
    name = "image"
    if isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray)):
            fp: io.BytesIO | Path = io.BytesIO(source)
        else:
            path = Path(source)
            name = path.name
            if not path.is_file():
                raise ImageError(f"no such image file: {str(path)!r}")
            fp = path
        image = _open(fp, name, source, max_pixels)
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageError(f"{name} has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(
            f"{name} is {w}x{h} = {w * h / 1e6:.0f} megapixels; the limit is "
            f"{max_pixels / 1e6:.0f} megapixels (downscale it first)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _crop_aspect(_to_rgb(image))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageError(_too_many_pixels(name, max_pixels)) from None
    except MemoryError:
        raise ImageError(f"{name} is too large to decode here") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise any type on corrupt data
        raise ImageError(f"{name} could not be decoded ({_short(exc, source)})") from None


def _open(fp, name: str, source, max_pixels: int) -> Image.Image:
    """``Image.open`` (header only) with every failure as one ImageError: Pillow raises
    UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error, ... on bad data,
    and DecompressionBombError (not an OSError) past its hard pixel limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageError(_too_many_pixels(name, max_pixels)) from None
    except Exception as exc:  # noqa: BLE001 - see above; the message is one line either way
        raise ImageError(f"{name} is not a readable image ({_short(exc, source)})") from None


def _too_many_pixels(name: str, max_pixels: int) -> str:
    return (
        f"{name} has too many pixels to decode safely; the limit is "
        f"{max_pixels / 1e6:.0f} megapixels (downscale it first)"
    )


def _short(exc: BaseException, source=None) -> str:
    """The exception's text without the file's directory (server paths stay private)."""
    return without_dirs(str(exc).strip() or type(exc).__name__)[:160]


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = _to_uint8(arr.astype(np.float64))
    return Image.fromarray(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    if lo >= 0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    return np.round((arr - lo) / (hi - lo) * 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        return Image.fromarray(_to_uint8(np.asarray(image, dtype=np.float64))).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _crop_aspect(image: Image.Image) -> Image.Image:
    w, h = image.size
    if w > MAX_ASPECT * h:
        keep = max(1, int(round(MAX_ASPECT * h)))
        left = (w - keep) // 2
        return image.crop((left, 0, left + keep, h))
    if h > MAX_ASPECT * w:
        keep = max(1, int(round(MAX_ASPECT * w)))
        top = (h - keep) // 2
        return image.crop((0, top, w, top + keep))
    return image
