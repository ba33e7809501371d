"""Image input: decode whatever a user uploads into a plain RGB picture, then frame it the way a
model's training images were framed.

A model's ``ImagePreprocess`` record (``effviz.models.releases``) says which framing:

- ``"photo"``: RGB, resized and centre-cropped like ImageNet evaluation (DeiT, Vim, VRWKV, as
  timm and the official code do it): the shorter side is scaled to ``floor(size / crop_pct)``,
  then the centre is cropped. With ``resize="squash"`` (our 32x32 CIFAR models) the whole picture
  is resized instead, aspect ratio not kept: their training images were whole photos shrunk to
  32x32, and a crop of a 32x32 view loses a large part of a small object.
- ``"digit"``: one channel in MNIST's framing: white ink on black, the ink scaled to fit a 20x20
  box inside 28x28 and placed so that its centre of mass is the canvas centre. A black-on-white
  drawing (a sketchpad, a photo of paper) is inverted first.
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..models.releases import ImagePreprocess

# 50 MP takes the largest common phone photos (48 MP, 8064x6048) and keeps a decoded RGB picture
# under 150 MB. Pillow refuses anything over 2 * Image.MAX_IMAGE_PIXELS (~179 MP) on its own, so a
# larger ``max_pixels`` cannot go past that.
MAX_PIXELS = 50_000_000
# Above this many pixels, the resized picture that the centre crop is cut from is not built:
# a 1x10000 strip would need a 256x2,560,000 intermediate. One resize of the region the crop keeps
# gives the same picture up to the filter's rounding at the crop's edges.
MAX_INTERMEDIATE_PIXELS = 16_000_000
_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# MNIST: digits size-normalised into 20x20, centred by centre of mass in a 28x28 field.
DIGIT_BOX_FRACTION = 20 / 28
# After inversion and background removal, pixels brighter than this are ink (defines the box).
INK_THRESHOLD = 0.2

# Raster formats accepted from uploads. Naming them keeps Pillow from handing odd files to
# plugins that shell out to other programs (EPS -> Ghostscript). Multi-picture phone JPEGs
# (MPO) come through "JPEG".
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
# Signatures of those formats, so that a cut-off file of a known format is reported as damaged
# rather than as "not an image".
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
# "I" is 32-bit, but decoders produce it for 16-bit data (older Pillow's 16-bit PNGs, TIFF).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")


def open_image(data: bytes | str | Path | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an uploaded image into an 8-bit RGB ``PIL.Image``.

    Accepts file bytes, a path, or an already opened image. Handles what uploads contain: EXIF
    rotation (applied), animated GIFs (the first frame), 16-bit greyscale (scaled to 8 bits),
    CMYK, palettes, 1-bit, and transparency (composited on white, so that a transparent
    sketchpad drawing reads as ink on paper). Tiny or very thin images are fine here; resizing
    happens in :func:`image_to_tensor`.

    Raises ``ValueError`` with a specific message for an empty file, something that is not an
    image, a truncated or corrupt file, and a picture over ``max_pixels`` (checked from the header,
    before any pixel is decoded); ``FileNotFoundError`` for a missing path.
    """
    if isinstance(data, Image.Image):
        _check_pixel_count(data.size, max_pixels)
        return _to_rgb(data)
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if len(data) == 0:
        raise ValueError("cannot read the image: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP on; our own limit is checked right after opening instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as err:  # over Pillow's hard limit, whatever max_pixels says
        raise ValueError(_too_large_message(f"over {2 * Image.MAX_IMAGE_PIXELS:,} pixels", max_pixels)) from err
    except UnidentifiedImageError as err:
        if data.startswith(_IMAGE_SIGNATURES):
            raise ValueError("cannot read the image: the file is truncated or corrupt") from err
        raise ValueError(
            f"cannot read the image: the file is not an image in a supported format ({', '.join(FORMATS)})"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's ways of saying "damaged header"
        raise ValueError(f"cannot read the image: the file is truncated or corrupt ({err})") from err
    _check_pixel_count(img.size, max_pixels)
    try:
        img.load()  # an animated GIF opens on its first frame: only that one is decoded
        img = ImageOps.exif_transpose(img)
    except Exception as err:  # a decoder can fail in many ways on damaged data; all mean the same
        raise ValueError(f"cannot read the image: the file is truncated or corrupt ({err})") from err
    return _to_rgb(img)


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ValueError(_too_large_message(f"{width}x{height} = {width * height:,} pixels", max_pixels))


def _too_large_message(size: str, max_pixels: int) -> str:
    return (
        f"the image is too large ({size}; the limit is {max_pixels:,} pixels): "
        "refused before decoding, as a possible decompression bomb"
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert("L") clips 16-bit values at 255 (a near-white picture); scale instead.
        levels = np.asarray(img).astype(np.float32) / 257.0
        img = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # CMYK, palettes, 1-bit, greyscale, YCbCr ...


def image_to_tensor(img: Image.Image, pre: ImagePreprocess) -> torch.Tensor:
    """A ``(1, C, H, W)`` float32 model input from a picture, framed as ``pre.style`` says.

    ``"photo"`` gives 3 channels normalised with ``pre.mean``/``pre.std``; ``"digit"`` gives 1
    channel normalised with their first entries, and raises ``ValueError("the drawing is
    empty")`` when no ink is found.
    """
    if pre.style == "photo":
        pixels = _frame_photo(img.convert("RGB"), pre)
        mean, std = pre.mean, pre.std
    else:
        pixels = _frame_digit(img.convert("L"), pre.size)[..., None]
        mean, std = pre.mean[:1], pre.std[:1]
    x = torch.from_numpy(pixels).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    return x.unsqueeze(0).float()


def _frame_photo(img: Image.Image, pre: ImagePreprocess) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    height, width = pre.size
    resample = _RESAMPLING[pre.interpolation]
    if pre.resize == "squash":
        framed = img.resize((width, height), resample)
    else:
        # Shorter side to floor(size / crop_pct), the longer in proportion (truncated), then the
        # centre crop with its offset rounded: torchvision's Resize + CenterCrop, as timm uses them.
        short = math.floor(min(height, width) / pre.crop_pct)
        scale = short / min(img.width, img.height)
        if img.width <= img.height:
            new_w, new_h = short, int(short * img.height / img.width)
        else:
            new_w, new_h = int(short * img.width / img.height), short
        top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
        if new_w * new_h <= MAX_INTERMEDIATE_PIXELS and new_w >= width and new_h >= height:
            framed = img.resize((new_w, new_h), resample).crop((left, top, left + width, top + height))
        else:
            box = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
            framed = img.resize((width, height), resample, box=box)
    return np.asarray(framed, dtype=np.float32) / 255.0


def _frame_digit(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: white ink on black, MNIST framing."""
    gray = np.asarray(img, dtype=np.float32) / 255.0
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:  # light background: dark ink on paper or a sketchpad
        gray = 1.0 - gray
        border = 1.0 - border
    background = float(np.median(border))
    ink = np.clip((gray - background) / max(1.0 - background, 1e-6), 0.0, 1.0)
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    if rows.size == 0:
        raise ValueError("the drawing is empty: no ink found (draw a digit, or upload a picture of one)")
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    canvas_h, canvas_w = size
    box = round(DIGIT_BOX_FRACTION * min(size))
    scale = box / max(ink.shape)
    new_h, new_w = max(1, round(ink.shape[0] * scale)), max(1, round(ink.shape[1] * scale))
    digit = np.asarray(Image.fromarray(ink).resize((new_w, new_h), Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0.0, 1.0)
    digit /= max(float(digit.max()), 1e-6)  # MNIST strokes reach full white; thin strokes fade when shrunk

    # Place the centre of mass at (14, 14) in pixel indices, where MNIST has it (averages 13.99,
    # 14.01 over its digits); rows/columns pushed past an edge are dropped.
    ys, xs = np.indices(digit.shape)
    mass = float(digit.sum())
    top = round(canvas_h / 2 - float((ys * digit).sum()) / mass)
    left = round(canvas_w / 2 - float((xs * digit).sum()) / mass)
    canvas = np.zeros(size, dtype=np.float32)
    dst_y0, dst_x0 = max(top, 0), max(left, 0)
    dst_y1, dst_x1 = min(top + new_h, canvas_h), min(left + new_w, canvas_w)
    canvas[dst_y0:dst_y1, dst_x0:dst_x1] = digit[dst_y0 - top : dst_y1 - top, dst_x0 - left : dst_x1 - left]
    return canvas
