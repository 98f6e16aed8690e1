"""fashion_common/images.py on real-world files: inversion, size budget before decoding, 16-bit range, EXIF rotation."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from clitools import assert_one_error_line, cli, needs_data
from PIL import Image

from fashion_common.errors import ImageError
from fashion_common.images import MAX_PIXELS, border_is_lighter, load_image, prepare_image


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand: PIL cannot write 16-bit RGB, and a bomb header must not need the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b"")


def garment_drawing(path, size=(90, 60)):
    """A dark shirt outline on white paper, as someone would draw or photograph it: body and two sleeves."""
    h, w = size
    pixels = np.full((h, w), 250, np.uint8)
    pixels[20:80, 18:42] = 40  # body
    pixels[20:45, 6:18] = 40  # left sleeve
    pixels[20:45, 42:54] = 40  # right sleeve
    Image.fromarray(pixels).save(path)
    return path


# ----------------------------------------------------------------------------- inversion


def test_a_dark_on_white_garment_drawing_is_inverted_to_light_on_black(tmp_path):
    image, inverted = prepare_image(garment_drawing(tmp_path / "shirt.png"))
    assert inverted
    # After inversion the paper is black (padding is black too) and the body light: 1 - 40/255 = 0.84.
    assert image[0, 0] == 0.0 and image[:, 0].max() < 0.02
    assert abs(image[16, 14] - (1 - 40 / 255)) < 0.02
    assert prepare_image(tmp_path / "shirt.png", invert="no")[1] is False
    assert prepare_image(tmp_path / "shirt.png", invert="yes")[1] is True


def test_a_light_on_black_image_is_not_inverted_by_auto_but_is_by_yes(tmp_path):
    pixels = np.zeros((40, 40), np.uint8)
    pixels[10:30, 12:28] = 220
    Image.fromarray(pixels).save(tmp_path / "light.png")
    auto, inverted = prepare_image(tmp_path / "light.png")
    forced, _ = prepare_image(tmp_path / "light.png", invert="yes")
    assert not inverted and auto[14, 14] > 0.8
    assert forced[14, 14] < 0.2


@needs_data
def test_real_dataset_images_written_to_png_are_never_inverted_and_come_back_unchanged(tmp_path):
    from fashion_common.data import load_fashion_mnist

    data = load_fashion_mnist()
    for i in range(0, 10_000, 50):  # 200 test images, every class
        Image.fromarray(data.test_images[i]).save(tmp_path / f"{i}.png")
        image, inverted = prepare_image(tmp_path / f"{i}.png")
        assert not inverted, i
        # 28x28 in, 28x28 out: the pixels are exactly the dataset's /255 (no resampling change).
        np.testing.assert_array_equal(image, data.test_images[i] / np.float32(255))


@needs_data
def test_the_auto_rule_inverts_none_of_the_70000_dataset_images():
    from fashion_common.data import load_fashion_mnist

    data = load_fashion_mnist()
    for images in (data.test_images, data.train_images):
        flagged = [i for i in range(len(images)) if border_is_lighter(images[i] / np.float32(255))]
        assert flagged == []


# ----------------------------------------------------------------------------- size budget


def test_a_tiny_file_declaring_a_huge_picture_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(30_000, 30_000, 8, 0, b"\x00" * 100))  # ~100 bytes on disk, 900 Mpx declared
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"bomb\.png is too large.*the limit is 36,000,000 pixels"):
        load_image(path)
    assert time.perf_counter() - start < 1.0  # nothing was decoded


def test_padding_to_a_square_counts_against_the_budget(tmp_path):
    side = int(MAX_PIXELS**0.5) + 1  # a thin strip: few pixels, but a square above the budget
    path = tmp_path / "strip.png"
    path.write_bytes(png_bytes(side, 2, 8, 0, (b"\x00" + b"\x00" * side) * 2))
    assert side * 2 < MAX_PIXELS
    with pytest.raises(ImageError, match=f"padded to {side}x{side}"):
        load_image(path)


def test_predict_refuses_a_bomb_with_one_error_line_and_no_pil_warning(tmp_path, recwarn):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(100_000, 100_000, 8, 0, b"\x00" * 100))  # above PIL's own DecompressionBombError
    assert_one_error_line(
        cli("predict", "--backend", "torch", tmp_path / "c.safetensors", path), "bomb.png is too large"
    )
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


# ----------------------------------------------------------------------------- bit depth and orientation


def test_mid_grey_16_bit_gray_and_rgb_give_the_same_input_as_mid_grey_8_bit(tmp_path):
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(tmp_path / "grey8.png")
    Image.fromarray(np.full((32, 32), 128 * 257, np.uint16)).save(
        tmp_path / "grey16.png"
    )  # I;16: 32896 / 65535 == 128 / 255
    rows = b"".join(
        b"\x00" + np.full((32, 3), 32768, ">u2").tobytes() for _ in range(32)
    )  # plain 2**15: rounds to 128 too
    (tmp_path / "rgb16.png").write_bytes(png_bytes(32, 32, 16, 2, rows))
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"  # the mode that convert("L") would clip to 255
    reference = load_image(tmp_path / "grey8.png", invert="no")
    assert abs(reference[14, 14] - 128 / 255) < 1e-6
    for name in ("grey16.png", "rgb16.png"):
        np.testing.assert_array_equal(load_image(tmp_path / name, invert="no"), reference)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, :10] = 255  # a bright band on the left of a wide picture
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    image.save(tmp_path / "plain.jpg", quality=95)
    plain, rotated = load_image(tmp_path / "plain.jpg", invert="no"), load_image(tmp_path / "rotated.jpg", invert="no")
    # Plain: padded top and bottom, band on the left. Rotated 90 deg clockwise: padded left and right, band on top.
    assert plain[10:18, 1].mean() > 0.8 and plain[10:18, 26].mean() < 0.1
    assert rotated[1, 10:18].mean() > 0.8 and rotated[26, 10:18].mean() < 0.1
