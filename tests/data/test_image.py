"""Image decoding (every kind of awkward upload) and framing (photo and MNIST-style digit)."""
from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from effviz.data import image_to_tensor, open_image
from effviz.models.releases import ImagePreprocess

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"

PHOTO = ImagePreprocess()  # 224x224, ImageNet mean/std, resize 256 and crop
PHOTO_32 = ImagePreprocess(size=(32, 32), resize="squash", crop_pct=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
DIGIT = ImagePreprocess(  # MNIST statistics
    size=(28, 28), style="digit", mean=(0.1307,), std=(0.3081,)
)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def blank_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG written by hand: a 30000x30000 one is ~100 KB and takes a
    fraction of a second, where Pillow's encoder needs many seconds and ~1 GB."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row * 1000) for _ in range(height // 1000))
    idat += compressor.compress(row * (height % 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gradient_rgb(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(x[None, :], x[None, ::-1], np.full((height, 1), 90.0)), axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


# --- decoding failures: each has its own message ------------------------------------------------


def test_empty_bytes_and_empty_file(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        open_image(b"")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        open_image(empty)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "nope.png")


def test_text_named_png_is_not_an_image(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("these are my holiday notes, not a picture\n")
    with pytest.raises(ValueError, match="not an image") as info:
        open_image(fake)
    assert "PNG" in str(info.value) and "JPEG" in str(info.value)  # says what would work


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file(fmt, keep):
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)  # incompressible: the cut lands in the pixel data
    with pytest.raises(ValueError, match="truncated or corrupt"):
        open_image(data[: int(len(data) * keep)])


def test_png_cut_inside_its_header_is_corrupt_not_foreign():
    data = encode(gradient_rgb(), "PNG")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        open_image(data[:20])


def test_decompression_bomb_over_pillows_own_limit_is_refused_from_the_header():
    bomb = blank_png(30000, 30000)  # 900 MP
    assert len(bomb) < 200_000
    started = time.perf_counter()
    with pytest.raises(ValueError, match="too large.*limit is 50,000,000 pixels.*decompression bomb"):
        open_image(bomb)
    assert time.perf_counter() - started < 1.0  # nothing was decoded


def test_picture_over_our_limit_but_under_pillows_is_refused_from_the_header():
    with pytest.raises(ValueError, match=r"too large \(8000x8000 = 64,000,000 pixels; the limit is 50,000,000"):
        open_image(blank_png(8000, 8000))


def test_pixel_limit_is_configurable():
    data = encode(gradient_rgb(100, 100), "PNG")
    with pytest.raises(ValueError, match="limit is 9,999 pixels"):
        open_image(data, max_pixels=9_999)
    assert open_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ValueError, match="too large"):
        open_image(gradient_rgb(100, 100), max_pixels=9_999)  # an already opened image too


# --- awkward but valid inputs become 8-bit RGB ---------------------------------------------------


def test_bytes_path_and_pil_inputs_agree(tmp_path):
    img = gradient_rgb()
    path = tmp_path / "g.png"
    img.save(path)
    for source in (path, str(path), path.read_bytes(), img):
        out = open_image(source)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    img16 = Image.fromarray(levels)
    assert img16.mode == "I;16"
    out = np.asarray(open_image(encode(img16, "PNG")))
    np.testing.assert_array_equal(out[0, :, 0], [0, 64, 128, 255])


def test_cmyk_jpeg():
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    out = np.asarray(open_image(encode(red, "JPEG", quality=95))).astype(int)
    assert out[8, 8, 0] > 230 and out[8, 8, 1] < 30 and out[8, 8, 2] < 30


def test_palette_with_transparency_is_composited_on_white():
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    img.paste(0, (0, 0, 4, 8))  # left half: index 0, declared transparent below
    out = np.asarray(open_image(encode(img, "PNG", transparency=0)))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 7], [200, 0, 0])


def test_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:, :2, 3] = 0  # transparent black -> white
    rgba[:, 2:, 3] = 128  # half-transparent black -> mid grey
    out = np.asarray(open_image(encode(Image.fromarray(rgba), "PNG"))).astype(int)
    assert (out[:, :2] == 255).all()
    assert (abs(out[:, 2:] - 127) <= 1).all()
    la = Image.new("LA", (2, 2), (0, 0))  # greyscale + alpha, passed as an opened image
    assert (np.asarray(open_image(la)) == 255).all()


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = np.asarray(open_image(data))
    np.testing.assert_array_equal(out[5, 5], [255, 0, 0])


def test_one_bit_image():
    img = Image.new("1", (5, 3), 1)
    assert (np.asarray(open_image(encode(img, "PNG"))) == 255).all()


def test_exif_rotation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = encode(gradient_rgb(40, 20), "JPEG", exif=exif)
    assert open_image(data).size == (20, 40)


