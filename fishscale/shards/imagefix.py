"""Normalize one source image for the shards: RGB JPEG, EXIF orientation applied, longer side capped.

Decoding happens once per image. A source that is already an upright RGB JPEG within the size
cap keeps its original bytes (no generational loss, no encode cost); anything that changed is
re-encoded. JPEGs that must shrink are decoded at reduced DCT scale (PIL's ``draft``), which is
what makes multi-megapixel sources cheap. A bad file never raises: the caller gets a reason.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# EXIF orientation tag value -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
_WHITE = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485   # PIL's own decompression-bomb limit


@dataclass
class Normalized:
    """Outcome for one source: JPEG bytes, or the reason it was rejected."""
    jpeg: bytes | None
    reason: str | None
    source_sha256: str            # of the source file's bytes ("" when unreadable)
    width: int = 0                # of the stored image
    height: int = 0
    source_width: int = 0
    source_height: int = 0
    reencoded: bool = False


def target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) with the longer side at most max_side, aspect kept; unchanged when it already fits."""
    longest = max(width, height)
    if not max_side or longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def normalize_file(path: str, max_side: int | None, quality: int,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Normalized:
    """Read and normalize the image at path; a missing or unreadable file gives a reason, never raises."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return Normalized(None, "missing file", "")
    except OSError as e:
        return Normalized(None, f"unreadable file: {e.strerror or e}", "")
    return normalize_bytes(data, max_side, quality, max_pixels)


def normalize_bytes(data: bytes, max_side: int | None, quality: int,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Normalized:
    """Normalize encoded image bytes (see the module docstring)."""
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return Normalized(None, "empty file (0 bytes)", digest)
    try:   # PIL warns past its own limit; our (configurable) limit just below turns that into a skip
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        return Normalized(None, f"decompression bomb: {e}", digest)
    except Exception as e:  # PIL raises many types for garbage; any of them means "not an image"
        return Normalized(None, f"not an image ({type(e).__name__}: {e})", digest)
    source_w, source_h = im.size
    if source_w * source_h > max_pixels:
        return Normalized(None, f"decompression bomb: {source_w}x{source_h} = {source_w * source_h} pixels "
                                f"exceeds the limit of {max_pixels}", digest)
    try:
        out, changed = _upright_rgb(im, max_side)
    except Exception as e:  # truncated data, corrupt stream, unsupported codec feature
        return Normalized(None, f"cannot decode ({type(e).__name__}: {e})", digest)
    jpeg = data
    if changed:
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=quality)
        jpeg = buf.getvalue()
    return Normalized(jpeg, None, digest, out.width, out.height, source_w, source_h, changed)


def _upright_rgb(im: Image.Image, max_side: int | None) -> tuple[Image.Image, bool]:
    """Decode, fix orientation and mode, downscale; return the image and whether it differs from the source."""
    orientation = _orientation(im)
    size = target_size(*im.size, max_side)
    resize = size != im.size
    if resize and im.format == "JPEG":
        im.draft("RGB", size)   # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below `size`
    keep_bytes = im.format == "JPEG" and im.mode == "RGB" and orientation == 1 and not resize
    im.load()
    rgb = _to_rgb(im)
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    if orientation in _UPRIGHT:
        rgb = rgb.transpose(_UPRIGHT[orientation])
    return rgb, not keep_bytes


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in _UPRIGHT else 1
    except Exception:  # a corrupt EXIF block is no reason to lose the image
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha composited on white, 16/32-bit and float scaled to 8 bits."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        if im.mode == "RGB":
            return im
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode.startswith("I") or im.mode == "F":
        return _high_depth_to_rgb(im)
    return im.convert("RGB")   # L, 1, CMYK, YCbCr, LAB, HSV


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit (I;16*, or I holding 0..65535) and float grayscale -> 8-bit RGB by scaling, not clipping."""
    values = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if im.mode.startswith("I;16") or (values.size and values.max() > 255) else 255.0
    gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")