@pytest.mark.parametrize("size", [(1, 1), (1, 10000), (10000, 1)])
@pytest.mark.parametrize("cfg", [PHOTO, PHOTO_32], ids=["224", "32"])
def test_extreme_shapes_give_model_sized_tensors(size, cfg):
    img = open_image(encode(Image.new("RGB", size, (255, 128, 0)), "PNG"))
    x = image_to_tensor(img, cfg)
    assert x.shape == (1, 3, *cfg.size) and x.dtype == torch.float32
    expected = (torch.tensor([1.0, 128 / 255, 0.0]) - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    torch.testing.assert_close(x[0, :, 5, 5], expected, atol=1e-5, rtol=0)


# --- photo framing -------------------------------------------------------------------------------


def striped(width: int, height: int) -> Image.Image:
    """Green, with red bands in the outer quarters left and right."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 1] = 255
    pixels[:, : width // 4] = (255, 0, 0)
    pixels[:, width - width // 4 :] = (255, 0, 0)
    return Image.fromarray(pixels)


def test_photo_crops_the_centre_for_large_models():
    x = image_to_tensor(striped(400, 100), PHOTO)
    pixels = x[0] * torch.tensor(PHOTO.std).view(3, 1, 1) + torch.tensor(PHOTO.mean).view(3, 1, 1)
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 224, 224)
    torch.testing.assert_close(pixels, green, atol=1e-5, rtol=0)  # the red outer quarters are cropped off


def test_photo_resizes_the_whole_picture_for_32px_models():
    x = image_to_tensor(striped(400, 100), PHOTO_32)
    pixels = x[0] * 0.25 + 0.5
    assert pixels[0, :, 0].min() > 0.95 and pixels[1, :, 0].max() < 0.05  # red band kept on the left
    assert pixels[0, :, -1].min() > 0.95  # and on the right
    assert pixels[1, :, 16].min() > 0.95  # green centre


def test_unknown_image_style_or_resize_is_refused():
    with pytest.raises(ValueError, match="image style"):
        ImagePreprocess(style="sketch")
    with pytest.raises(ValueError, match="resize"):
        ImagePreprocess(resize="stretch")


# --- digit framing -------------------------------------------------------------------------------


def sketch_seven(ink: int, paper: int, size=(300, 240), offset=(20, 30)) -> Image.Image:
    """A thick '7' drawn in a corner of a large canvas, like a sketchpad drawing."""
    img = Image.new("L", size, paper)
    draw = ImageDraw.Draw(img)
    x, y = offset
    draw.line([(x, y), (x + 90, y)], fill=ink, width=14)
    draw.line([(x + 90, y), (x + 35, y + 140)], fill=ink, width=14)
    return img.convert("RGB")


def digit_pixels(x: torch.Tensor) -> np.ndarray:
    return (x[0, 0] * DIGIT.std[0] + DIGIT.mean[0]).numpy()


def test_black_on_white_sketch_becomes_centred_white_on_black_mnist_digit():
    x = image_to_tensor(sketch_seven(ink=0, paper=255), DIGIT)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    pixels = digit_pixels(x)
    assert pixels.min() >= -1e-6 and pixels.max() == pytest.approx(1.0, abs=1e-5)
    assert pixels[:4, :4].max() < 1e-6 and pixels[-4:, -4:].max() < 1e-6  # black background
    rows, cols = np.nonzero(pixels > 0.05)
    assert rows.max() - rows.min() + 1 <= 21 and cols.max() - cols.min() + 1 <= 21
    assert rows.max() - rows.min() + 1 >= 19  # the longer side (height) fills the 20-pixel box
    ys, xs = np.indices(pixels.shape)
    centre = ((ys * pixels).sum() / pixels.sum(), (xs * pixels).sum() / pixels.sum())
    assert centre == pytest.approx((14.0, 14.0), abs=0.5)  # where MNIST has it


def test_digit_framing_ignores_ink_colour_and_position():
    dark_on_light = image_to_tensor(sketch_seven(ink=0, paper=255), DIGIT)
    light_on_dark = image_to_tensor(sketch_seven(ink=255, paper=0, offset=(150, 60)), DIGIT)
    torch.testing.assert_close(dark_on_light, light_on_dark, atol=0.05, rtol=0)


def test_grey_paper_is_treated_as_background():
    on_grey = image_to_tensor(sketch_seven(ink=20, paper=200), DIGIT)
    assert digit_pixels(on_grey)[:2].max() < 1e-6


@pytest.mark.parametrize("level", [0, 255, 140])
def test_blank_canvas_is_an_empty_drawing(level):
    with pytest.raises(ValueError, match="the drawing is empty"):
        image_to_tensor(Image.new("RGB", (280, 280), (level,) * 3), DIGIT)


@pytest.mark.skipif(not (DATA_DIR / "mnist-8k.npz").is_file(), reason=f"no MNIST file in {DATA_DIR}")
def test_real_mnist_digits_survive_the_framing_almost_unchanged():
    # MNIST digits are already framed this way: re-framing them should change almost nothing.
    with np.load(DATA_DIR / "mnist-8k.npz") as arrays:
        digits = arrays["images"][:200]
    correlations = [
        np.corrcoef(digit_pixels(image_to_tensor(Image.fromarray(digit), DIGIT)).ravel(), digit.ravel())[0, 1]
        for digit in digits
    ]
    assert np.median(correlations) > 0.99
    assert np.percentile(correlations, 10) > 0.95
